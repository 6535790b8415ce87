/* Softmax of one row, AVX2: vector max, polynomial exp (see f32-ops.h) with
 * the sum in 8 lanes, then one scale. The tail (< 8) uses libm expf. */
#include <immintrin.h>
#include <math.h>

#include "f32-ops/f32-ops.h"

static inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(EDGE_EXP_MIN_INPUT));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EDGE_EXP_LOG2E)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EDGE_EXP_LN2_HI), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EDGE_EXP_LN2_LO), r);
  __m256 poly = _mm256_set1_ps(EDGE_EXP_P0);
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(EDGE_EXP_P1));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(EDGE_EXP_P2));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(EDGE_EXP_P3));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(EDGE_EXP_P4));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(EDGE_EXP_P5));
  const __m256 e = _mm256_add_ps(_mm256_fmadd_ps(poly, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  /* 2^n for n in [-126, 0]: a normal float built from its exponent bits. */
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(e, _mm256_castsi256_ps(bits));
}

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

void edge_f32_softmax_ukernel__avx2(size_t n, const float* x, float* y) {
  size_t i = 0;
  __m256 vmax = _mm256_set1_ps(x[0]);
  for (; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  float max = _mm_cvtss_f32(m);
  for (; i < n; i++) max = x[i] > max ? x[i] : max;

  const __m256 vm = _mm256_set1_ps(max);
  __m256 vsum = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(y + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float sum = hsum(vsum);
  for (; i < n; i++) {
    y[i] = expf(x[i] - max);
    sum += y[i];
  }

  const float inv = 1.0f / sum;
  const __m256 vinv = _mm256_set1_ps(inv);
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), vinv));
  for (; i < n; i++) y[i] *= inv;
}
