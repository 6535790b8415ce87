/* Layer norm of one row, scalar: two passes (mean, then variance) with double sums. */
#include <math.h>

#include "f32-ops/f32-ops.h"

void edge_f32_layernorm_ukernel__scalar(size_t n, const float* x, const float* gamma, const float* beta,
                                        float epsilon, float* y) {
  double sum = 0.0;
  for (size_t i = 0; i < n; i++) sum += x[i];
  const float mean = (float) (sum / (double) n);
  double sq = 0.0;
  for (size_t i = 0; i < n; i++) {
    const double d = (double) x[i] - mean;
    sq += d * d;
  }
  const float rstd = (float) (1.0 / sqrt(sq / (double) n + (double) epsilon));
  for (size_t i = 0; i < n; i++) {
    float v = (x[i] - mean) * rstd;
    if (gamma != NULL) v *= gamma[i];
    if (beta != NULL) v += beta[i];
    y[i] = v;
  }
}
