/* Naive conv2d loops: the definition the conv2d and depthwise kernels are tested against. */
#ifndef EDGE_Q8_CONV_REFERENCE_H
#define EDGE_Q8_CONV_REFERENCE_H

#include "edge_kernels.h"

/* y = requantize(bias + sum (x - x_zero_point) * w) on NHWC x/y with OIHW weights;
 * padding taps contribute 0. y_dtype u8/s8 (requant used) or s32 (raw accumulators).
 * Returns 0, or -1 for parameters edge_conv2d_output_size refuses. */
int edge_ref_q8_conv2d(const edge_conv2d_params* p, edge_dtype x_dtype, const void* x, int32_t x_zero_point,
                       const int8_t* weights, const int32_t* bias, edge_dtype y_dtype, void* y,
                       const edge_q8_requant* requant);

#endif /* EDGE_Q8_CONV_REFERENCE_H */
