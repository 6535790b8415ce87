/* Softmax of one row, scalar, with libm expf. */
#include <math.h>

#include "f32-ops/f32-ops.h"

void edge_f32_softmax_ukernel__scalar(size_t n, const float* x, float* y) {
  float max = x[0];
  for (size_t i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
  float sum = 0.0f;
  for (size_t i = 0; i < n; i++) {
    y[i] = expf(x[i] - max);
    sum += y[i];
  }
  const float inv = 1.0f / sum; /* sum >= 1: the max contributes exp(0) */
  for (size_t i = 0; i < n; i++) y[i] *= inv;
}
