/* add with rescale, NEON: 16 bytes per step; vrshl does the round-half-up
 * shift exactly (the rounding constant is added at full precision). */
#include "q8-ops/q8-ops-neon.h"

void edge_q8_vadd_rndnu_ukernel__neon(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc,
                                      uint8_t* y, const edge_q8_vbinary_params* p) {
  const edge_q8_neon_output out = edge_q8_neon_output_init(p);
  const int16x8_t va_zp = vdupq_n_s16((int16_t) p->a_zero_point), vb_zp = vdupq_n_s16((int16_t) p->b_zero_point);
  const int32x4_t va_mult = vdupq_n_s32(p->a_multiplier), vb_mult = vdupq_n_s32(p->b_multiplier);
  const int32x4_t vb_term =
      vdupq_n_s32(b_inc == 0 ? ((int32_t) (b[0] ^ p->flip) - p->b_zero_point) * p->b_multiplier : 0);
  for (; n >= 16; n -= 16, a += 16, b += 16 * b_inc, y += 16) {
    int16x8_t da_lo, da_hi;
    edge_q8_neon_load16(a, out.flip, va_zp, &da_lo, &da_hi);
    int32x4_t acc0 = vmulq_s32(vmovl_s16(vget_low_s16(da_lo)), va_mult);
    int32x4_t acc1 = vmulq_s32(vmovl_high_s16(da_lo), va_mult);
    int32x4_t acc2 = vmulq_s32(vmovl_s16(vget_low_s16(da_hi)), va_mult);
    int32x4_t acc3 = vmulq_s32(vmovl_high_s16(da_hi), va_mult);
    if (b_inc != 0) {
      int16x8_t db_lo, db_hi;
      edge_q8_neon_load16(b, out.flip, vb_zp, &db_lo, &db_hi);
      acc0 = vmlaq_s32(acc0, vmovl_s16(vget_low_s16(db_lo)), vb_mult);
      acc1 = vmlaq_s32(acc1, vmovl_high_s16(db_lo), vb_mult);
      acc2 = vmlaq_s32(acc2, vmovl_s16(vget_low_s16(db_hi)), vb_mult);
      acc3 = vmlaq_s32(acc3, vmovl_high_s16(db_hi), vb_mult);
    } else {
      acc0 = vaddq_s32(acc0, vb_term);
      acc1 = vaddq_s32(acc1, vb_term);
      acc2 = vaddq_s32(acc2, vb_term);
      acc3 = vaddq_s32(acc3, vb_term);
    }
    edge_q8_neon_store16(y, acc0, acc1, acc2, acc3, &out);
  }
  if (n != 0) edge_q8_vbinary_tail(edge_q8_vadd_rndnu_ukernel__neon, n, a, b, b_inc, y, p);
}
