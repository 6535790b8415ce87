/* add with rescale, AVX2: 16 bytes per step in two 8 x int32 halves. */
#include <immintrin.h>
#include <string.h>

#include "q8-ops/q8-ops.h"

void edge_q8_vadd_rndnu_ukernel__avx2(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc,
                                      uint8_t* y, const edge_q8_vbinary_params* p) {
  const __m128i vflip = _mm_set1_epi8((char) p->flip);
  const __m256i va_zp = _mm256_set1_epi32(p->a_zero_point), va_mult = _mm256_set1_epi32(p->a_multiplier);
  const __m256i vb_zp = _mm256_set1_epi32(p->b_zero_point), vb_mult = _mm256_set1_epi32(p->b_multiplier);
  const __m128i vshift = _mm_cvtsi32_si128(p->shift - 1);
  const __m256i vone = _mm256_set1_epi32(1), vy_zp = _mm256_set1_epi32(p->y_zero_point);
  const __m128i vy_min = _mm_set1_epi8((char) p->y_min), vy_max = _mm_set1_epi8((char) p->y_max);
  /* A broadcast b adds the same term everywhere. */
  const __m256i vb_term = _mm256_set1_epi32(b_inc == 0 ? ((int32_t) (b[0] ^ p->flip) - p->b_zero_point) * p->b_multiplier : 0);
  uint8_t a_tail[16], b_tail[16], y_tail[16];
  while (n != 0) {
    const size_t chunk = n < 16 ? n : 16;
    const uint8_t* pa = a;
    const uint8_t* pb = b;
    uint8_t* py = y;
    if (chunk < 16) { /* the tail goes through small buffers: no read past the end */
      memset(a_tail, 0, sizeof(a_tail));
      memset(b_tail, 0, sizeof(b_tail));
      memcpy(a_tail, a, chunk);
      if (b_inc != 0) memcpy(b_tail, b, chunk);
      pa = a_tail;
      pb = b_tail;
      py = y_tail;
    }
    const __m128i xa = _mm_xor_si128(_mm_loadu_si128((const __m128i*) pa), vflip);
    __m256i acc_lo = _mm256_mullo_epi32(_mm256_sub_epi32(_mm256_cvtepu8_epi32(xa), va_zp), va_mult);
    __m256i acc_hi = _mm256_mullo_epi32(_mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(xa, 8)), va_zp), va_mult);
    if (b_inc != 0) {
      const __m128i xb = _mm_xor_si128(_mm_loadu_si128((const __m128i*) pb), vflip);
      acc_lo = _mm256_add_epi32(acc_lo, _mm256_mullo_epi32(_mm256_sub_epi32(_mm256_cvtepu8_epi32(xb), vb_zp), vb_mult));
      acc_hi = _mm256_add_epi32(
          acc_hi, _mm256_mullo_epi32(_mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(xb, 8)), vb_zp), vb_mult));
    } else {
      acc_lo = _mm256_add_epi32(acc_lo, vb_term);
      acc_hi = _mm256_add_epi32(acc_hi, vb_term);
    }
    /* ((acc >> (shift - 1)) + 1) >> 1: round half up without overflow. */
    acc_lo = _mm256_srai_epi32(_mm256_add_epi32(_mm256_sra_epi32(acc_lo, vshift), vone), 1);
    acc_hi = _mm256_srai_epi32(_mm256_add_epi32(_mm256_sra_epi32(acc_hi, vshift), vone), 1);
    acc_lo = _mm256_add_epi32(acc_lo, vy_zp);
    acc_hi = _mm256_add_epi32(acc_hi, vy_zp);
    /* Saturating packs are monotone, so clamping after them is exact. */
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(acc_lo, acc_hi), 0xD8);
    __m128i out = _mm_packus_epi16(_mm256_castsi256_si128(packed), _mm256_extracti128_si256(packed, 1));
    out = _mm_min_epu8(_mm_max_epu8(out, vy_min), vy_max);
    _mm_storeu_si128((__m128i*) py, _mm_xor_si128(out, vflip));
    if (chunk < 16) memcpy(y, y_tail, chunk);
    a += chunk;
    b += chunk * b_inc;
    y += chunk;
    n -= chunk;
  }
}
