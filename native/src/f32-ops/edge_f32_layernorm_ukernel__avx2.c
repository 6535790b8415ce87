/* Layer norm of one row, AVX2: two passes with 8-lane float sums. */
#include <immintrin.h>
#include <math.h>

#include "f32-ops/f32-ops.h"

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

void edge_f32_layernorm_ukernel__avx2(size_t n, const float* x, const float* gamma, const float* beta,
                                      float epsilon, float* y) {
  size_t i;
  __m256 vsum = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) vsum = _mm256_add_ps(vsum, _mm256_loadu_ps(x + i));
  float sum = hsum(vsum);
  for (; i < n; i++) sum += x[i];
  const float mean = sum / (float) n;

  const __m256 vmean = _mm256_set1_ps(mean);
  __m256 vsq = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), vmean);
    vsq = _mm256_fmadd_ps(d, d, vsq);
  }
  float sq = hsum(vsq);
  for (; i < n; i++) sq += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.0f / sqrtf(sq / (float) n + epsilon);

  const __m256 vrstd = _mm256_set1_ps(rstd), vone = _mm256_set1_ps(1.0f), vzero = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 g = gamma != NULL ? _mm256_loadu_ps(gamma + i) : vone;
    const __m256 b = beta != NULL ? _mm256_loadu_ps(beta + i) : vzero;
    const __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmean), vrstd);
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(v, g, b));
  }
  for (; i < n; i++) {
    float v = (x[i] - mean) * rstd;
    if (gamma != NULL) v *= gamma[i];
    if (beta != NULL) v += beta[i];
    y[i] = v;
  }
}
