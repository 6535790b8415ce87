/* mul with rescale, AVX2: 16 bytes per step in two 8 x int32 halves. */
#include "q8-ops/q8-ops-avx2.h"

void edge_q8_vmul_rndnu_ukernel__avx2(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc,
                                      uint8_t* y, const edge_q8_vbinary_params* p) {
  const edge_q8_avx2_output out = edge_q8_avx2_output_init(p);
  const __m256i va_zp = _mm256_set1_epi32(p->a_zero_point), vb_zp = _mm256_set1_epi32(p->b_zero_point);
  const __m256i vmult = _mm256_set1_epi32(p->a_multiplier);
  const __m256i vb_const = _mm256_set1_epi32(b_inc == 0 ? (int32_t) (b[0] ^ p->flip) - p->b_zero_point : 0);
  for (; n >= 16; n -= 16, a += 16, b += 16 * b_inc, y += 16) {
    __m256i da_lo, da_hi, db_lo = vb_const, db_hi = vb_const;
    edge_q8_avx2_load16(a, out.flip, va_zp, &da_lo, &da_hi);
    if (b_inc != 0) edge_q8_avx2_load16(b, out.flip, vb_zp, &db_lo, &db_hi);
    /* |da * db| <= 65025 and multiplier <= 2^15: no int32 overflow. */
    const __m256i acc_lo = _mm256_mullo_epi32(_mm256_mullo_epi32(da_lo, db_lo), vmult);
    const __m256i acc_hi = _mm256_mullo_epi32(_mm256_mullo_epi32(da_hi, db_hi), vmult);
    edge_q8_avx2_store16(y, acc_lo, acc_hi, &out);
  }
  if (n != 0) edge_q8_vbinary_tail(edge_q8_vmul_rndnu_ukernel__avx2, n, a, b, b_inc, y, p);
}
