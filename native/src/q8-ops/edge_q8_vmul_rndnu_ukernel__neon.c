/* mul with rescale, NEON: 16 bytes per step, vmull_s16 for the products. */
#include <arm_neon.h>
#include <string.h>

#include "q8-ops/q8-ops.h"

void edge_q8_vmul_rndnu_ukernel__neon(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc,
                                      uint8_t* y, const edge_q8_vbinary_params* p) {
  const uint8x16_t vflip = vdupq_n_u8(p->flip);
  const int16x8_t va_zp = vdupq_n_s16((int16_t) p->a_zero_point), vb_zp = vdupq_n_s16((int16_t) p->b_zero_point);
  const int32x4_t vmult = vdupq_n_s32(p->a_multiplier);
  const int32x4_t vshift = vdupq_n_s32(-p->shift), vy_zp = vdupq_n_s32(p->y_zero_point);
  const uint8x16_t vy_min = vdupq_n_u8((uint8_t) p->y_min), vy_max = vdupq_n_u8((uint8_t) p->y_max);
  const int16x8_t vb_const = vdupq_n_s16((int16_t) (b_inc == 0 ? (int32_t) (b[0] ^ p->flip) - p->b_zero_point : 0));
  uint8_t a_tail[16], b_tail[16], y_tail[16];
  while (n != 0) {
    const size_t chunk = n < 16 ? n : 16;
    const uint8_t* pa = a;
    const uint8_t* pb = b;
    uint8_t* py = y;
    if (chunk < 16) {
      memset(a_tail, 0, sizeof(a_tail));
      memset(b_tail, 0, sizeof(b_tail));
      memcpy(a_tail, a, chunk);
      if (b_inc != 0) memcpy(b_tail, b, chunk);
      pa = a_tail;
      pb = b_tail;
      py = y_tail;
    }
    const uint8x16_t xa = veorq_u8(vld1q_u8(pa), vflip);
    const int16x8_t da_lo = vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(xa))), va_zp);
    const int16x8_t da_hi = vsubq_s16(vreinterpretq_s16_u16(vmovl_high_u8(xa)), va_zp);
    int16x8_t db_lo = vb_const, db_hi = vb_const;
    if (b_inc != 0) {
      const uint8x16_t xb = veorq_u8(vld1q_u8(pb), vflip);
      db_lo = vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(xb))), vb_zp);
      db_hi = vsubq_s16(vreinterpretq_s16_u16(vmovl_high_u8(xb)), vb_zp);
    }
    /* |da * db| <= 65025 and multiplier <= 2^15: no int32 overflow. */
    int32x4_t acc0 = vmulq_s32(vmull_s16(vget_low_s16(da_lo), vget_low_s16(db_lo)), vmult);
    int32x4_t acc1 = vmulq_s32(vmull_high_s16(da_lo, db_lo), vmult);
    int32x4_t acc2 = vmulq_s32(vmull_s16(vget_low_s16(da_hi), vget_low_s16(db_hi)), vmult);
    int32x4_t acc3 = vmulq_s32(vmull_high_s16(da_hi, db_hi), vmult);
    acc0 = vaddq_s32(vrshlq_s32(acc0, vshift), vy_zp);
    acc1 = vaddq_s32(vrshlq_s32(acc1, vshift), vy_zp);
    acc2 = vaddq_s32(vrshlq_s32(acc2, vshift), vy_zp);
    acc3 = vaddq_s32(vrshlq_s32(acc3, vshift), vy_zp);
    const int16x8_t s_lo = vcombine_s16(vqmovn_s32(acc0), vqmovn_s32(acc1));
    const int16x8_t s_hi = vcombine_s16(vqmovn_s32(acc2), vqmovn_s32(acc3));
    uint8x16_t out = vcombine_u8(vqmovun_s16(s_lo), vqmovun_s16(s_hi));
    out = vminq_u8(vmaxq_u8(out, vy_min), vy_max);
    vst1q_u8(py, veorq_u8(out, vflip));
    if (chunk < 16) memcpy(y, y_tail, chunk);
    a += chunk;
    b += chunk * b_inc;
    y += chunk;
    n -= chunk;
  }
}
