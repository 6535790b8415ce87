/* INT8 GEMM, dense (q8-gemm) and 2:4-sparse (q8-gemm24).
 *
 *   acc[m][n] = bias[n] + sum_k (A[m][k] - a_zero_point) * W[n][k]     (int32, wraps mod 2^32)
 *   C[m][n]   = requantize(acc[m][n]) with per-channel multiplier/shift  (u8 or s8 output)
 *            or acc[m][n] itself                                         (s32 output)
 *
 * A is u8 or s8 (row-major, a_stride elements between rows); W is int8,
 * symmetric per output channel, [N][K] row-major before packing. Weights are
 * packed once into a 64-byte aligned buffer that records its layout; the
 * packed form is the same for every ISA, so one packed buffer runs on all.
 * K <= 65536 keeps every partial sum inside int32.
 */
#ifndef EDGE_GEMM_H
#define EDGE_GEMM_H

#include "edge/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Per-output-channel requantization to u8/s8 (see edge/common.h for the formula).
 * output_min/output_max clamp in the output domain: they fuse ReLU and ReLU6. */
typedef struct edge_q8_requant {
  const int32_t* multiplier; /* [N], each in [2^30, 2^31) */
  const int32_t* shift;      /* [N], each in [31, 62] */
  int32_t output_zero_point;
  int32_t output_min;
  int32_t output_max;
} edge_q8_requant;

/* ---- dense ---- */
size_t edge_q8_gemm_packed_size(int32_t n, int32_t k);
/* weights: [n][k] row-major int8 in [-127, 127]; bias: [n] int32 or NULL. */
edge_status edge_q8_gemm_pack(int32_t n, int32_t k, const int8_t* weights, const int32_t* bias,
                              void* packed, size_t packed_size);
/* The same with weight_bits 8 ([-127, 127]) or 7: weights in [-63, 63], any
 * other value refused (EDGE_ERR_INVALID_ARGUMENT naming the channel). Either
 * way the packed header records whether every weight lies in [-63, 63]; such
 * weights run on AVX2 through vpmaddubsw (exact for them) instead of the
 * widening vpmaddwd kernel, with bit-identical results on every ISA. */
edge_status edge_q8_gemm_pack_bits(int32_t n, int32_t k, const int8_t* weights, const int32_t* bias,
                                   int32_t weight_bits, void* packed, size_t packed_size);
/* 7 when packing found every weight in [-63, 63], else 8; 0 for a buffer
 * that is not dense packed weights. */
int32_t edge_q8_gemm_packed_weight_bits(const void* packed);
edge_status edge_q8_gemm(int32_t m, int32_t n, int32_t k,
                         edge_dtype a_dtype, const void* a, size_t a_stride, int32_t a_zero_point,
                         const void* packed,
                         edge_dtype c_dtype, void* c, size_t c_stride,
                         const edge_q8_requant* requant, edge_threadpool* pool);

/* ---- 2:4 sparse along K: every group of 4 consecutive weights of a channel
 * holds at most 2 non-zeros; packed as the 2 kept values plus 2-bit positions.
 * Packing refuses other weights with EDGE_ERR_NOT_2_4_SPARSE. ---- */
size_t edge_q8_gemm24_packed_size(int32_t n, int32_t k);
edge_status edge_q8_gemm24_pack(int32_t n, int32_t k, const int8_t* weights, const int32_t* bias,
                                void* packed, size_t packed_size);
edge_status edge_q8_gemm24(int32_t m, int32_t n, int32_t k,
                           edge_dtype a_dtype, const void* a, size_t a_stride, int32_t a_zero_point,
                           const void* packed,
                           edge_dtype c_dtype, void* c, size_t c_stride,
                           const edge_q8_requant* requant, edge_threadpool* pool);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_GEMM_H */
