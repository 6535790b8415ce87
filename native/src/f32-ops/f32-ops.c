/* Entry points of the f32-ops family: softmax and layer norm over rows. */
#include <math.h>

#include "f32-ops/f32-ops.h"

static edge_status check_rows(const char* op, int32_t rows, int32_t cols, const float* x, const float* y) {
  if (rows < 0 || cols < 0) {
    return edge_fail(EDGE_ERR_SHAPE, "%s: rows %d and cols %d must be >= 0", op, (int) rows, (int) cols);
  }
  if (rows > 0 && cols > 0 && (x == NULL || y == NULL)) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: x and y must not be NULL", op);
  }
  return EDGE_OK;
}

edge_status edge_f32_softmax(int32_t rows, int32_t cols, const float* x, float* y) {
  edge_status status = check_rows("edge_f32_softmax", rows, cols, x, y);
  if (status != EDGE_OK || cols == 0) return status;
  const edge_f32_softmax_ukernel_fn softmax = edge_f32_ops_config_get()->softmax;
  for (int32_t r = 0; r < rows; r++) {
    softmax((size_t) cols, x + (size_t) r * (size_t) cols, y + (size_t) r * (size_t) cols);
  }
  return EDGE_OK;
}

edge_status edge_f32_layernorm(int32_t rows, int32_t cols, const float* x, const float* gamma,
                               const float* beta, float epsilon, float* y) {
  edge_status status = check_rows("edge_f32_layernorm", rows, cols, x, y);
  if (status != EDGE_OK) return status;
  if (!(isfinite(epsilon) && epsilon >= 0.0f)) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_f32_layernorm: epsilon %g must be finite and >= 0",
                     (double) epsilon);
  }
  if (cols == 0) return EDGE_OK;
  const edge_f32_layernorm_ukernel_fn layernorm = edge_f32_ops_config_get()->layernorm;
  for (int32_t r = 0; r < rows; r++) {
    layernorm((size_t) cols, x + (size_t) r * (size_t) cols, gamma, beta, epsilon, y + (size_t) r * (size_t) cols);
  }
  return EDGE_OK;
}
