/* mul with rescale, AVX-512: 16 bytes per step in one 16 x int32 vector. */
#include <immintrin.h>

#include "q8-ops/q8-ops.h"

void edge_q8_vmul_rndnu_ukernel__avx512vnni(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc,
                                            uint8_t* y, const edge_q8_vbinary_params* p) {
  const __m128i vflip = _mm_set1_epi8((char) p->flip);
  const __m512i va_zp = _mm512_set1_epi32(p->a_zero_point), vb_zp = _mm512_set1_epi32(p->b_zero_point);
  const __m512i vmult = _mm512_set1_epi32(p->a_multiplier);
  const __m128i vshift = _mm_cvtsi32_si128(p->shift - 1);
  const __m512i vone = _mm512_set1_epi32(1), vy_zp = _mm512_set1_epi32(p->y_zero_point);
  const __m512i vy_min = _mm512_set1_epi32(p->y_min), vy_max = _mm512_set1_epi32(p->y_max);
  const __m512i vb_const = _mm512_set1_epi32(b_inc == 0 ? (int32_t) (b[0] ^ p->flip) - p->b_zero_point : 0);
  while (n != 0) {
    const size_t chunk = n < 16 ? n : 16;
    const __mmask16 mask = (__mmask16) ((1u << chunk) - 1);
    const __m128i xa = _mm_xor_si128(_mm_maskz_loadu_epi8(mask, a), vflip);
    const __m512i da = _mm512_sub_epi32(_mm512_cvtepu8_epi32(xa), va_zp);
    __m512i db = vb_const;
    if (b_inc != 0) {
      const __m128i xb = _mm_xor_si128(_mm_maskz_loadu_epi8(mask, b), vflip);
      db = _mm512_sub_epi32(_mm512_cvtepu8_epi32(xb), vb_zp);
    }
    /* |da * db| <= 65025 and multiplier <= 2^15: no int32 overflow. */
    __m512i acc = _mm512_mullo_epi32(_mm512_mullo_epi32(da, db), vmult);
    acc = _mm512_srai_epi32(_mm512_add_epi32(_mm512_sra_epi32(acc, vshift), vone), 1);
    acc = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(acc, vy_zp), vy_min), vy_max);
    _mm_mask_storeu_epi8(y, mask, _mm_xor_si128(_mm512_cvtepi32_epi8(acc), vflip));
    a += chunk;
    b += chunk * b_inc;
    y += chunk;
    n -= chunk;
  }
}
