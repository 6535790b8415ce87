/* Internal to the f32-ops family: row micro-kernels and the per-ISA table. */
#ifndef EDGE_F32_OPS_H
#define EDGE_F32_OPS_H

#include "internal.h"

/* Softmax of one row of n >= 1 floats, max-subtracted. */
typedef void (*edge_f32_softmax_ukernel_fn)(size_t n, const float* x, float* y);
/* Layer norm of one row of n >= 1 floats; gamma/beta may be NULL (1 and 0). */
typedef void (*edge_f32_layernorm_ukernel_fn)(size_t n, const float* x, const float* gamma, const float* beta,
                                              float epsilon, float* y);

typedef struct edge_f32_ops_config {
  edge_f32_softmax_ukernel_fn softmax;
  edge_f32_layernorm_ukernel_fn layernorm;
} edge_f32_ops_config;

const edge_f32_ops_config* edge_f32_ops_config_get(void);

/* Kernels (src/f32-ops/<name>.c). */
void edge_f32_softmax_ukernel__scalar(size_t n, const float* x, float* y);
void edge_f32_layernorm_ukernel__scalar(size_t n, const float* x, const float* gamma, const float* beta,
                                        float epsilon, float* y);

void edge_f32_softmax_ukernel__avx2(size_t n, const float* x, float* y);
void edge_f32_layernorm_ukernel__avx2(size_t n, const float* x, const float* gamma, const float* beta,
                                      float epsilon, float* y);

void edge_f32_softmax_ukernel__avx512vnni(size_t n, const float* x, float* y);
void edge_f32_layernorm_ukernel__avx512vnni(size_t n, const float* x, const float* gamma, const float* beta,
                                            float epsilon, float* y);

void edge_f32_softmax_ukernel__neon(size_t n, const float* x, float* y);
void edge_f32_layernorm_ukernel__neon(size_t n, const float* x, const float* gamma, const float* beta,
                                      float epsilon, float* y);

/* The SIMD softmax paths evaluate exp(x) for x <= 0 with the Cephes expf
 * polynomial after x = n * ln2 + r, |r| <= ln2 / 2 (about 1 ulp, 2 ulp worst
 * case); inputs below -87 are raised to -87 (exp = 1.6e-38 instead of less). */
#define EDGE_EXP_MIN_INPUT (-87.0f)
#define EDGE_EXP_LOG2E 1.44269504088896341f
#define EDGE_EXP_LN2_HI 0.693359375f
#define EDGE_EXP_LN2_LO (-2.12194440e-4f)
#define EDGE_EXP_P0 1.9875691500e-4f
#define EDGE_EXP_P1 1.3981999507e-3f
#define EDGE_EXP_P2 8.3334519073e-3f
#define EDGE_EXP_P3 4.1665795894e-2f
#define EDGE_EXP_P4 1.6666665459e-1f
#define EDGE_EXP_P5 5.0000001201e-1f

#endif /* EDGE_F32_OPS_H */
