/* One max-pool window tap over the channels, AVX2: 32 bytes per step. */
#include <immintrin.h>

#include "q8-ops/q8-ops.h"

void edge_q8_vmax_ukernel__avx2(size_t n, const uint8_t* x, uint8_t flip, uint8_t* y) {
  const __m256i vflip = _mm256_set1_epi8((char) flip);
  for (; n >= 32; n -= 32, x += 32, y += 32) {
    const __m256i vx = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*) x), vflip);
    const __m256i vy = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*) y), vflip);
    _mm256_storeu_si256((__m256i*) y, _mm256_xor_si256(_mm256_max_epu8(vx, vy), vflip));
  }
  for (size_t i = 0; i < n; i++) {
    const uint8_t a = x[i] ^ flip, b = y[i] ^ flip;
    y[i] = (a > b ? a : b) ^ flip;
  }
}
