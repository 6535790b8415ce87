/* Naive reference of the 2:4-sparse INT8 GEMM, for the C tests only.
 * Computes from the dense (pruned) weights, so it shares nothing with the
 * packed layout or the micro-kernels it checks. */
#ifndef EDGE_Q8_GEMM24_REFERENCE_H
#define EDGE_Q8_GEMM24_REFERENCE_H

#include "edge_kernels.h"

/* C = requantize(bias + sum_k (A - a_zero_point) * W) per edge/gemm.h; W is
 * [n][k] dense int8. requant is ignored for s32 output. */
void edge_q8_gemm24_reference(int32_t m, int32_t n, int32_t k, edge_dtype a_dtype, const void* a, size_t a_stride,
                              int32_t a_zero_point, const int8_t* weights, const int32_t* bias, edge_dtype c_dtype,
                              void* c, size_t c_stride, const edge_q8_requant* requant);

/* 1 when every group of 4 consecutive weights of every channel has at most 2 non-zeros. */
int edge_q8_gemm24_reference_is_2_4(int32_t n, int32_t k, const int8_t* weights);

#endif /* EDGE_Q8_GEMM24_REFERENCE_H */
