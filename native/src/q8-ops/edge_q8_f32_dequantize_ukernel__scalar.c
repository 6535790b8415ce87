/* ONNX DequantizeLinear, scalar: one float rounding, (q - zp) * scale. */
#include "q8-ops/q8-ops.h"

void edge_q8_f32_dequantize_ukernel__scalar(size_t n, const uint8_t* x, uint8_t flip, int32_t zero_point,
                                            float scale, float* y) {
  for (size_t i = 0; i < n; i++) y[i] = (float) ((int32_t) (x[i] ^ flip) - zero_point) * scale;
}
