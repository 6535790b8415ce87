/* The depthwise block of the micro-kernels, AVX-512 with VNNI:
 * edge_q8_qc8w_dwconv{3x3,5x5}_rndnu_ukernel_64c4__avx512vnni; included only by
 * their two files (it needs their compiler flags).
 *
 * 64 channels and 4 taps per step: the input bytes of taps 4g..4g+3 are
 * interleaved by in-lane unpacks into 4-byte groups, and vpdpbusd adds each
 * group's dot product with the 4 weights of its channel into one int32 lane
 * (u8 x s8, exact and non-saturating). s8 input is flipped to u8 (xor 0x80,
 * + 128), and the zero point folds into the initial accumulators:
 * sum (x - zp) * w = sum x' * w - (zp + offset) * sum w, mod 2^32 like the
 * scalar path.
 *
 * The in-lane unpacks leave the channels in "lane order": accumulator q,
 * 128-bit lane L, int32 i holds channel 16L + 4q + i of the 64. The weights,
 * bias and requantization constants are put in that order once per block for
 * the whole chunk of pixels (a 4x4 transpose of 128-bit lanes), and the
 * in-lane packs of the output stage (vpackssdw, vpackuswb) restore the
 * natural order for free.
 *
 * Tails of a block fill the lanes with more pixels: a tail of 1-16 channels
 * runs 4 pixels per step (each 128-bit lane one pixel's 16 channels), a tail
 * of 17-32 channels 2 pixels per step (each 256-bit half one pixel's 32); the
 * block's weights and constants are broadcast to the lanes' channels once per
 * chunk (remap). C = 24 or 32 takes half the steps of one pixel per step,
 * C = 144 three quarters. A tail of 33-63 channels runs one pixel per step,
 * masked: two passes (32 + the rest) measured no faster, as the narrower
 * loads and their inserts cost what the saved steps gain.
 */
#ifndef EDGE_Q8_DWCONV_AVX512VNNI_H
#define EDGE_Q8_DWCONV_AVX512VNNI_H

#include <immintrin.h>
#include <string.h>

#include "q8-dwconv.h"

#define CB 64                                          /* channels per step */
#define GROUPS_MAX ((EDGE_Q8_DWCONV_MAX_TAPS + 3) / 4) /* 4-tap groups of 5x5 */

/* 4x4 transpose of 128-bit lanes: lane L of v[q] becomes lane q of v[L]. It
 * maps natural order (v[L] = channels 16L..16L+15) to lane order and back. */
static inline void transpose_lanes(__m512i v[4]) {
  const __m512i t0 = _mm512_shuffle_i64x2(v[0], v[1], 0x44);
  const __m512i t1 = _mm512_shuffle_i64x2(v[0], v[1], 0xEE);
  const __m512i t2 = _mm512_shuffle_i64x2(v[2], v[3], 0x44);
  const __m512i t3 = _mm512_shuffle_i64x2(v[2], v[3], 0xEE);
  v[0] = _mm512_shuffle_i64x2(t0, t2, 0x88);
  v[1] = _mm512_shuffle_i64x2(t0, t2, 0xDD);
  v[2] = _mm512_shuffle_i64x2(t1, t3, 0x88);
  v[3] = _mm512_shuffle_i64x2(t1, t3, 0xDD);
}

/* What one 64-channel block needs for every pixel of the chunk, in lane order. */
typedef struct block_state {
  __m512i w[GROUPS_MAX][4]; /* w[g][q]: 4 bytes per int32 lane, taps 4g..4g+3 */
  __m512i init[4];          /* bias - (zp + offset) * sum of weights */
  /* edge_requantize as in the GEMM: 64-bit products of the even and odd lanes. */
  __m512i mul_even[4], mul_odd[4], shift_even[4], shift_odd[4], round_even[4], round_odd[4];
} block_state;

/* Fills st for channels c0..c0+63 (rest of them are real, the others get
 * zero weights and any valid requantization). */
static void block_setup(block_state* st, size_t taps, size_t c0, size_t rest, const uint8_t* packed,
                        const edge_q8_dwconv_params* params) {
  const size_t groups = (taps + 3) / 4, pairs = (taps + 1) / 2;
  const size_t block_bytes = edge_q8_dwconv_block_bytes(taps);
  const size_t sub_blocks = (EDGE_MIN(rest, (size_t) CB) + EDGE_Q8_DWCONV_CB - 1) / EDGE_Q8_DWCONV_CB;
  /* The packed 16-channel blocks hold tap pairs [pair][channel][2]: two pairs
   * interleaved by 16 bits give [channel][4 taps], 4 channels per 128 bits. */
  uint8_t w[GROUPS_MAX][4][CB] __attribute__((aligned(64)));
  int32_t bias[CB] __attribute__((aligned(64)));
  memset(w, 0, sizeof(w));
  memset(bias, 0, sizeof(bias));
  for (size_t s = 0; s < sub_blocks; s++) {
    const uint8_t* block = packed + (c0 / EDGE_Q8_DWCONV_CB + s) * block_bytes;
    memcpy(bias + s * EDGE_Q8_DWCONV_CB, block, EDGE_Q8_DWCONV_CB * sizeof(int32_t));
    const uint8_t* pair = block + EDGE_Q8_DWCONV_CB * sizeof(int32_t);
    for (size_t g = 0; g < groups; g++) {
      const __m256i a = _mm256_loadu_si256((const __m256i*) (pair + 2 * g * 32));
      const __m256i b = 2 * g + 1 < pairs ? _mm256_loadu_si256((const __m256i*) (pair + (2 * g + 1) * 32))
                                          : _mm256_setzero_si256();
      const __m256i lo = _mm256_unpacklo_epi16(a, b); /* channels 0..3 | 8..11 */
      const __m256i hi = _mm256_unpackhi_epi16(a, b); /* channels 4..7 | 12..15 */
      _mm_store_si128((__m128i*) (w[g][0] + 16 * s), _mm256_castsi256_si128(lo));
      _mm_store_si128((__m128i*) (w[g][1] + 16 * s), _mm256_castsi256_si128(hi));
      _mm_store_si128((__m128i*) (w[g][2] + 16 * s), _mm256_extracti128_si256(lo, 1));
      _mm_store_si128((__m128i*) (w[g][3] + 16 * s), _mm256_extracti128_si256(hi, 1));
    }
  }
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i wsum[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
  for (size_t g = 0; g < groups; g++) {
    for (size_t q = 0; q < 4; q++) {
      st->w[g][q] = _mm512_load_si512(w[g][q]);
      wsum[q] = _mm512_dpbusd_epi32(wsum[q], ones, st->w[g][q]);
    }
  }
  const int32_t offset = params->x_signed ? 128 : 0;
  const __m512i zp = _mm512_set1_epi32(params->x_zero_point + offset);
  __m512i mul[4], shift[4];
  for (size_t s = 0; s < 4; s++) {
    const size_t valid = rest > 16 * s ? EDGE_MIN(rest - 16 * s, (size_t) 16) : 0;
    const __mmask16 mask = (__mmask16) ((1u << valid) - 1);
    st->init[s] = _mm512_load_si512(bias + 16 * s);
    /* Channels past the end get shift 31: any valid shift keeps the arithmetic defined. */
    mul[s] = _mm512_maskz_loadu_epi32(mask, params->multiplier + c0 + 16 * s);
    shift[s] = _mm512_mask_loadu_epi32(_mm512_set1_epi32(31), mask, params->shift + c0 + 16 * s);
  }
  transpose_lanes(st->init);
  transpose_lanes(mul);
  transpose_lanes(shift);
  const __m512i one = _mm512_set1_epi64(1);
  for (size_t q = 0; q < 4; q++) {
    st->init[q] = _mm512_sub_epi32(st->init[q], _mm512_mullo_epi32(zp, wsum[q]));
    st->mul_even[q] = mul[q];
    st->mul_odd[q] = _mm512_srli_epi64(mul[q], 32);
    st->shift_even[q] = _mm512_and_si512(shift[q], _mm512_set1_epi64(0xFFFFFFFF));
    st->shift_odd[q] = _mm512_srli_epi64(shift[q], 32);
    st->round_even[q] = _mm512_sllv_epi64(one, _mm512_sub_epi64(st->shift_even[q], one));
    st->round_odd[q] = _mm512_sllv_epi64(one, _mm512_sub_epi64(st->shift_odd[q], one));
  }
}

/* (acc * multiplier + 2^(shift-1)) >> shift of 16 lanes, before the clamp. The
 * shifted product always fits int32 (|acc * multiplier| < 2^62, shift >= 31). */
static inline __m512i scale(__m512i acc, const block_state* st, size_t q) {
  __m512i even = _mm512_add_epi64(_mm512_mul_epi32(acc, st->mul_even[q]), st->round_even[q]);
  __m512i odd = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(acc, 32), st->mul_odd[q]), st->round_odd[q]);
  even = _mm512_srav_epi64(even, st->shift_even[q]);
  odd = _mm512_srav_epi64(odd, st->shift_odd[q]);
  /* The low 32 bits of each odd product move up into the odd lanes. */
  return _mm512_mask_shuffle_epi32(even, (__mmask16) 0xAAAA, odd, _MM_PERM_CDAB);
}

/* The block state seen by a step whose 128-bit lane L holds 16-channel
 * sub-block sub[L] of the block: each vector's lane L becomes its lane sub[L]. */
static void remap(block_state* out, const block_state* st, size_t groups, const int sub[4]) {
  const __m512i idx = _mm512_set_epi64(2 * sub[3] + 1, 2 * sub[3], 2 * sub[2] + 1, 2 * sub[2], 2 * sub[1] + 1,
                                       2 * sub[1], 2 * sub[0] + 1, 2 * sub[0]);
  for (size_t q = 0; q < 4; q++) {
    for (size_t g = 0; g < groups; g++) out->w[g][q] = _mm512_permutexvar_epi64(idx, st->w[g][q]);
    out->init[q] = _mm512_permutexvar_epi64(idx, st->init[q]);
    out->mul_even[q] = _mm512_permutexvar_epi64(idx, st->mul_even[q]);
    out->mul_odd[q] = _mm512_permutexvar_epi64(idx, st->mul_odd[q]);
    out->shift_even[q] = _mm512_permutexvar_epi64(idx, st->shift_even[q]);
    out->shift_odd[q] = _mm512_permutexvar_epi64(idx, st->shift_odd[q]);
    out->round_even[q] = _mm512_permutexvar_epi64(idx, st->round_even[q]);
    out->round_odd[q] = _mm512_permutexvar_epi64(idx, st->round_odd[q]);
  }
}

/* The bytes of tap t at channel offset `offset` of pixel k of a step, or the zero row. */
EDGE_Q8_DWCONV_INLINE const uint8_t* tap_at(const uint8_t* const* input, size_t TAPS, size_t k, size_t t,
                                            const uint8_t* zero, size_t offset) {
  const uint8_t* p = input[k * TAPS + t];
  return p == zero ? zero : p + offset;
}

/* One tap of a step of PIXELS pixels (1, 2 or 4) of 64 / PIXELS channels each,
 * as u8: pixel k in 512 / PIXELS bits k. Bytes outside `mask` (of each
 * pixel's channels) are never read; pixels past `valid` repeat the last one. */
EDGE_Q8_DWCONV_INLINE __m512i load_tap(size_t PIXELS, int MASKED, int SIGNED, const uint8_t* const* input,
                                       size_t TAPS, size_t t, size_t valid, const uint8_t* zero, size_t offset,
                                       __mmask64 mask) {
  __m512i x;
  if (PIXELS == 1) {
    const uint8_t* p = tap_at(input, TAPS, 0, t, zero, offset);
    x = MASKED ? _mm512_maskz_loadu_epi8(mask, p) : _mm512_loadu_si512(p);
  } else if (PIXELS == 2) {
    const __m256i lo = _mm256_maskz_loadu_epi8((__mmask32) mask, tap_at(input, TAPS, 0, t, zero, offset));
    const __m256i hi = _mm256_maskz_loadu_epi8((__mmask32) mask, tap_at(input, TAPS, valid > 1, t, zero, offset));
    x = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  } else {
    const __m128i p0 = _mm_maskz_loadu_epi8((__mmask16) mask, tap_at(input, TAPS, 0, t, zero, offset));
    const __m128i p1 = _mm_maskz_loadu_epi8((__mmask16) mask, tap_at(input, TAPS, valid > 1, t, zero, offset));
    const __m128i p2 = _mm_maskz_loadu_epi8((__mmask16) mask, tap_at(input, TAPS, valid > 2 ? 2 : 0, t, zero, offset));
    const __m128i p3 = _mm_maskz_loadu_epi8((__mmask16) mask, tap_at(input, TAPS, valid > 3 ? 3 : 0, t, zero, offset));
    const __m256i lo = _mm256_inserti128_si256(_mm256_castsi128_si256(p0), p1, 1);
    const __m256i hi = _mm256_inserti128_si256(_mm256_castsi128_si256(p2), p3, 1);
    x = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  }
  return SIGNED ? _mm512_xor_si512(x, _mm512_set1_epi8((char) 0x80)) : x;
}

/* Stores the output bytes of a step's `valid` pixels (the layout of load_tap). */
EDGE_Q8_DWCONV_INLINE void store_step(size_t PIXELS, int MASKED, __m512i y, uint8_t* output, size_t output_stride,
                                      size_t valid, __mmask64 mask) {
  if (PIXELS == 1) {
    if (MASKED) {
      _mm512_mask_storeu_epi8(output, mask, y);
    } else {
      _mm512_storeu_si512(output, y);
    }
  } else if (PIXELS == 2) {
    _mm256_mask_storeu_epi8(output, (__mmask32) mask, _mm512_castsi512_si256(y));
    if (valid > 1) _mm256_mask_storeu_epi8(output + output_stride, (__mmask32) mask, _mm512_extracti64x4_epi64(y, 1));
  } else {
    _mm_mask_storeu_epi8(output, (__mmask16) mask, _mm512_castsi512_si128(y));
    if (valid > 1) _mm_mask_storeu_epi8(output + output_stride, (__mmask16) mask, _mm512_extracti32x4_epi32(y, 1));
    if (valid > 2) _mm_mask_storeu_epi8(output + 2 * output_stride, (__mmask16) mask, _mm512_extracti32x4_epi32(y, 2));
    if (valid > 3) _mm_mask_storeu_epi8(output + 3 * output_stride, (__mmask16) mask, _mm512_extracti32x4_epi32(y, 3));
  }
}

/* The pixels of a chunk for channels [offset, offset + 64 / PIXELS) of each
 * pixel (those in `mask` only, when MASKED), PIXELS pixels per step. TAPS,
 * PIXELS, SIGNED and MASKED are constants at each call site; st is in the
 * step's lane layout. */
EDGE_Q8_DWCONV_INLINE void block_pixels(size_t TAPS, size_t PIXELS, int SIGNED, int MASKED, size_t pixels,
                                        size_t offset, __mmask64 mask, const uint8_t* const* input,
                                        const uint8_t* zero, const block_state* st, uint8_t* output,
                                        size_t output_stride, const edge_q8_dwconv_params* params) {
  const size_t groups = (TAPS + 3) / 4;
  const __m256i zp16 = _mm256_set1_epi16((int16_t) params->y_zero_point);
  const __m512i vzp = _mm512_inserti64x4(_mm512_castsi256_si512(zp16), zp16, 1);
  const __m512i vmin = _mm512_set1_epi16((int16_t) params->y_min);
  const __m512i vmax = _mm512_set1_epi16((int16_t) params->y_max);
  const int out_signed = params->y_min < 0; /* else every output fits u8 */
  output += offset;
  for (size_t px = 0; px < pixels; px += PIXELS, input += PIXELS * TAPS, output += PIXELS * output_stride) {
    const size_t valid = EDGE_MIN(PIXELS, pixels - px);
    __m512i acc[4] = {st->init[0], st->init[1], st->init[2], st->init[3]};
    for (size_t g = 0; g < groups; g++) {
      __m512i x[4];
      for (size_t j = 0; j < 4; j++) {
        /* Taps past the last pair with zero weights: repeat the group's first. */
        const size_t t = 4 * g + j < TAPS ? 4 * g + j : 4 * g;
        x[j] = j > 0 && t == 4 * g ? x[0]
                                   : load_tap(PIXELS, MASKED, SIGNED, input, TAPS, t, valid, zero, offset, mask);
      }
      const __m512i lo01 = _mm512_unpacklo_epi8(x[0], x[1]), hi01 = _mm512_unpackhi_epi8(x[0], x[1]);
      const __m512i lo23 = _mm512_unpacklo_epi8(x[2], x[3]), hi23 = _mm512_unpackhi_epi8(x[2], x[3]);
      acc[0] = _mm512_dpbusd_epi32(acc[0], _mm512_unpacklo_epi16(lo01, lo23), st->w[g][0]);
      acc[1] = _mm512_dpbusd_epi32(acc[1], _mm512_unpackhi_epi16(lo01, lo23), st->w[g][1]);
      acc[2] = _mm512_dpbusd_epi32(acc[2], _mm512_unpacklo_epi16(hi01, hi23), st->w[g][2]);
      acc[3] = _mm512_dpbusd_epi32(acc[3], _mm512_unpackhi_epi16(hi01, hi23), st->w[g][3]);
    }
    /* Saturating to 16 bits keeps the clamp exact: its bounds lie within int16. */
    __m512i y01 = _mm512_packs_epi32(scale(acc[0], st, 0), scale(acc[1], st, 1));
    __m512i y23 = _mm512_packs_epi32(scale(acc[2], st, 2), scale(acc[3], st, 3));
    y01 = _mm512_min_epi16(_mm512_max_epi16(_mm512_adds_epi16(y01, vzp), vmin), vmax);
    y23 = _mm512_min_epi16(_mm512_max_epi16(_mm512_adds_epi16(y23, vzp), vmin), vmax);
    /* Values are inside the output range, so either pack gives their bytes. */
    const __m512i y = out_signed ? _mm512_packs_epi16(y01, y23) : _mm512_packus_epi16(y01, y23);
    store_step(PIXELS, MASKED, y, output, output_stride, valid, mask);
  }
}

/* One pass over the chunk's pixels, PIXELS per step, signedness dispatched. */
EDGE_Q8_DWCONV_INLINE void pass(size_t TAPS, size_t PIXELS, int MASKED, size_t pixels, size_t offset,
                                __mmask64 mask, const uint8_t* const* input, const uint8_t* zero,
                                const block_state* st, uint8_t* output, size_t output_stride,
                                const edge_q8_dwconv_params* params) {
  if (params->x_signed) {
    block_pixels(TAPS, PIXELS, 1, MASKED, pixels, offset, mask, input, zero, st, output, output_stride, params);
  } else {
    block_pixels(TAPS, PIXELS, 0, MASKED, pixels, offset, mask, input, zero, st, output, output_stride, params);
  }
}

static inline __mmask64 low_bits(size_t n) { return n >= 64 ? ~(__mmask64) 0 : (((__mmask64) 1 << n) - 1); }

EDGE_Q8_DWCONV_INLINE void dwconv_pixels(size_t TAPS, size_t pixels, size_t channels, const uint8_t* const* input,
                                         const uint8_t* zero, const void* packed, uint8_t* output,
                                         size_t output_stride, const edge_q8_dwconv_params* params) {
  const size_t groups = (TAPS + 3) / 4;
  block_state st, lanes;
  for (size_t c0 = 0; c0 < channels; c0 += CB) {
    const size_t rest = channels - c0;
    block_setup(&st, TAPS, c0, rest, (const uint8_t*) packed, params);
    if (rest >= CB) {
      pass(TAPS, 1, 0, pixels, c0, 0, input, zero, &st, output, output_stride, params);
    } else if (rest > 32) {
      pass(TAPS, 1, 1, pixels, c0, low_bits(rest), input, zero, &st, output, output_stride, params);
    } else if (rest > 16) {
      static const int halves[4] = {0, 1, 0, 1};
      remap(&lanes, &st, groups, halves);
      pass(TAPS, 2, 1, pixels, c0, low_bits(rest), input, zero, &lanes, output, output_stride, params);
    } else {
      static const int quarters[4] = {0, 0, 0, 0};
      remap(&lanes, &st, groups, quarters);
      pass(TAPS, 4, 1, pixels, c0, low_bits(rest), input, zero, &lanes, output, output_stride, params);
    }
  }
}

#endif /* EDGE_Q8_DWCONV_AVX512VNNI_H */
