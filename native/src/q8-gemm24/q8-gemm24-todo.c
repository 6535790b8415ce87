/* TEMPORARY scaffolding: replaced by the real kernels, then deleted. */
#include "internal.h"

size_t edge_q8_gemm24_packed_size(int32_t n, int32_t k) { return 0; }
edge_status edge_q8_gemm24_pack(int32_t n, int32_t k, const int8_t* weights, const int32_t* bias,
                                void* packed, size_t packed_size) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_gemm24_pack: not implemented yet"); }
edge_status edge_q8_gemm24(int32_t m, int32_t n, int32_t k,
                           edge_dtype a_dtype, const void* a, size_t a_stride, int32_t a_zero_point,
                           const void* packed,
                           edge_dtype c_dtype, void* c, size_t c_stride,
                           const edge_q8_requant* requant, edge_threadpool* pool) { return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_gemm24: not implemented yet"); }
