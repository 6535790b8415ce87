/* Naive dense INT8 GEMM: the definition the kernels are tested against. */
#ifndef EDGE_Q8_GEMM_REFERENCE_H
#define EDGE_Q8_GEMM_REFERENCE_H

#include "edge_kernels.h"

/* weights: [n][k] row-major (unpacked); bias: [n] or NULL; strides in elements.
 * Same semantics as edge_q8_gemm, arguments assumed valid. */
void edge_q8_gemm_reference(int32_t m, int32_t n, int32_t k, edge_dtype a_dtype, const void* a, size_t a_stride,
                            int32_t a_zero_point, const int8_t* weights, const int32_t* bias, edge_dtype c_dtype,
                            void* c, size_t c_stride, const edge_q8_requant* requant);

#endif /* EDGE_Q8_GEMM_REFERENCE_H */
