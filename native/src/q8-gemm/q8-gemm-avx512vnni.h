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

/* (acc * multiplier + 2^(shift-1)) >> shift of 16 lanes, before the clamp. */
static inline __m512i edge_q8_vnni_scale(__m512i vacc, const edge_q8_vnni_channels* ch) {
  __m512i even = _mm512_add_epi64(_mm512_mul_epi32(vacc, ch->mul_even), ch->round_even);
  __m512i odd = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(vacc, 32), ch->mul_odd), ch->round_odd);
  even = _mm512_srav_epi64(even, ch->shift_even);
  odd = _mm512_srav_epi64(odd, ch->shift_odd);
  /* The low 32 bits of each odd product move up into the odd lanes. */
  return _mm512_mask_shuffle_epi32(even, (__mmask16) 0xAAAA, odd, _MM_PERM_CDAB);
}

static inline __m512i edge_q8_vnni_requant(__m512i vacc, const edge_q8_vnni_channels* ch, __m512i vlo,
                                           __m512i vhi, __m512i vzp) {
  const __m512i v = edge_q8_vnni_scale(vacc, ch);
  return _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(v, vlo), vhi), vzp);
}

/* The output stage of a panel of NB blocks of 16 channels: what every row
 * tile of the panel shares, loaded once per panel rather than per tile. */
typedef struct edge_q8_vnni_output {
  __mmask16 mask[4]; /* columns of each block that exist in C (the last block may be partial) */
  edge_q8_vnni_channels ch[4];
  __m512i vlo, vhi, vzp;
  /* The packed output of two rows of 32 channels (see edge_q8_vnni_store_pair). */
  __m512i vzp16, vmin8, vmax8, order;
  int out_signed;
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
  out->vzp16 = _mm512_set1_epi16((int16_t) store->zero_point);
  out->vmin8 = _mm512_set1_epi8((char) store->out_min);
  out->vmax8 = _mm512_set1_epi8((char) store->out_max);
  out->out_signed = store->out_min < 0; /* else every output fits u8 */
  /* Byte j of the two packs (128-bit lane L = j / 16, w = j % 16: row w / 8, block (w / 4) % 2,
   * channel 16 * block + 4L + w % 4) goes to row * 32 + channel: order[row * 32 + channel] = j.
   * A constant table (it was built by a 64-step loop at every panel). */
  static const uint8_t order[64] = {
      0,  1,  2,  3,  16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51, 4,  5,  6,  7,  20, 21,
      22, 23, 36, 37, 38, 39, 52, 53, 54, 55, 8,  9,  10, 11, 24, 25, 26, 27, 40, 41, 42, 43,
      56, 57, 58, 59, 12, 13, 14, 15, 28, 29, 30, 31, 44, 45, 46, 47, 60, 61, 62, 63};
  out->order = _mm512_loadu_si512(order);
}

/* Two rows of 32 channels, requantized, straight from their accumulators
 * (v0: row 0 channels 0-15, 16-31; v1: row 1) to C: in 16-bit and 8-bit
 * packs, 64 outputs per clamp and one byte shuffle, not 16 per vpmovdb. The
 * int16 and u8/s8 saturations keep the clamp exact: its bounds lie within
 * both. Rows c and c + c_stride, the columns of out->mask. */
static inline __attribute__((always_inline)) void edge_q8_vnni_store_pair(const __m512i v0[2], const __m512i v1[2],
                                                                          const edge_q8_vnni_output* out,
                                                                          uint8_t* c, size_t c_stride) {
  __m512i w0 = _mm512_packs_epi32(edge_q8_vnni_scale(v0[0], &out->ch[0]), edge_q8_vnni_scale(v0[1], &out->ch[1]));
  __m512i w1 = _mm512_packs_epi32(edge_q8_vnni_scale(v1[0], &out->ch[0]), edge_q8_vnni_scale(v1[1], &out->ch[1]));
  w0 = _mm512_adds_epi16(w0, out->vzp16);
  w1 = _mm512_adds_epi16(w1, out->vzp16);
  __m512i y;
  if (out->out_signed) {
    y = _mm512_min_epi8(_mm512_max_epi8(_mm512_packs_epi16(w0, w1), out->vmin8), out->vmax8);
  } else {
    y = _mm512_min_epu8(_mm512_max_epu8(_mm512_packus_epi16(w0, w1), out->vmin8), out->vmax8);
  }
  y = _mm512_permutexvar_epi8(out->order, y);
  const __mmask32 mask = (__mmask32) out->mask[0] | ((__mmask32) out->mask[1] << 16);
  _mm256_mask_storeu_epi8(c, mask, _mm512_castsi512_si256(y));
  _mm256_mask_storeu_epi8(c + c_stride, mask, _mm512_extracti64x4_epi64(y, 1));
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
  size_t r0 = 0;
  if (NB == 2) { /* pairs of rows through the packs */
    for (; r0 + 2 <= MR; r0 += 2) {
      edge_q8_vnni_store_pair(vacc[r0], vacc[r0 + 1], out, c + r0 * store->c_stride, store->c_stride);
    }
  }
  for (size_t b = 0; b < NB; b++) {
    for (size_t r = r0; r < MR; r++) {
      _mm512_mask_cvtepi32_storeu_epi8(c + r * store->c_stride + b * 16, out->mask[b],
                                       edge_q8_vnni_requant(vacc[r][b], &out->ch[b], out->vlo, out->vhi, out->vzp));
    }
  }
}

#endif /* EDGE_Q8_GEMM_AVX512VNNI_H */
