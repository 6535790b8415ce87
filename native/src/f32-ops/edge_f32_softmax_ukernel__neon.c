/* Softmax of one row, NEON: vector max, polynomial exp (see f32-ops.h) with
 * the sum in 4 lanes, then one scale. The tail (< 4) uses libm expf. */
#include <arm_neon.h>
#include <math.h>

#include "f32-ops/f32-ops.h"

static inline float32x4_t exp_nonpositive(float32x4_t x) {
  x = vmaxq_f32(x, vdupq_n_f32(EDGE_EXP_MIN_INPUT));
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(EDGE_EXP_LOG2E)));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(EDGE_EXP_LN2_HI));
  r = vfmsq_f32(r, n, vdupq_n_f32(EDGE_EXP_LN2_LO));
  float32x4_t poly = vdupq_n_f32(EDGE_EXP_P0);
  poly = vfmaq_f32(vdupq_n_f32(EDGE_EXP_P1), poly, r);
  poly = vfmaq_f32(vdupq_n_f32(EDGE_EXP_P2), poly, r);
  poly = vfmaq_f32(vdupq_n_f32(EDGE_EXP_P3), poly, r);
  poly = vfmaq_f32(vdupq_n_f32(EDGE_EXP_P4), poly, r);
  poly = vfmaq_f32(vdupq_n_f32(EDGE_EXP_P5), poly, r);
  const float32x4_t e = vaddq_f32(vfmaq_f32(r, poly, vmulq_f32(r, r)), vdupq_n_f32(1.0f));
  /* 2^n for n in [-126, 0]: a normal float built from its exponent bits. */
  const int32x4_t bits = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  return vmulq_f32(e, vreinterpretq_f32_s32(bits));
}

void edge_f32_softmax_ukernel__neon(size_t n, const float* x, float* y) {
  size_t i = 0;
  float32x4_t vmax = vdupq_n_f32(x[0]);
  for (; i + 4 <= n; i += 4) vmax = vmaxq_f32(vmax, vld1q_f32(x + i));
  float max = vmaxvq_f32(vmax);
  for (; i < n; i++) max = x[i] > max ? x[i] : max;

  const float32x4_t vm = vdupq_n_f32(max);
  float32x4_t vsum = vdupq_n_f32(0.0f);
  for (i = 0; i + 4 <= n; i += 4) {
    const float32x4_t e = exp_nonpositive(vsubq_f32(vld1q_f32(x + i), vm));
    vst1q_f32(y + i, e);
    vsum = vaddq_f32(vsum, e);
  }
  float sum = vaddvq_f32(vsum);
  for (; i < n; i++) {
    y[i] = expf(x[i] - max);
    sum += y[i];
  }

  const float inv = 1.0f / sum;
  for (i = 0; i + 4 <= n; i += 4) vst1q_f32(y + i, vmulq_n_f32(vld1q_f32(y + i), inv));
  for (; i < n; i++) y[i] *= inv;
}
