/* mul with rescale, NEON: 16 bytes per step, vmull_s16 for the products. */
#include "q8-ops/q8-ops-neon.h"

void edge_q8_vmul_rndnu_ukernel__neon(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc,
                                      uint8_t* y, const edge_q8_vbinary_params* p) {
  const edge_q8_neon_output out = edge_q8_neon_output_init(p);
  const int16x8_t va_zp = vdupq_n_s16((int16_t) p->a_zero_point), vb_zp = vdupq_n_s16((int16_t) p->b_zero_point);
  const int32x4_t vmult = vdupq_n_s32(p->a_multiplier);
  const int16x8_t vb_const = vdupq_n_s16((int16_t) (b_inc == 0 ? (int32_t) (b[0] ^ p->flip) - p->b_zero_point : 0));
  for (; n >= 16; n -= 16, a += 16, b += 16 * b_inc, y += 16) {
    int16x8_t da_lo, da_hi, db_lo = vb_const, db_hi = vb_const;
    edge_q8_neon_load16(a, out.flip, va_zp, &da_lo, &da_hi);
    if (b_inc != 0) edge_q8_neon_load16(b, out.flip, vb_zp, &db_lo, &db_hi);
    /* |da * db| <= 65025 and multiplier <= 2^15: no int32 overflow. */
    const int32x4_t acc0 = vmulq_s32(vmull_s16(vget_low_s16(da_lo), vget_low_s16(db_lo)), vmult);
    const int32x4_t acc1 = vmulq_s32(vmull_high_s16(da_lo, db_lo), vmult);
    const int32x4_t acc2 = vmulq_s32(vmull_s16(vget_low_s16(da_hi), vget_low_s16(db_hi)), vmult);
    const int32x4_t acc3 = vmulq_s32(vmull_high_s16(da_hi, db_hi), vmult);
    edge_q8_neon_store16(y, acc0, acc1, acc2, acc3, &out);
  }
  if (n != 0) edge_q8_vbinary_tail(edge_q8_vmul_rndnu_ukernel__neon, n, a, b, b_inc, y, p);
}
