/* ONNX QuantizeLinear, NEON: 16 floats per step, true division (vdivq),
 * round half to even (vrndnq). */
#include <arm_neon.h>
#include <string.h>

#include "q8-ops/q8-ops.h"

static inline int32x4_t quantize4(float32x4_t vx, float32x4_t vscale, float32x4_t vlo, float32x4_t vhi,
                                  int32x4_t vzp) {
  float32x4_t v = vrndnq_f32(vdivq_f32(vx, vscale));
  v = vbslq_f32(vceqq_f32(v, v), v, vdupq_n_f32(0.0f)); /* NaN -> 0, i.e. the zero point */
  v = vminq_f32(vmaxq_f32(v, vlo), vhi);
  return vaddq_s32(vcvtq_s32_f32(v), vzp);
}

void edge_f32_q8_quantize_ukernel__neon(size_t n, const float* x, const edge_q8_quantize_params* p, uint8_t* y) {
  const float32x4_t vscale = vdupq_n_f32(p->scale), vlo = vdupq_n_f32(p->lo), vhi = vdupq_n_f32(p->hi);
  const int32x4_t vzp = vdupq_n_s32(p->zero_point);
  const uint8x16_t vflip = vdupq_n_u8(p->flip);
  float x_tail[16];
  uint8_t y_tail[16];
  while (n != 0) {
    const size_t chunk = n < 16 ? n : 16;
    const float* px = x;
    if (chunk < 16) {
      memset(x_tail, 0, sizeof(x_tail));
      memcpy(x_tail, x, chunk * sizeof(float));
      px = x_tail;
    }
    const int32x4_t q0 = quantize4(vld1q_f32(px), vscale, vlo, vhi, vzp);
    const int32x4_t q1 = quantize4(vld1q_f32(px + 4), vscale, vlo, vhi, vzp);
    const int32x4_t q2 = quantize4(vld1q_f32(px + 8), vscale, vlo, vhi, vzp);
    const int32x4_t q3 = quantize4(vld1q_f32(px + 12), vscale, vlo, vhi, vzp);
    const int16x8_t s_lo = vcombine_s16(vqmovn_s32(q0), vqmovn_s32(q1));
    const int16x8_t s_hi = vcombine_s16(vqmovn_s32(q2), vqmovn_s32(q3));
    const uint8x16_t out = veorq_u8(vcombine_u8(vqmovun_s16(s_lo), vqmovun_s16(s_hi)), vflip);
    if (chunk < 16) {
      vst1q_u8(y_tail, out);
      memcpy(y, y_tail, chunk);
    } else {
      vst1q_u8(y, out);
    }
    x += chunk;
    y += chunk;
    n -= chunk;
  }
}
