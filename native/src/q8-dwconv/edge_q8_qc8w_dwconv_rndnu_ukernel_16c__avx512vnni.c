/* Depthwise 3x3 and 5x5 micro-kernels, AVX-512 with VNNI:
 * edge_q8_qc8w_dwconv3x3_rndnu_ukernel_16c__avx512vnni and ..._dwconv5x5_...
 * Two taps at a time: the input bytes of taps 2p and 2p+1 are interleaved,
 * widened to int16 minus the zero point (exact: within [-255, 255]) and
 * accumulated with the packed weight pairs by vpdpwssd (the non-saturating
 * int16 pair dot product). Requantization with 64-bit lanes and vpsravq. */
#include <immintrin.h>

#include "q8-dwconv.h"

/* edge_requantize of 16 lanes, up to the clamp (zero point not yet added). The
 * shifted product always fits int32 (|acc * multiplier| < 2^62, shift >= 31). */
static inline __m512i requant16(__m512i acc, const int32_t* multiplier, const int32_t* shift, __m512i lo,
                                __m512i hi) {
  const __m512i one = _mm512_set1_epi64(1);
  const __m512i mult = _mm512_loadu_si512(multiplier);
  const __m512i sh = _mm512_loadu_si512(shift);
  const __m512i sh_even = _mm512_and_si512(sh, _mm512_set1_epi64(0xFFFFFFFF));
  const __m512i sh_odd = _mm512_srli_epi64(sh, 32);
  __m512i even = _mm512_mul_epi32(acc, mult);
  __m512i odd = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), _mm512_srli_epi64(mult, 32));
  even = _mm512_srav_epi64(_mm512_add_epi64(even, _mm512_sllv_epi64(one, _mm512_sub_epi64(sh_even, one))), sh_even);
  odd = _mm512_srav_epi64(_mm512_add_epi64(odd, _mm512_sllv_epi64(one, _mm512_sub_epi64(sh_odd, one))), sh_odd);
  const __m512i scaled = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  return _mm512_min_epi32(_mm512_max_epi32(scaled, lo), hi);
}

EDGE_Q8_DWCONV_INLINE void dwconv_block(size_t taps, const uint8_t* const* in, const uint8_t* block,
                                        const int32_t* multiplier, const int32_t* shift, uint8_t* out,
                                        const edge_q8_dwconv_params* params) {
  const __m512i zp = _mm512_set1_epi16((int16_t) params->x_zero_point);
  __m512i acc = _mm512_loadu_si512(block);
  const uint8_t* w = block + EDGE_Q8_DWCONV_CB * sizeof(int32_t);
  for (size_t t = 0; t < taps; t += 2, w += 2 * EDGE_Q8_DWCONV_CB) {
    const __m128i xa = _mm_loadu_si128((const __m128i*) in[t]);
    /* An odd last tap pairs with itself: its partner's weights are zero. */
    const __m128i xb = t + 1 < taps ? _mm_loadu_si128((const __m128i*) in[t + 1]) : xa;
    const __m256i pairs = _mm256_set_m128i(_mm_unpackhi_epi8(xa, xb), _mm_unpacklo_epi8(xa, xb));
    const __m512i x = params->x_signed ? _mm512_cvtepi8_epi16(pairs) : _mm512_cvtepu8_epi16(pairs);
    const __m512i wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*) w));
    acc = _mm512_dpwssd_epi32(acc, _mm512_sub_epi16(x, zp), wv);
  }
  const __m512i lo = _mm512_set1_epi32(params->y_min - params->y_zero_point);
  const __m512i hi = _mm512_set1_epi32(params->y_max - params->y_zero_point);
  const __m512i y = _mm512_add_epi32(requant16(acc, multiplier, shift, lo, hi), _mm512_set1_epi32(params->y_zero_point));
  /* Values are inside the output range: keep their low bytes (u8 or s8 alike). */
  _mm_storeu_si128((__m128i*) out, _mm512_cvtepi32_epi8(y));
}

#include "q8-dwconv-pixels.h"

EDGE_Q8_DWCONV_DEFINE(avx512vnni)
