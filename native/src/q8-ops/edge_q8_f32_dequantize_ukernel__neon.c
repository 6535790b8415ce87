/* ONNX DequantizeLinear, NEON: 8 bytes per step, one rounding (vmulq, no FMA). */
#include <arm_neon.h>

#include "q8-ops/q8-ops.h"

void edge_q8_f32_dequantize_ukernel__neon(size_t n, const uint8_t* x, uint8_t flip, int32_t zero_point,
                                          float scale, float* y) {
  const uint8x8_t vflip = vdup_n_u8(flip);
  const int32x4_t vzp = vdupq_n_s32(zero_point);
  const float32x4_t vscale = vdupq_n_f32(scale);
  for (; n >= 8; n -= 8, x += 8, y += 8) {
    const int16x8_t q = vreinterpretq_s16_u16(vmovl_u8(veor_u8(vld1_u8(x), vflip)));
    const int32x4_t lo = vsubq_s32(vmovl_s16(vget_low_s16(q)), vzp), hi = vsubq_s32(vmovl_high_s16(q), vzp);
    vst1q_f32(y, vmulq_f32(vcvtq_f32_s32(lo), vscale));
    vst1q_f32(y + 4, vmulq_f32(vcvtq_f32_s32(hi), vscale));
  }
  for (size_t i = 0; i < n; i++) y[i] = (float) ((int32_t) (x[i] ^ flip) - zero_point) * scale;
}
