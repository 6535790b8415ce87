/* ONNX QuantizeLinear, AVX2: 32 floats per step, true division, round half to even. */
#include <immintrin.h>
#include <string.h>

#include "q8-ops/q8-ops.h"

static inline __m256i quantize8(__m256 vx, __m256 vscale, __m256 vlo, __m256 vhi, __m256i vzp) {
  __m256 v = _mm256_round_ps(_mm256_div_ps(vx, vscale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q)); /* NaN -> 0, i.e. the zero point */
  v = _mm256_min_ps(_mm256_max_ps(v, vlo), vhi);
  return _mm256_add_epi32(_mm256_cvtps_epi32(v), vzp);
}

void edge_f32_q8_quantize_ukernel__avx2(size_t n, const float* x, const edge_q8_quantize_params* p, uint8_t* y) {
  const __m256 vscale = _mm256_set1_ps(p->scale), vlo = _mm256_set1_ps(p->lo), vhi = _mm256_set1_ps(p->hi);
  const __m256i vzp = _mm256_set1_epi32(p->zero_point), vflip = _mm256_set1_epi8((char) p->flip);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  float x_tail[32];
  uint8_t y_tail[32];
  while (n != 0) {
    const size_t chunk = n < 32 ? n : 32;
    const float* px = x;
    if (chunk < 32) {
      memset(x_tail, 0, sizeof(x_tail));
      memcpy(x_tail, x, chunk * sizeof(float));
      px = x_tail;
    }
    const __m256i i0 = quantize8(_mm256_loadu_ps(px), vscale, vlo, vhi, vzp);
    const __m256i i1 = quantize8(_mm256_loadu_ps(px + 8), vscale, vlo, vhi, vzp);
    const __m256i i2 = quantize8(_mm256_loadu_ps(px + 16), vscale, vlo, vhi, vzp);
    const __m256i i3 = quantize8(_mm256_loadu_ps(px + 24), vscale, vlo, vhi, vzp);
    /* Values are already in [0, 255]: the packs only narrow. */
    const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    const __m256i out = _mm256_xor_si256(_mm256_permutevar8x32_epi32(bytes, order), vflip);
    if (chunk < 32) {
      _mm256_storeu_si256((__m256i*) y_tail, out);
      memcpy(y, y_tail, chunk);
    } else {
      _mm256_storeu_si256((__m256i*) y, out);
    }
    x += chunk;
    y += chunk;
    n -= chunk;
  }
}
