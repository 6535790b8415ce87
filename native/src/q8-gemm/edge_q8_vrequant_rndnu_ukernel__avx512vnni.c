/* Requantization, 16 channels at a time, bit-identical to edge_requantize:
 * 64-bit products of the even and odd lanes (vpmuldq), + 2^(shift-1),
 * arithmetic shift (vpsravq), then clamp and zero point in 32 bits. The
 * shifted value fits in int32 because multiplier < 2^31 <= 2^shift. */
#include <immintrin.h>

#include "q8-gemm.h"

void edge_q8_vrequant_rndnu_ukernel__avx512vnni(size_t n, const int32_t* acc, const int32_t* multiplier,
                                                const int32_t* shift, int32_t zero_point, int32_t out_min,
                                                int32_t out_max, int out_signed, void* out) {
  (void) out_signed; /* the clamp already holds the value in the output range: truncation is exact */
  const __m512i vlo = _mm512_set1_epi32(out_min - zero_point);
  const __m512i vhi = _mm512_set1_epi32(out_max - zero_point);
  const __m512i vzp = _mm512_set1_epi32(zero_point);
  const __m512i one = _mm512_set1_epi64(1);
  const __m512i low32 = _mm512_set1_epi64(0xFFFFFFFF);
  uint8_t* o = out;
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 mask = n - i >= 16 ? (__mmask16) 0xFFFF : (__mmask16) ((1u << (n - i)) - 1);
    const __m512i vacc = _mm512_maskz_loadu_epi32(mask, acc + i);
    const __m512i vmul = _mm512_maskz_loadu_epi32(mask, multiplier + i);
    const __m512i vshift = _mm512_maskz_loadu_epi32(mask, shift + i);
    const __m512i shift_even = _mm512_and_si512(vshift, low32);
    const __m512i shift_odd = _mm512_srli_epi64(vshift, 32);
    __m512i even = _mm512_mul_epi32(vacc, vmul);
    __m512i odd = _mm512_mul_epi32(_mm512_srli_epi64(vacc, 32), _mm512_srli_epi64(vmul, 32));
    even = _mm512_add_epi64(even, _mm512_sllv_epi64(one, _mm512_sub_epi64(shift_even, one)));
    odd = _mm512_add_epi64(odd, _mm512_sllv_epi64(one, _mm512_sub_epi64(shift_odd, one)));
    even = _mm512_srav_epi64(even, shift_even);
    odd = _mm512_srav_epi64(odd, shift_odd);
    __m512i v = _mm512_mask_blend_epi32((__mmask16) 0xAAAA, even, _mm512_slli_epi64(odd, 32));
    v = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(v, vlo), vhi), vzp);
    _mm512_mask_cvtepi32_storeu_epi8(o + i, mask, v);
  }
}
