/* mul with rescale, scalar. */
#include "q8-ops/q8-ops.h"

void edge_q8_vmul_rndnu_ukernel__scalar(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc,
                                        uint8_t* y, const edge_q8_vbinary_params* p) {
  for (size_t i = 0; i < n; i++) {
    const int32_t da = (int32_t) (a[i] ^ p->flip) - p->a_zero_point;
    const int32_t db = (int32_t) (b[i * b_inc] ^ p->flip) - p->b_zero_point;
    /* |da * db| <= 65025 and the multiplier <= 2^15: the product stays inside int32. */
    int32_t v = edge_q8_rounding_shift(da * db * p->a_multiplier, p->shift) + p->y_zero_point;
    v = v < p->y_min ? p->y_min : v;
    v = v > p->y_max ? p->y_max : v;
    y[i] = (uint8_t) v ^ p->flip;
  }
}
