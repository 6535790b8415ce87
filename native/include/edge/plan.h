/* The plan interpreter: a bound program of kernel calls run by one C call.
 *
 * edge_runtime.plan.executor binds, per input-shape signature, every step of a
 * quantized plan to its buffers (outputs, workspaces, parameter structs, packed
 * weights). A run of consecutive steps that the kernels can run becomes a
 * program: an array of edge_plan_op, each one kernel call with its arguments
 * already bound (the arguments of the entry point it names, in its order, less
 * the thread pool, which the run passes). edge_plan_run executes them in order,
 * on one thread pool, and stops at the first failure, saying which op failed, so
 * the binding raises the error of that plan step. The interpreter checks nothing
 * the kernels check themselves; the pointers must stay valid for the run (the
 * binding owns the buffers).
 *
 * Besides the kernel entry points, a program has the few byte moves the plan
 * needs between kernels (a permutation, the im2col of an image stem, a copy) and
 * an integer clamp.
 */
#ifndef EDGE_PLAN_H
#define EDGE_PLAN_H

#include "edge/common.h"
#include "edge/conv.h"
#include "edge/gemm.h"
#include "edge/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum edge_plan_kind {
  EDGE_PLAN_GEMM = 0,           /* edge_q8_gemm */
  EDGE_PLAN_GEMM24 = 1,         /* edge_q8_gemm24 */
  EDGE_PLAN_CONV2D = 2,         /* edge_q8_conv2d */
  EDGE_PLAN_CONV2D24 = 3,       /* edge_q8_conv2d24 */
  EDGE_PLAN_DWCONV2D = 4,       /* edge_q8_dwconv2d (workspace unused) */
  EDGE_PLAN_ADD = 5,            /* edge_q8_add */
  EDGE_PLAN_MUL = 6,            /* edge_q8_mul */
  EDGE_PLAN_LUT = 7,            /* edge_q8_lut */
  EDGE_PLAN_MAXPOOL2D = 8,      /* edge_q8_maxpool2d */
  EDGE_PLAN_AVGPOOL2D = 9,      /* edge_q8_avgpool2d */
  EDGE_PLAN_GLOBAL_AVGPOOL = 10, /* edge_q8_global_avgpool */
  EDGE_PLAN_QUANTIZE = 11,      /* edge_f32_q8_quantize */
  EDGE_PLAN_DEQUANTIZE = 12,    /* edge_q8_f32_dequantize */
  EDGE_PLAN_LAYERNORM = 13,     /* edge_f32_layernorm */
  EDGE_PLAN_CLAMP = 14,         /* y = min(max(x, lo), hi), u8 or s8 */
  EDGE_PLAN_PERMUTE = 15,       /* y (contiguous) = x with its dimensions permuted */
  EDGE_PLAN_IM2COL = 16,        /* the rows of an image stem's GEMM, see edge_plan_im2col_args */
  EDGE_PLAN_COPY = 17,          /* memcpy (a convolution's packed header for this input size) */
  EDGE_PLAN_ATTENTION = 18,     /* edge_q8_attention */
  EDGE_PLAN_LUT_CHANNELS = 19,  /* edge_q8_lut_channels */
  EDGE_PLAN_SOFTMAX = 20        /* edge_f32_softmax */
} edge_plan_kind;

typedef struct edge_plan_gemm_args { /* also gemm24 */
  int32_t m, n, k;
  edge_dtype a_dtype;
  const void* a;
  size_t a_stride;
  int32_t a_zero_point;
  const void* packed;
  edge_dtype c_dtype;
  void* c;
  size_t c_stride;
  const edge_q8_requant* requant;
} edge_plan_gemm_args;

typedef struct edge_plan_conv_args { /* conv2d, conv2d24, dwconv2d */
  const edge_conv2d_params* params;
  edge_dtype x_dtype;
  const void* x;
  int32_t x_zero_point;
  const void* packed;
  edge_dtype y_dtype;
  void* y;
  const edge_q8_requant* requant;
  void* workspace;
  size_t workspace_size;
} edge_plan_conv_args;

typedef struct edge_plan_add_args {
  int32_t rows, cols;
  edge_dtype dtype;
  const void* a;
  size_t a_row_stride, a_col_stride;
  const void* b;
  size_t b_row_stride, b_col_stride;
  void* y;
  const edge_q8_add_params* params;
} edge_plan_add_args;

typedef struct edge_plan_mul_args {
  int32_t rows, cols;
  edge_dtype dtype;
  const void* a;
  size_t a_row_stride, a_col_stride;
  const void* b;
  size_t b_row_stride, b_col_stride;
  void* y;
  const edge_q8_mul_params* params;
} edge_plan_mul_args;

typedef struct edge_plan_lut_args {
  size_t n;
  const uint8_t* table;
  const void* x;
  void* y;
} edge_plan_lut_args;

typedef struct edge_plan_lut_channels_args {
  size_t outer, channels, inner;
  const uint8_t* tables;
  const void* x;
  void* y;
} edge_plan_lut_channels_args;

typedef struct edge_plan_softmax_args {
  int32_t rows, cols;
  const float* x;
  float* y;
} edge_plan_softmax_args;

typedef struct edge_plan_maxpool_args {
  const edge_pool2d_params* params;
  edge_dtype dtype;
  const void* x;
  void* y;
} edge_plan_maxpool_args;

typedef struct edge_plan_avgpool_args {
  const edge_pool2d_params* params;
  edge_dtype dtype;
  const void* x;
  double x_scale;
  int32_t x_zero_point;
  void* y;
  double y_scale;
  int32_t y_zero_point, y_min, y_max;
} edge_plan_avgpool_args;

typedef struct edge_plan_global_avgpool_args {
  int32_t batch, hw, channels;
  edge_dtype dtype;
  const void* x;
  double x_scale;
  int32_t x_zero_point;
  void* y;
  double y_scale;
  int32_t y_zero_point, y_min, y_max;
} edge_plan_global_avgpool_args;

typedef struct edge_plan_quantize_args {
  size_t n;
  const float* x;
  float scale;
  int32_t zero_point;
  edge_dtype dtype;
  void* y;
} edge_plan_quantize_args;

typedef struct edge_plan_dequantize_args {
  size_t n;
  edge_dtype dtype;
  const void* x;
  float scale;
  int32_t zero_point;
  float* y;
} edge_plan_dequantize_args;

typedef struct edge_plan_layernorm_args {
  int32_t rows, cols;
  const float* x;
  const float* gamma;
  const float* beta;
  float epsilon;
  float* y;
} edge_plan_layernorm_args;

typedef struct edge_plan_clamp_args {
  size_t n;
  edge_dtype dtype; /* u8 or s8 */
  const void* x;
  void* y;
  int32_t lo, hi;
} edge_plan_clamp_args;

#define EDGE_PLAN_MAX_DIMS 6
typedef struct edge_plan_permute_args {
  int32_t ndim;        /* 1 .. EDGE_PLAN_MAX_DIMS */
  size_t element_size; /* 1, 2, 4 or 8 bytes */
  size_t shape[6];     /* EDGE_PLAN_MAX_DIMS: y's shape; y is contiguous */
  size_t x_strides[6]; /* bytes between x's elements along each of y's dimensions */
  const void* x;
  void* y;
} edge_plan_permute_args;

/* x [batch][in_h][in_w][channels] (one byte each) is copied into the interior of
 * padded [batch][padded_h][padded_w][channels] at (pad_top, pad_left), whose
 * border already holds the zero point; then each output pixel's taps, kernel_h
 * rows of kernel_w * channels contiguous bytes, are copied into a
 * [batch * out_h * out_w][kernel_h * kernel_w * channels] (dilation 1). */
typedef struct edge_plan_im2col_args {
  int32_t batch, in_h, in_w, channels;
  int32_t padded_h, padded_w, pad_top, pad_left;
  int32_t out_h, out_w, kernel_h, kernel_w, stride_h, stride_w;
  const void* x;
  void* padded;
  void* a;
} edge_plan_im2col_args;

typedef struct edge_plan_attention_args {
  const edge_q8_attention_params* params;
  const void* q;
  const void* kt;
  const void* v;
  void* y;
  void* workspace;
  size_t workspace_size;
} edge_plan_attention_args;

typedef struct edge_plan_copy_args {
  size_t n;
  const void* x;
  void* y;
} edge_plan_copy_args;

typedef struct edge_plan_op {
  edge_plan_kind kind;
  union {
    edge_plan_gemm_args gemm;
    edge_plan_conv_args conv;
    edge_plan_add_args add;
    edge_plan_mul_args mul;
    edge_plan_lut_args lut;
    edge_plan_maxpool_args maxpool;
    edge_plan_avgpool_args avgpool;
    edge_plan_global_avgpool_args global_avgpool;
    edge_plan_quantize_args quantize;
    edge_plan_dequantize_args dequantize;
    edge_plan_layernorm_args layernorm;
    edge_plan_clamp_args clamp;
    edge_plan_permute_args permute;
    edge_plan_im2col_args im2col;
    edge_plan_copy_args copy;
    edge_plan_attention_args attention;
    edge_plan_lut_channels_args lut_channels;
    edge_plan_softmax_args softmax;
  } args;
} edge_plan_op;

/* Runs ops[0 .. count) in order on `pool` (NULL: on the calling thread only).
 * On failure returns the op's status, with its detail in edge_last_error(),
 * and stores the op's index in *failed_op (when not NULL; SIZE_MAX when the
 * run failed before its first op: the rendezvous test hook). */
edge_status edge_plan_run(const edge_plan_op* ops, size_t count, edge_threadpool* pool, size_t* failed_op);

/* Runs in flight in this process, and the most seen at once since the last
 * reset (for tests and diagnostics: they show whether runs overlap). */
int32_t edge_plan_runs_active(void);
int32_t edge_plan_runs_peak(void);
void edge_plan_runs_peak_reset(void);

/* A test hook: while `parties` > 1, every edge_plan_run waits on entry until
 * `parties` runs have arrived (or fails with EDGE_ERR_INVALID_ARGUMENT after
 * timeout_ms), so that a test can show that runs from different threads are in C
 * at the same time. 0 turns it off (the default). */
void edge_plan_rendezvous(int32_t parties, int32_t timeout_ms);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_PLAN_H */
