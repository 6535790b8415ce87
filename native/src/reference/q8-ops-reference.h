/* Naive loops defining the q8-ops and f32-ops semantics, for the C tests only. */
#ifndef EDGE_Q8_OPS_REFERENCE_H
#define EDGE_Q8_OPS_REFERENCE_H

#include "edge_kernels.h"

/* The formulas of edge/ops.h in int64, element by element. */
void edge_ref_q8_add(int32_t rows, int32_t cols, edge_dtype dtype, const void* a, size_t a_row_stride,
                     size_t a_col_stride, const void* b, size_t b_row_stride, size_t b_col_stride, void* y,
                     const edge_q8_add_params* p);
void edge_ref_q8_mul(int32_t rows, int32_t cols, edge_dtype dtype, const void* a, size_t a_row_stride,
                     size_t a_col_stride, const void* b, size_t b_row_stride, size_t b_col_stride, void* y,
                     const edge_q8_mul_params* p);
/* Pools: y must hold batch x out_h x out_w x channels. Return EDGE_OK or the
 * status the library must give (a refused scale ratio). */
void edge_ref_q8_maxpool2d(const edge_pool2d_params* p, int32_t out_h, int32_t out_w, edge_dtype dtype,
                           const void* x, void* y);
edge_status edge_ref_q8_avgpool2d(const edge_pool2d_params* p, int32_t out_h, int32_t out_w, edge_dtype dtype,
                                  const void* x, double x_scale, int32_t x_zero_point, void* y, double y_scale,
                                  int32_t y_zero_point, int32_t y_min, int32_t y_max);
void edge_ref_q8_lut_table(edge_lut_kind kind, double alpha, double beta, edge_dtype dtype, double x_scale,
                           int32_t x_zero_point, double y_scale, int32_t y_zero_point, uint8_t* table);
void edge_ref_f32_q8_quantize(size_t n, const float* x, float scale, int32_t zero_point, edge_dtype dtype, void* y);
void edge_ref_q8_f32_dequantize(size_t n, edge_dtype dtype, const void* x, float scale, int32_t zero_point,
                                float* y);
/* Float ops in double precision. */
void edge_ref_f32_softmax(int32_t rows, int32_t cols, const float* x, double* y);
void edge_ref_f32_layernorm(int32_t rows, int32_t cols, const float* x, const float* gamma, const float* beta,
                            float epsilon, double* y);

#endif /* EDGE_Q8_OPS_REFERENCE_H */
