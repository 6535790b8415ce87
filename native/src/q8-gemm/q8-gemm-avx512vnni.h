/* The AVX-512 VNNI tile shared by the q8-gemm kernels of that ISA: included
 * only by *__avx512vnni.c files (it needs their compiler flags). */
#ifndef EDGE_Q8_GEMM_AVX512VNNI_H
#define EDGE_Q8_GEMM_AVX512VNNI_H

#include <immintrin.h>

#include "q8-gemm.h"

/* acc += 4-way dot of u8 a and s8 w per int32 lane. Inline asm because gcc's
 * register allocation of the _mm512_dpbusd_epi32 builtin copies every
 * accumulator each iteration (measured: about 30% slower tiles). */
static inline __m512i edge_q8_vnni_dpbusd(__m512i acc, __m512i a, __m512i w) {
#if defined(__GNUC__)
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "vm"(w));
  return acc;
#else
  return _mm512_dpbusd_epi32(acc, a, w);
#endif
}

/* acc[r][c] = init[c] + sum_k x(a[r][k]) * w[c][k] for MR rows and NB blocks
 * of 16 channels; MR, NB and SIGNED are constants at every call site, so the
 * arrays below live in registers. */
static inline __attribute__((always_inline)) void edge_q8_vnni_tile(
    size_t MR, size_t NB, int SIGNED, size_t k, const uint8_t* a, size_t a_stride, const int8_t* w,
    size_t panel_stride, const int32_t* init, int32_t* acc, size_t acc_stride) {
  __m512i vacc[8][4];
  for (size_t b = 0; b < NB; b++) {
    const __m512i vinit = _mm512_load_si512(init + b * 16);
    for (size_t r = 0; r < MR; r++) vacc[r][b] = vinit;
  }
  /* xor 0x80 turns s8 into u8 (x + 128); a no-op the compiler drops for u8. */
  const __m512i flip = _mm512_set1_epi32(SIGNED ? (int32_t) 0x80808080u : 0);
  const size_t k_main = k & ~(size_t) 3;
  size_t k0 = 0;
  for (; k0 < k_main; k0 += 4) {
    __m512i vw[4];
    for (size_t b = 0; b < NB; b++) vw[b] = _mm512_load_si512(w + b * panel_stride + k0 * 16);
    for (size_t r = 0; r < MR; r++) {
      uint32_t a4;
      memcpy(&a4, a + r * a_stride + k0, 4);
      const __m512i va = _mm512_xor_si512(_mm512_set1_epi32((int32_t) a4), flip);
      for (size_t b = 0; b < NB; b++) vacc[r][b] = edge_q8_vnni_dpbusd(vacc[r][b], va, vw[b]);
    }
  }
  if (k0 < k) { /* the last 1-3 k: never read past the row */
    __m512i vw[4];
    for (size_t b = 0; b < NB; b++) vw[b] = _mm512_load_si512(w + b * panel_stride + k0 * 16);
    for (size_t r = 0; r < MR; r++) {
      const uint32_t a4 = edge_q8_load_a4(a + r * a_stride + k0, k - k0);
      const __m512i va = _mm512_xor_si512(_mm512_set1_epi32((int32_t) a4), flip);
      for (size_t b = 0; b < NB; b++) vacc[r][b] = edge_q8_vnni_dpbusd(vacc[r][b], va, vw[b]);
    }
  }
  for (size_t r = 0; r < MR; r++) {
    for (size_t b = 0; b < NB; b++) _mm512_store_si512(acc + r * acc_stride + b * 16, vacc[r][b]);
  }
}

#endif /* EDGE_Q8_GEMM_AVX512VNNI_H */
