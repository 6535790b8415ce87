/* AVX2 helpers shared by the q8-ops add and mul kernels. Include only from
 * *__avx2.c files: they are the ones compiled with the AVX2 flags. */
#ifndef EDGE_Q8_OPS_AVX2_H
#define EDGE_Q8_OPS_AVX2_H

#include <immintrin.h>

#include "q8-ops/q8-ops.h"

/* The output stage of add and mul, broadcast once per call. */
typedef struct edge_q8_avx2_output {
  __m128i shift_minus_1; /* the count operand of _mm256_sra_epi32 */
  __m256i one, zero_point;
  __m128i min, max, flip;
} edge_q8_avx2_output;

static inline edge_q8_avx2_output edge_q8_avx2_output_init(const edge_q8_vbinary_params* p) {
  edge_q8_avx2_output o;
  o.shift_minus_1 = _mm_cvtsi32_si128(p->shift - 1);
  o.one = _mm256_set1_epi32(1);
  o.zero_point = _mm256_set1_epi32(p->y_zero_point);
  o.min = _mm_set1_epi8((char) p->y_min);
  o.max = _mm_set1_epi8((char) p->y_max);
  o.flip = _mm_set1_epi8((char) p->flip);
  return o;
}

/* Loads 16 bytes, XORs them with flip and returns bytes 0-7 (lo) and 8-15
 * (hi) as int32 lanes minus zero_point. */
static inline void edge_q8_avx2_load16(const uint8_t* x, __m128i flip, __m256i zero_point, __m256i* lo,
                                       __m256i* hi) {
  const __m128i v = _mm_xor_si128(_mm_loadu_si128((const __m128i*) x), flip);
  *lo = _mm256_sub_epi32(_mm256_cvtepu8_epi32(v), zero_point);
  *hi = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)), zero_point);
}

/* Stores edge_q8_rounding_shift(acc) + zero point, clamped and flipped, for
 * the 16 lanes lo (bytes 0-7) and hi (bytes 8-15). */
static inline void edge_q8_avx2_store16(uint8_t* y, __m256i lo, __m256i hi, const edge_q8_avx2_output* o) {
  /* ((acc >> (shift - 1)) + 1) >> 1: round half up without overflow. */
  lo = _mm256_srai_epi32(_mm256_add_epi32(_mm256_sra_epi32(lo, o->shift_minus_1), o->one), 1);
  hi = _mm256_srai_epi32(_mm256_add_epi32(_mm256_sra_epi32(hi, o->shift_minus_1), o->one), 1);
  lo = _mm256_add_epi32(lo, o->zero_point);
  hi = _mm256_add_epi32(hi, o->zero_point);
  /* Saturating packs are monotone, so clamping after them is exact. */
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
  __m128i out = _mm_packus_epi16(_mm256_castsi256_si128(packed), _mm256_extracti128_si256(packed, 1));
  out = _mm_min_epu8(_mm_max_epu8(out, o->min), o->max);
  _mm_storeu_si128((__m128i*) y, _mm_xor_si128(out, o->flip));
}

#endif /* EDGE_Q8_OPS_AVX2_H */
