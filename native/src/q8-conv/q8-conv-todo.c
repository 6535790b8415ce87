/* TEMPORARY scaffolding: replaced by the real kernels, then deleted. */
#include "internal.h"

edge_status edge_conv2d_output_size(const edge_conv2d_params* p, int32_t* out_h, int32_t* out_w) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_conv2d_output_size: not implemented yet"); }
size_t edge_q8_conv2d_packed_size(const edge_conv2d_params* p) { return 0; }
edge_status edge_q8_conv2d_pack(const edge_conv2d_params* p, const int8_t* weights, const int32_t* bias,
                                void* packed, size_t packed_size) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_conv2d_pack: not implemented yet"); }
size_t edge_q8_conv2d_workspace_size(const edge_conv2d_params* p, int32_t num_threads) { return 0; }
edge_status edge_q8_conv2d(const edge_conv2d_params* p,
                           edge_dtype x_dtype, const void* x, int32_t x_zero_point,
                           const void* packed,
                           edge_dtype y_dtype, void* y, const edge_q8_requant* requant,
                           void* workspace, size_t workspace_size, edge_threadpool* pool) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_conv2d: not implemented yet"); }
size_t edge_q8_dwconv2d_packed_size(const edge_conv2d_params* p) { return 0; }
edge_status edge_q8_dwconv2d_pack(const edge_conv2d_params* p, const int8_t* weights, const int32_t* bias,
                                  void* packed, size_t packed_size) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_dwconv2d_pack: not implemented yet"); }
edge_status edge_q8_dwconv2d(const edge_conv2d_params* p,
                             edge_dtype x_dtype, const void* x, int32_t x_zero_point,
                             const void* packed,
                             edge_dtype y_dtype, void* y, const edge_q8_requant* requant,
                             edge_threadpool* pool) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_dwconv2d: not implemented yet"); }
