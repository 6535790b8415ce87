/* ONNX QuantizeLinear, AVX-512: 16 floats per step, masked tail. */
#include <immintrin.h>

#include "q8-ops/q8-ops.h"

void edge_f32_q8_quantize_ukernel__avx512vnni(size_t n, const float* x, const edge_q8_quantize_params* p,
                                              uint8_t* y) {
  const __m512 vscale = _mm512_set1_ps(p->scale), vlo = _mm512_set1_ps(p->lo), vhi = _mm512_set1_ps(p->hi);
  const __m512i vzp = _mm512_set1_epi32(p->zero_point);
  const __m128i vflip = _mm_set1_epi8((char) p->flip);
  while (n != 0) {
    const size_t chunk = n < 16 ? n : 16;
    const __mmask16 mask = (__mmask16) ((1u << chunk) - 1);
    __m512 v = _mm512_div_ps(_mm512_maskz_loadu_ps(mask, x), vscale);
    v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v); /* NaN -> 0, i.e. the zero point */
    v = _mm512_min_ps(_mm512_max_ps(v, vlo), vhi);
    const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), vzp);
    _mm_mask_storeu_epi8(y, mask, _mm_xor_si128(_mm512_cvtepi32_epi8(q), vflip));
    x += chunk;
    y += chunk;
    n -= chunk;
  }
}
