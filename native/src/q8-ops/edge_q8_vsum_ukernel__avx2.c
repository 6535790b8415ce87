/* One average-pool window tap over the channels, AVX2: 16 bytes per step. */
#include <immintrin.h>

#include "q8-ops/q8-ops.h"

void edge_q8_vsum_ukernel__avx2(size_t n, const uint8_t* x, uint8_t flip, int32_t* acc) {
  const __m128i vflip = _mm_set1_epi8((char) flip);
  for (; n >= 16; n -= 16, x += 16, acc += 16) {
    const __m128i vx = _mm_xor_si128(_mm_loadu_si128((const __m128i*) x), vflip);
    const __m256i lo = _mm256_add_epi32(_mm256_loadu_si256((const __m256i*) acc), _mm256_cvtepu8_epi32(vx));
    const __m256i hi = _mm256_add_epi32(_mm256_loadu_si256((const __m256i*) (acc + 8)),
                                        _mm256_cvtepu8_epi32(_mm_srli_si128(vx, 8)));
    _mm256_storeu_si256((__m256i*) acc, lo);
    _mm256_storeu_si256((__m256i*) (acc + 8), hi);
  }
  for (size_t i = 0; i < n; i++) acc[i] += (int32_t) (x[i] ^ flip);
}
