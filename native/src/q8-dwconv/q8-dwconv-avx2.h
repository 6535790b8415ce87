/* The depthwise block of the micro-kernels, AVX2:
 * edge_q8_qc8w_dwconv{3x3,5x5}_rndnu_ukernel_16c__avx2; included only by
 * their two files (it needs their compiler flags).
 * Two taps at a time: the input bytes of taps 2p and 2p+1 are interleaved,
 * widened to int16 minus the zero point (exact: within [-255, 255]) and
 * multiplied by the packed weight pairs with vpmaddwd into int32 lanes (no
 * saturation: each product is below 2^15 * 2^8). Requantization in SIMD,
 * the same bits as edge_requantize. */
#ifndef EDGE_Q8_DWCONV_AVX2_H
#define EDGE_Q8_DWCONV_AVX2_H

#include <immintrin.h>

#include "q8-dwconv.h"

/* The requantization constants of a 16-channel block, derived once for every
 * pixel of a chunk (per pixel they were about a sixth of the block's
 * instructions): per 8 channels, the multipliers of the even and odd lanes,
 * the shifts, 2^(shift-1) and the sign bit moved by the shift. */
typedef struct dwconv_constants {
  __m256i mul_even[2], mul_odd[2], shift_even[2], shift_odd[2], round_even[2], round_odd[2], sign_even[2],
      sign_odd[2];
} dwconv_constants;

static inline void dwconv_constants_init(dwconv_constants* k, const int32_t* multiplier, const int32_t* shift) {
  const __m256i one = _mm256_set1_epi64x(1), sign = _mm256_set1_epi64x(INT64_MIN);
  for (int h = 0; h < 2; h++) {
    const __m256i mult = _mm256_loadu_si256((const __m256i*) (multiplier + 8 * h));
    const __m256i sh = _mm256_loadu_si256((const __m256i*) (shift + 8 * h));
    k->mul_even[h] = mult;
    k->mul_odd[h] = _mm256_srli_epi64(mult, 32);
    k->shift_even[h] = _mm256_and_si256(sh, _mm256_set1_epi64x(0xFFFFFFFF));
    k->shift_odd[h] = _mm256_srli_epi64(sh, 32);
    k->round_even[h] = _mm256_sllv_epi64(one, _mm256_sub_epi64(k->shift_even[h], one));
    k->round_odd[h] = _mm256_sllv_epi64(one, _mm256_sub_epi64(k->shift_odd[h], one));
    k->sign_even[h] = _mm256_srlv_epi64(sign, k->shift_even[h]);
    k->sign_odd[h] = _mm256_srlv_epi64(sign, k->shift_odd[h]);
  }
}

/* Arithmetic right shift of 64-bit lanes by per-lane counts (AVX2 has only
 * the logical one): shift logically, then sign-extend from the moved sign bit. */
static inline __m256i sra_epi64(__m256i v, __m256i count, __m256i sign) {
  return _mm256_sub_epi64(_mm256_xor_si256(_mm256_srlv_epi64(v, count), sign), sign);
}

/* edge_requantize of channels 8h..8h+7, up to the clamp (zero point not yet
 * added). The shifted product always fits int32 (|acc * multiplier| < 2^62,
 * shift >= 31). */
static inline __m256i requant8(__m256i acc, const dwconv_constants* k, int h, __m256i lo, __m256i hi) {
  __m256i even = _mm256_add_epi64(_mm256_mul_epi32(acc, k->mul_even[h]), k->round_even[h]);
  __m256i odd = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(acc, 32), k->mul_odd[h]), k->round_odd[h]);
  even = sra_epi64(even, k->shift_even[h], k->sign_even[h]);
  odd = sra_epi64(odd, k->shift_odd[h], k->sign_odd[h]);
  const __m256i scaled = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  return _mm256_min_epi32(_mm256_max_epi32(scaled, lo), hi);
}

EDGE_Q8_DWCONV_INLINE __m256i widen(__m128i bytes, int is_signed, __m256i zero_point) {
  const __m256i x = is_signed ? _mm256_cvtepi8_epi16(bytes) : _mm256_cvtepu8_epi16(bytes);
  return _mm256_sub_epi16(x, zero_point);
}

EDGE_Q8_DWCONV_INLINE void dwconv_block(size_t taps, const uint8_t* const* in, const uint8_t* block,
                                        const dwconv_constants* k, uint8_t* out,
                                        const edge_q8_dwconv_params* params) {
  const __m256i zp = _mm256_set1_epi16((int16_t) params->x_zero_point);
  __m256i acc_lo = _mm256_loadu_si256((const __m256i*) block);       /* channels 0..7 */
  __m256i acc_hi = _mm256_loadu_si256((const __m256i*) (block + 32)); /* channels 8..15 */
  const uint8_t* w = block + EDGE_Q8_DWCONV_CB * sizeof(int32_t);
  for (size_t t = 0; t < taps; t += 2, w += 2 * EDGE_Q8_DWCONV_CB) {
    const __m128i xa = _mm_loadu_si128((const __m128i*) in[t]);
    /* An odd last tap pairs with itself: its partner's weights are zero. */
    const __m128i xb = t + 1 < taps ? _mm_loadu_si128((const __m128i*) in[t + 1]) : xa;
    const __m256i x_lo = widen(_mm_unpacklo_epi8(xa, xb), params->x_signed, zp);
    const __m256i x_hi = widen(_mm_unpackhi_epi8(xa, xb), params->x_signed, zp);
    const __m256i w_lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*) w));
    const __m256i w_hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*) (w + 16)));
    acc_lo = _mm256_add_epi32(acc_lo, _mm256_madd_epi16(x_lo, w_lo));
    acc_hi = _mm256_add_epi32(acc_hi, _mm256_madd_epi16(x_hi, w_hi));
  }
  const __m256i lo = _mm256_set1_epi32(params->y_min - params->y_zero_point);
  const __m256i hi = _mm256_set1_epi32(params->y_max - params->y_zero_point);
  const __m256i out_zp = _mm256_set1_epi32(params->y_zero_point);
  const __m256i y_lo = _mm256_add_epi32(requant8(acc_lo, k, 0, lo, hi), out_zp);
  const __m256i y_hi = _mm256_add_epi32(requant8(acc_hi, k, 1, lo, hi), out_zp);
  /* Values are inside the output range: keep their low bytes (u8 or s8 alike). */
  const __m256i y16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(y_lo, y_hi), 0xD8);
  const __m256i low_bytes = _mm256_and_si256(y16, _mm256_set1_epi16(0xFF));
  const __m128i y8 = _mm_packus_epi16(_mm256_castsi256_si128(low_bytes), _mm256_extracti128_si256(low_bytes, 1));
  _mm_storeu_si128((__m128i*) out, y8);
}

#include "q8-dwconv-pixels.h"

#endif /* EDGE_Q8_DWCONV_AVX2_H */
