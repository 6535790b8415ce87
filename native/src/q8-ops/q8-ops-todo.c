/* TEMPORARY scaffolding: replaced by the real kernels, then deleted. */
#include "internal.h"

edge_status edge_q8_add_params_init(double a_scale, int32_t a_zero_point, double b_scale, int32_t b_zero_point,
                                    double y_scale, int32_t y_zero_point, int32_t y_min, int32_t y_max,
                                    edge_q8_add_params* params) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_add_params_init: not implemented yet"); }
edge_status edge_q8_mul_params_init(double a_scale, int32_t a_zero_point, double b_scale, int32_t b_zero_point,
                                    double y_scale, int32_t y_zero_point, int32_t y_min, int32_t y_max,
                                    edge_q8_mul_params* params) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_mul_params_init: not implemented yet"); }
edge_status edge_q8_add(int32_t rows, int32_t cols, edge_dtype dtype,
                        const void* a, size_t a_row_stride, size_t a_col_stride,
                        const void* b, size_t b_row_stride, size_t b_col_stride,
                        void* y, const edge_q8_add_params* params) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_add: not implemented yet"); }
edge_status edge_q8_mul(int32_t rows, int32_t cols, edge_dtype dtype,
                        const void* a, size_t a_row_stride, size_t a_col_stride,
                        const void* b, size_t b_row_stride, size_t b_col_stride,
                        void* y, const edge_q8_mul_params* params) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_mul: not implemented yet"); }
edge_status edge_pool2d_output_size(const edge_pool2d_params* p, int32_t* out_h, int32_t* out_w) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_pool2d_output_size: not implemented yet"); }
edge_status edge_q8_maxpool2d(const edge_pool2d_params* p, edge_dtype dtype, const void* x, void* y) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_maxpool2d: not implemented yet"); }
edge_status edge_q8_avgpool2d(const edge_pool2d_params* p, edge_dtype dtype,
                              const void* x, double x_scale, int32_t x_zero_point,
                              void* y, double y_scale, int32_t y_zero_point, int32_t y_min, int32_t y_max) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_avgpool2d: not implemented yet"); }
edge_status edge_q8_global_avgpool(int32_t batch, int32_t hw, int32_t channels, edge_dtype dtype,
                                   const void* x, double x_scale, int32_t x_zero_point,
                                   void* y, double y_scale, int32_t y_zero_point, int32_t y_min, int32_t y_max) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_global_avgpool: not implemented yet"); }
edge_status edge_q8_lut_init(edge_lut_kind kind, double alpha, double beta, edge_dtype dtype,
                             double x_scale, int32_t x_zero_point, double y_scale, int32_t y_zero_point,
                             uint8_t* table) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_lut_init: not implemented yet"); }
edge_status edge_q8_lut(size_t n, const uint8_t* table, const void* x, void* y) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_lut: not implemented yet"); }
edge_status edge_f32_q8_quantize(size_t n, const float* x, float scale, int32_t zero_point,
                                 edge_dtype dtype, void* y) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_f32_q8_quantize: not implemented yet"); }
edge_status edge_q8_f32_dequantize(size_t n, edge_dtype dtype, const void* x, float scale,
                                   int32_t zero_point, float* y) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_f32_dequantize: not implemented yet"); }
edge_status edge_f32_softmax(int32_t rows, int32_t cols, const float* x, float* y) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_f32_softmax: not implemented yet"); }
edge_status edge_f32_layernorm(int32_t rows, int32_t cols, const float* x, const float* gamma,
                               const float* beta, float epsilon, float* y) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_f32_layernorm: not implemented yet"); }
