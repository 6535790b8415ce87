/* Layer norm of one row, NEON: two passes with 4-lane float sums. */
#include <arm_neon.h>
#include <math.h>

#include "f32-ops/f32-ops.h"

void edge_f32_layernorm_ukernel__neon(size_t n, const float* x, const float* gamma, const float* beta,
                                      float epsilon, float* y) {
  size_t i;
  float32x4_t vsum = vdupq_n_f32(0.0f);
  for (i = 0; i + 4 <= n; i += 4) vsum = vaddq_f32(vsum, vld1q_f32(x + i));
  float sum = vaddvq_f32(vsum);
  for (; i < n; i++) sum += x[i];
  const float mean = sum / (float) n;

  const float32x4_t vmean = vdupq_n_f32(mean);
  float32x4_t vsq = vdupq_n_f32(0.0f);
  for (i = 0; i + 4 <= n; i += 4) {
    const float32x4_t d = vsubq_f32(vld1q_f32(x + i), vmean);
    vsq = vfmaq_f32(vsq, d, d);
  }
  float sq = vaddvq_f32(vsq);
  for (; i < n; i++) sq += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.0f / sqrtf(sq / (float) n + epsilon);

  const float32x4_t vone = vdupq_n_f32(1.0f), vzero = vdupq_n_f32(0.0f);
  for (i = 0; i + 4 <= n; i += 4) {
    const float32x4_t g = gamma != NULL ? vld1q_f32(gamma + i) : vone;
    const float32x4_t b = beta != NULL ? vld1q_f32(beta + i) : vzero;
    const float32x4_t v = vmulq_n_f32(vsubq_f32(vld1q_f32(x + i), vmean), rstd);
    vst1q_f32(y + i, vfmaq_f32(b, v, g));
  }
  for (; i < n; i++) {
    float v = (x[i] - mean) * rstd;
    if (gamma != NULL) v *= gamma[i];
    if (beta != NULL) v += beta[i];
    y[i] = v;
  }
}
