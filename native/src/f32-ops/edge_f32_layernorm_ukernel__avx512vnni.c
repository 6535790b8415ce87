/* Layer norm of one row, AVX-512: two passes with 16-lane float sums, masked tails. */
#include <immintrin.h>
#include <math.h>

#include "f32-ops/f32-ops.h"

static inline __mmask16 tail_mask(size_t remaining) {
  return remaining >= 16 ? (__mmask16) 0xFFFF : (__mmask16) ((1u << remaining) - 1);
}

void edge_f32_layernorm_ukernel__avx512vnni(size_t n, const float* x, const float* gamma, const float* beta,
                                            float epsilon, float* y) {
  __m512 vsum = _mm512_setzero_ps();
  for (size_t i = 0; i < n; i += 16) vsum = _mm512_add_ps(vsum, _mm512_maskz_loadu_ps(tail_mask(n - i), x + i));
  const float mean = _mm512_reduce_add_ps(vsum) / (float) n;
  const __m512 vmean = _mm512_set1_ps(mean);
  __m512 vsq = _mm512_setzero_ps();
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 mask = tail_mask(n - i);
    const __m512 d = _mm512_maskz_sub_ps(mask, _mm512_maskz_loadu_ps(mask, x + i), vmean);
    vsq = _mm512_fmadd_ps(d, d, vsq);
  }
  const __m512 vrstd = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(vsq) / (float) n + epsilon));
  const __m512 vone = _mm512_set1_ps(1.0f), vzero = _mm512_setzero_ps();
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 mask = tail_mask(n - i);
    const __m512 g = gamma != NULL ? _mm512_maskz_loadu_ps(mask, gamma + i) : vone;
    const __m512 b = beta != NULL ? _mm512_maskz_loadu_ps(mask, beta + i) : vzero;
    const __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, x + i), vmean), vrstd);
    _mm512_mask_storeu_ps(y + i, mask, _mm512_fmadd_ps(v, g, b));
  }
}
