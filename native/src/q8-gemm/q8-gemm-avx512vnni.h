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

/* Requantization, bit-identical to edge_requantize: 64-bit products of the
 * even and odd lanes (vpmuldq), + 2^(shift-1), arithmetic shift (vpsravq),
 * then clamp and zero point in 32 bits. The shifted value fits in int32
 * because multiplier < 2^31 <= 2^shift. */
typedef struct edge_q8_vnni_channels { /* the per-channel vectors of 16 channels */
  __m512i mul_even, mul_odd, shift_even, shift_odd, round_even, round_odd;
} edge_q8_vnni_channels;

static inline edge_q8_vnni_channels edge_q8_vnni_channels_load(const int32_t* multiplier, const int32_t* shift,
                                                               __mmask16 mask) {
  const __m512i one = _mm512_set1_epi64(1);
  const __m512i vmul = _mm512_maskz_loadu_epi32(mask, multiplier);
  /* Masked-off lanes get shift 31: any valid shift keeps the arithmetic defined. */
  const __m512i vshift = _mm512_mask_loadu_epi32(_mm512_set1_epi32(31), mask, shift);
  edge_q8_vnni_channels ch;
  ch.mul_even = vmul;
  ch.mul_odd = _mm512_srli_epi64(vmul, 32);
  ch.shift_even = _mm512_and_si512(vshift, _mm512_set1_epi64(0xFFFFFFFF));
  ch.shift_odd = _mm512_srli_epi64(vshift, 32);
  ch.round_even = _mm512_sllv_epi64(one, _mm512_sub_epi64(ch.shift_even, one));
  ch.round_odd = _mm512_sllv_epi64(one, _mm512_sub_epi64(ch.shift_odd, one));
  return ch;
}

static inline __m512i edge_q8_vnni_requant(__m512i vacc, const edge_q8_vnni_channels* ch, __m512i vlo,
                                           __m512i vhi, __m512i vzp) {
  __m512i even = _mm512_add_epi64(_mm512_mul_epi32(vacc, ch->mul_even), ch->round_even);
  __m512i odd = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(vacc, 32), ch->mul_odd), ch->round_odd);
  even = _mm512_srav_epi64(even, ch->shift_even);
  odd = _mm512_srav_epi64(odd, ch->shift_odd);
  /* The low 32 bits of each odd product move up into the odd lanes. */
  const __m512i v = _mm512_mask_shuffle_epi32(even, (__mmask16) 0xAAAA, odd, _MM_PERM_CDAB);
  return _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(v, vlo), vhi), vzp);
}

/* The output stage of a panel of NB blocks of 16 channels: what every row
 * tile of the panel shares, loaded once per panel rather than per tile. */
typedef struct edge_q8_vnni_output {
  __mmask16 mask[4]; /* columns of each block that exist in C (the last block may be partial) */
  edge_q8_vnni_channels ch[4];
  __m512i vlo, vhi, vzp;
} edge_q8_vnni_output;

static inline __attribute__((always_inline)) void edge_q8_vnni_output_load(size_t NB, const edge_q8_gemm_store* store,
                                                                           edge_q8_vnni_output* out) {
  *out = (edge_q8_vnni_output){0}; /* s32 C uses only the masks */
  for (size_t b = 0; b < NB; b++) {
    const size_t valid = store->nc > b * 16 ? EDGE_MIN(store->nc - b * 16, (size_t) 16) : 0;
    out->mask[b] = (__mmask16) ((1u << valid) - 1);
  }
  if (store->multiplier == NULL) return;
  for (size_t b = 0; b < NB; b++) {
    out->ch[b] = edge_q8_vnni_channels_load(store->multiplier + b * 16, store->shift + b * 16, out->mask[b]);
  }
  out->vlo = _mm512_set1_epi32(store->out_min - store->zero_point);
  out->vhi = _mm512_set1_epi32(store->out_max - store->zero_point);
  out->vzp = _mm512_set1_epi32(store->zero_point);
}

/* The accumulators of MR rows and NB blocks of 16 channels over the whole of K:
 * vacc[r][b] = init + sum_k x(a[r][k]) * w[c][k]. MR, NB and SIGNED are
 * constants at every call site, so the arrays live in registers; the output
 * stage then writes the rows at c (c_stride bytes apart) straight from them. */
static inline __attribute__((always_inline)) void edge_q8_vnni_tile(
    size_t MR, size_t NB, int SIGNED, size_t k, const uint8_t* a, size_t a_stride, const int8_t* w,
    size_t panel_stride, const int32_t* init, const edge_q8_gemm_store* store, const edge_q8_vnni_output* out,
    uint8_t* c) {
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

  if (store->multiplier == NULL) {
    for (size_t r = 0; r < MR; r++) {
      for (size_t b = 0; b < NB; b++) {
        _mm512_mask_storeu_epi32(c + r * store->c_stride + b * 64, out->mask[b], vacc[r][b]);
      }
    }
    return;
  }
  for (size_t b = 0; b < NB; b++) {
    for (size_t r = 0; r < MR; r++) {
      _mm512_mask_cvtepi32_storeu_epi8(c + r * store->c_stride + b * 16, out->mask[b],
                                       edge_q8_vnni_requant(vacc[r][b], &out->ch[b], out->vlo, out->vhi, out->vzp));
    }
  }
}

#endif /* EDGE_Q8_GEMM_AVX512VNNI_H */
