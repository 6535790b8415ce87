/* The INT8 and float ops a MobileNet or a BERT needs between GEMMs.
 *
 * Quantized tensors are u8 or s8 (one dtype per call) with a real value of
 * scale * (q - zero_point). Integer ops requantize with the 64-bit rounding
 * rule of edge/common.h, so every ISA gives the same bits. Float ops
 * (softmax, layer norm) work on dequantized rows and match within the
 * tolerances stated in the tests.
 *
 * Every op takes the thread pool (NULL: the calling thread) and splits its
 * work over it: element-wise ops in chunks, pools by output rows (the global
 * pool by sample and channel block), never below 16384 elements (times the
 * window for pools) per task, so small tensors stay on the calling thread.
 */
#ifndef EDGE_OPS_H
#define EDGE_OPS_H

#include "edge/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- binary add / mul with rescale --------------------------------------
 * y[r][i] = op(a[r * a_row_stride + i * a_col_stride], b[...]) for r < rows,
 * i < cols. A stride of 0 broadcasts (a row, or a scalar when both are 0).
 * add: y = clamp(((a - za) * a_mult + (b - zb) * b_mult + 2^(shift-1)) >> shift, lo, hi) + zy
 * mul: y = clamp(((a - za) * (b - zb) * mult + 2^(shift-1)) >> shift, lo, hi) + zy
 * where lo = y_min - zy, hi = y_max - zy, and >> floors (it is computed as
 * ((x >> (shift-1)) + 1) >> 1, the same integer, so nothing overflows int32).
 * The *_params_init functions derive the integer parameters from real scales:
 *   add: r = max(a_scale, b_scale) / y_scale must be < 2^21 (refused otherwise);
 *        the larger multiplier is round(r * 2^shift) in [2^21, 2^22], shift in
 *        [1, 31]; for r < 2^-10 every output is zy (multipliers 0, shift 1).
 *        |a - za|, |b - zb| <= 255, so |sum| <= 510 * 2^22 < 2^31.
 *   mul: r = a_scale * b_scale / y_scale must be < 2^14; multiplier
 *        round(r * 2^shift) in [2^14, 2^15], shift in [1, 31] (about 15
 *        significant bits, < 0.01 step of error on an 8-bit output); for
 *        r < 2^-17 every output is zy. |(a - za) * (b - zb)| * 2^15 < 2^31.
 * edge_q8_add/mul refuse parameters outside these ranges. */
typedef struct edge_q8_add_params {
  int32_t a_zero_point, b_zero_point, y_zero_point;
  int32_t a_multiplier, b_multiplier, shift;
  int32_t y_min, y_max;
} edge_q8_add_params;

typedef struct edge_q8_mul_params {
  int32_t a_zero_point, b_zero_point, y_zero_point;
  int32_t multiplier, shift;
  int32_t y_min, y_max;
} edge_q8_mul_params;

edge_status edge_q8_add_params_init(double a_scale, int32_t a_zero_point, double b_scale, int32_t b_zero_point,
                                    double y_scale, int32_t y_zero_point, int32_t y_min, int32_t y_max,
                                    edge_q8_add_params* params);
edge_status edge_q8_mul_params_init(double a_scale, int32_t a_zero_point, double b_scale, int32_t b_zero_point,
                                    double y_scale, int32_t y_zero_point, int32_t y_min, int32_t y_max,
                                    edge_q8_mul_params* params);
edge_status edge_q8_add(int32_t rows, int32_t cols, edge_dtype dtype,
                        const void* a, size_t a_row_stride, size_t a_col_stride,
                        const void* b, size_t b_row_stride, size_t b_col_stride,
                        void* y, const edge_q8_add_params* params, edge_threadpool* pool);
edge_status edge_q8_mul(int32_t rows, int32_t cols, edge_dtype dtype,
                        const void* a, size_t a_row_stride, size_t a_col_stride,
                        const void* b, size_t b_row_stride, size_t b_col_stride,
                        void* y, const edge_q8_mul_params* params, edge_threadpool* pool);

/* ---- pooling on NHWC ------------------------------------------------------ */
typedef struct edge_pool2d_params {
  int32_t batch, in_h, in_w, channels;
  int32_t kernel_h, kernel_w;
  int32_t stride_h, stride_w;
  int32_t dilation_h, dilation_w;
  int32_t pad_top, pad_left, pad_bottom, pad_right;
  int32_t count_include_pad; /* average pool: divide by the full window (1) or the valid part (0) */
} edge_pool2d_params;

edge_status edge_pool2d_output_size(const edge_pool2d_params* p, int32_t* out_h, int32_t* out_w);
/* Max pool: padding never wins. Output has the input's quantization. */
edge_status edge_q8_maxpool2d(const edge_pool2d_params* p, edge_dtype dtype, const void* x, void* y,
                              edge_threadpool* pool);
/* Average pool with rescale from (x_scale, x_zero_point) to (y_scale, y_zero_point):
 *   acc = sum over the valid taps of (x - x_zero_point)              (int32)
 *   d   = kernel_h * kernel_w (count_include_pad) or the valid taps
 *   s   = x_scale / (y_scale * d); if s >= 1, p = frexp exponent of s and
 *         s /= 2^p (else p = 0); (multiplier, shift) = edge_requant_from_scale(s)
 *   y   = edge/common.h requantization of acc * 2^p
 * Refused: s < 2^-32, or d * 255 * 2^p over INT32_MAX; windows of more than
 * 2^23 taps; pads >= the dilated window; a window over padding only.
 * Params: batch, in_h, in_w, channels >= 1; kernel, stride, dilation >= 1;
 * output size = (in + pads - dilation * (kernel - 1) - 1) / stride + 1 (floor). */
edge_status edge_q8_avgpool2d(const edge_pool2d_params* p, edge_dtype dtype,
                              const void* x, double x_scale, int32_t x_zero_point,
                              void* y, double y_scale, int32_t y_zero_point, int32_t y_min, int32_t y_max,
                              edge_threadpool* pool);
/* Global average pool: x [batch][hw][channels] -> y [batch][channels], the
 * average pool rule with d = hw (hw <= 2^23). */
edge_status edge_q8_global_avgpool(int32_t batch, int32_t hw, int32_t channels, edge_dtype dtype,
                                   const void* x, double x_scale, int32_t x_zero_point,
                                   void* y, double y_scale, int32_t y_zero_point, int32_t y_min, int32_t y_max,
                                   edge_threadpool* pool);

/* ---- lookup-table activations --------------------------------------------
 * A table of 256 output bytes indexed by the input byte (s8 inputs index by
 * their two's-complement byte). edge_q8_lut_init builds it in double
 * precision: y = quantize(f(dequantize(x))), rounding half to even. */
typedef enum edge_lut_kind {
  EDGE_LUT_SIGMOID = 0,
  EDGE_LUT_HARDSIGMOID = 1, /* max(0, min(1, alpha * x + beta)) */
  EDGE_LUT_HARDSWISH = 2,   /* x * max(0, min(1, x / 6 + 0.5)) */
  EDGE_LUT_GELU = 3,        /* 0.5 * x * (1 + erf(x / sqrt(2))) */
  EDGE_LUT_TANH = 4
} edge_lut_kind;

edge_status edge_q8_lut_init(edge_lut_kind kind, double alpha, double beta, edge_dtype dtype,
                             double x_scale, int32_t x_zero_point, double y_scale, int32_t y_zero_point,
                             uint8_t* table);
edge_status edge_q8_lut(size_t n, const uint8_t* table, const void* x, void* y, edge_threadpool* pool);

/* Per-channel tables: y[o][c][i] = tables[c * 256 + x[o][c][i]] for o < outer,
 * c < channels, i < inner (contiguous bytes: NHWC pixels or [batch, features] with
 * inner = 1, an NCHW map with inner = H * W); tables holds one 256-entry table per
 * channel, indexed as edge_q8_lut's (a per-channel PRelu, an op with a per-channel
 * constant). */
edge_status edge_q8_lut_channels(size_t outer, size_t channels, size_t inner, const uint8_t* tables, const void* x,
                                 void* y, edge_threadpool* pool);

/* ---- quantize / dequantize ------------------------------------------------
 * quantize: q = clamp(round_half_even(x / scale) + zero_point) (ONNX QuantizeLinear)
 * (float32 division, as numpy and ONNX Runtime; NaN gives zero_point, +-inf clamps)
 * dequantize: x = (q - zero_point) * scale (ONNX DequantizeLinear, one rounding)
 * scale must be finite and > 0, zero_point inside the dtype. */
edge_status edge_f32_q8_quantize(size_t n, const float* x, float scale, int32_t zero_point,
                                 edge_dtype dtype, void* y, edge_threadpool* pool);
edge_status edge_q8_f32_dequantize(size_t n, edge_dtype dtype, const void* x, float scale,
                                   int32_t zero_point, float* y, edge_threadpool* pool);

/* ---- float ops on rows ---------------------------------------------------- */
/* Softmax over each row of [rows][cols], max-subtracted; SIMD paths use a
 * polynomial exp. Within 1e-6 (absolute) of float64 for finite inputs.
 * y may be x (in place): each row is read before its element is written. */
edge_status edge_f32_softmax(int32_t rows, int32_t cols, const float* x, float* y);
/* Layer norm over each row: (x - mean) / sqrt(var + epsilon) * gamma + beta;
 * gamma and beta are [cols] or NULL (1 and 0); epsilon finite and >= 0.
 * Within 1e-5 * max(1, |y|) of float64. */
edge_status edge_f32_layernorm(int32_t rows, int32_t cols, const float* x, const float* gamma,
                               const float* beta, float epsilon, float* y);

/* ---- attention ------------------------------------------------------------ */
/* y = softmax(Q.K^T * scale + mask) . V for every (batch, head), with int8 products:
 * Q [batch][heads][s_q][d], K^T [batch][heads][d][s_k], V [batch][heads][s_k][d] and
 * y [batch][heads][s_q][d], all C-contiguous u8 or s8 codes (dtype) with their own
 * scale and zero point. K and V become the GEMM's symmetric int8 weights (their codes
 * minus the zero point, divided by max|code - zero point| / 127 when that exceeds
 * 127); the scores and the softmax are float; the probabilities are quantized to u8
 * with scale 1/255 before the product with V. mask: NULL, or floats added to the
 * scaled scores, element (b, h, i, j) at b*s[0] + h*s[1] + i*s[2] + j*s[3] with
 * s = mask_strides (0 broadcasts). Heads run in parallel on the pool. */
typedef struct edge_q8_attention_params {
  int32_t batch, heads, s_q, s_k, d;
  edge_dtype dtype;
  float q_scale, kt_scale, v_scale, y_scale;
  int32_t q_zero_point, kt_zero_point, v_zero_point, y_zero_point;
  float scale;
  const float* mask;
  int64_t mask_strides[4];
} edge_q8_attention_params;
/* Bytes of workspace (64-byte aligned) a call on a pool of `threads` needs; 0 for bad params. */
size_t edge_q8_attention_workspace_size(const edge_q8_attention_params* params, int32_t threads);
edge_status edge_q8_attention(const edge_q8_attention_params* params, const void* q, const void* kt,
                              const void* v, void* y, void* workspace, size_t workspace_size,
                              edge_threadpool* pool);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_OPS_H */
