/* INT8 convolution on NHWC tensors.
 *
 * edge_q8_conv2d: any conv2d (groups, stride, padding, dilation) by im2col
 * into a caller-provided workspace and the dense GEMM.
 * edge_q8_conv2d24: the same with 2:4-sparse weights, on the 2:4-sparse GEMM.
 * edge_q8_dwconv2d: direct depthwise kernel for 3x3 and 5x5, stride 1 and 2,
 * dilation 1, channel multiplier 1.
 *
 * Weights are given in ONNX layout, OIHW: [out_c][in_c / groups][kernel_h][kernel_w].
 * Padding contributes the input zero point (i.e. a real zero).
 * Requantization per output channel, as for the GEMM (edge/gemm.h).
 */
#ifndef EDGE_CONV_H
#define EDGE_CONV_H

#include "edge/common.h"
#include "edge/gemm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct edge_conv2d_params {
  int32_t batch, in_h, in_w, in_c;
  int32_t out_c, kernel_h, kernel_w;
  int32_t stride_h, stride_w;
  int32_t dilation_h, dilation_w;
  int32_t pad_top, pad_left, pad_bottom, pad_right;
  int32_t groups;
} edge_conv2d_params;

/* Checks the parameters and gives the output height and width. */
edge_status edge_conv2d_output_size(const edge_conv2d_params* p, int32_t* out_h, int32_t* out_w);

size_t edge_q8_conv2d_packed_size(const edge_conv2d_params* p);
edge_status edge_q8_conv2d_pack(const edge_conv2d_params* p, const int8_t* weights, const int32_t* bias,
                                void* packed, size_t packed_size);
size_t edge_q8_conv2d_workspace_size(const edge_conv2d_params* p, int32_t num_threads);
edge_status edge_q8_conv2d(const edge_conv2d_params* p,
                           edge_dtype x_dtype, const void* x, int32_t x_zero_point,
                           const void* packed,
                           edge_dtype y_dtype, void* y, const edge_q8_requant* requant,
                           void* workspace, size_t workspace_size, edge_threadpool* pool);

/* ---- 2:4 sparse: the same contract as edge_q8_conv2d (same parameters, same
 * im2col and workspace: edge_q8_conv2d_workspace_size serves both), with weights
 * 2:4 along the GEMM's reduction order of one group, (kernel_h, kernel_w, in_c / groups):
 * each output channel's weights, read in that order (OIHW transposed to OHWI), hold at
 * most 2 non-zeros in every 4 consecutive values (and in the shorter tail). Packing refuses other weights with EDGE_ERR_NOT_2_4_SPARSE, naming the
 * output channel and group. The packed forms of conv2d and conv2d24 are distinct:
 * each refuses the other's (EDGE_ERR_PACKED_FORMAT). ---- */
size_t edge_q8_conv2d24_packed_size(const edge_conv2d_params* p);
edge_status edge_q8_conv2d24_pack(const edge_conv2d_params* p, const int8_t* weights, const int32_t* bias,
                                  void* packed, size_t packed_size);
edge_status edge_q8_conv2d24(const edge_conv2d_params* p,
                             edge_dtype x_dtype, const void* x, int32_t x_zero_point,
                             const void* packed,
                             edge_dtype y_dtype, void* y, const edge_q8_requant* requant,
                             void* workspace, size_t workspace_size, edge_threadpool* pool);

size_t edge_q8_dwconv2d_packed_size(const edge_conv2d_params* p);
edge_status edge_q8_dwconv2d_pack(const edge_conv2d_params* p, const int8_t* weights, const int32_t* bias,
                                  void* packed, size_t packed_size);
edge_status edge_q8_dwconv2d(const edge_conv2d_params* p,
                             edge_dtype x_dtype, const void* x, int32_t x_zero_point,
                             const void* packed,
                             edge_dtype y_dtype, void* y, const edge_q8_requant* requant,
                             edge_threadpool* pool);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_CONV_H */
