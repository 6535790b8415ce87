/* ONNX DequantizeLinear, AVX2: 8 bytes per step, one rounding (no FMA). */
#include <immintrin.h>
#include <string.h>

#include "q8-ops/q8-ops.h"

void edge_q8_f32_dequantize_ukernel__avx2(size_t n, const uint8_t* x, uint8_t flip, int32_t zero_point,
                                          float scale, float* y) {
  const __m128i vflip = _mm_set1_epi8((char) flip);
  const __m256i vzp = _mm256_set1_epi32(zero_point);
  const __m256 vscale = _mm256_set1_ps(scale);
  for (; n >= 8; n -= 8, x += 8, y += 8) {
    int64_t bytes;
    memcpy(&bytes, x, sizeof(bytes));
    const __m128i vx = _mm_xor_si128(_mm_cvtsi64_si128(bytes), vflip);
    const __m256i q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(vx), vzp);
    _mm256_storeu_ps(y, _mm256_mul_ps(_mm256_cvtepi32_ps(q), vscale));
  }
  for (size_t i = 0; i < n; i++) y[i] = (float) ((int32_t) (x[i] ^ flip) - zero_point) * scale;
}
