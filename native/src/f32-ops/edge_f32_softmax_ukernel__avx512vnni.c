/* Softmax of one row, AVX-512: vector max, polynomial exp (see f32-ops.h)
 * with the sum in 16 lanes, then one scale; masked tails. */
#include <immintrin.h>

#include "f32-ops/f32-ops.h"

static inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(EDGE_EXP_MIN_INPUT));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EDGE_EXP_LOG2E)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EDGE_EXP_LN2_HI), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EDGE_EXP_LN2_LO), r);
  __m512 poly = _mm512_set1_ps(EDGE_EXP_P0);
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(EDGE_EXP_P1));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(EDGE_EXP_P2));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(EDGE_EXP_P3));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(EDGE_EXP_P4));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(EDGE_EXP_P5));
  const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(poly, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(e, _mm512_castsi512_ps(bits));
}

static inline __mmask16 tail_mask(size_t remaining) {
  return remaining >= 16 ? (__mmask16) 0xFFFF : (__mmask16) ((1u << remaining) - 1);
}

void edge_f32_softmax_ukernel__avx512vnni(size_t n, const float* x, float* y) {
  __m512 vmax = _mm512_set1_ps(x[0]);
  for (size_t i = 0; i < n; i += 16) {
    vmax = _mm512_mask_max_ps(vmax, tail_mask(n - i), vmax, _mm512_maskz_loadu_ps(tail_mask(n - i), x + i));
  }
  const __m512 vm = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
  __m512 vsum = _mm512_setzero_ps();
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 mask = tail_mask(n - i);
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, x + i), vm));
    _mm512_mask_storeu_ps(y + i, mask, e);
    vsum = _mm512_mask_add_ps(vsum, mask, vsum, e);
  }
  const __m512 vinv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 mask = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, y + i), vinv));
  }
}
