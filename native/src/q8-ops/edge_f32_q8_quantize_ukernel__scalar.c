/* ONNX QuantizeLinear, scalar: round half to even of a true float32 division. */
#include <math.h>

#include "q8-ops/q8-ops.h"

void edge_f32_q8_quantize_ukernel__scalar(size_t n, const float* x, const edge_q8_quantize_params* p,
                                          uint8_t* y) {
  for (size_t i = 0; i < n; i++) {
    float v = nearbyintf(x[i] / p->scale); /* the default rounding mode: half to even */
    if (v != v) v = 0.0f;                  /* NaN -> the zero point */
    v = v < p->lo ? p->lo : v;             /* clamp in float: inf and huge values never reach int */
    v = v > p->hi ? p->hi : v;
    y[i] = (uint8_t) ((int32_t) v + p->zero_point) ^ p->flip;
  }
}
