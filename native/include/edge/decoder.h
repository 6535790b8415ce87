/* One decode step of a Llama-family decoder (one token of one sequence), in one call.
 *
 * The layers of edge_runtime.llm's runtime (see edge_runtime/llm/model.py), for the
 * token at `position`, its embedding in x[dim]:
 *
 *   for each layer:
 *     a = rmsnorm(x) * attn_norm
 *     q|k|v = linear(qkv, a); RoPE (rotate-half) on q and k at `position`
 *     k, v appended to the layer's cache at `position`
 *     per query head: softmax(q . K[0..position] / sqrt(head_dim)) . V[0..position]
 *                     (grouped-query: head h reads KV head h / (heads / kv_heads))
 *     x += linear(o, attention)
 *     f = rmsnorm(x) * ffn_norm; g|u = linear(gate_up, f)
 *     x += linear(down, silu(g) * u)
 *   logits = linear(lm_head, rmsnorm(x) * norm)
 *
 * linear(L, x): x quantized to int8 per call (symmetric, scale s = max|x| / 127,
 * q1 = round-half-even(x / s)), int32 product by edge_q8_gemm (bit-identical on every
 * ISA), then y[j] = acc1[j] * s * L.scale[j] (+ L.bias[j]). With activation_digits 2
 * the remainder is a second int8 digit, q2 = clamp(round-half-even((x - q1 * s) / s2),
 * -127, 127) with s2 = s / 254, multiplied in the same GEMM (M = 2: the weights are
 * read once), and y[j] = (acc1[j] * s + acc2[j] * s2) * L.scale[j] (+ L.bias[j]):
 * activations good to about 15 bits. Everything else is float32 in portable C. A linear of n * k >= parallel_min_macs runs on the pool; the rest
 * of the step runs on the calling thread.
 */
#ifndef EDGE_DECODER_H
#define EDGE_DECODER_H

#include "edge/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct edge_llm_linear {
  int32_t n, k;
  const void* packed;  /* edge_q8_gemm_pack of the int8 weights [n][k] */
  const float* scale;  /* [n]: the weights' per-output-channel scales */
  const float* bias;   /* [n] or NULL */
} edge_llm_linear;

typedef struct edge_llm_layer {
  const float* attn_norm;  /* [dim] */
  edge_llm_linear qkv;     /* n = (heads + 2 * kv_heads) * head_dim, k = dim */
  edge_llm_linear o;       /* n = dim, k = heads * head_dim */
  const float* ffn_norm;   /* [dim] */
  edge_llm_linear gate_up; /* n = 2 * hidden (gate rows, then up rows), k = dim */
  edge_llm_linear down;    /* n = dim, k = hidden */
} edge_llm_layer;

typedef struct edge_llm_decoder {
  int32_t layers, dim, hidden, heads, kv_heads, head_dim, vocab;
  int32_t context;          /* rows of the RoPE tables */
  float rms_eps;
  const float* rope_cos;    /* [context][head_dim / 2] */
  const float* rope_sin;    /* [context][head_dim / 2] */
  const edge_llm_layer* layer; /* [layers] */
  const float* norm;        /* [dim] */
  edge_llm_linear lm_head;  /* n = vocab, k = dim */
  int64_t parallel_min_macs;
  int32_t activation_digits; /* 1 or 2 int8 digits per activation (see above) */
} edge_llm_decoder;

/* Bytes of the workspace edge_llm_decode needs (any alignment). */
size_t edge_llm_decode_workspace_size(const edge_llm_decoder* d);

/* One token: x[dim] (its embedding; overwritten) in, logits[vocab] out. The caches are
 * float32 [layers][kv_heads][capacity][head_dim]; the token's keys and values are written
 * at `position`, the attention reads positions 0..position. position < capacity and
 * position < context. */
edge_status edge_llm_decode(const edge_llm_decoder* d, float* x, int32_t position, float* k_cache,
                            float* v_cache, int32_t capacity, float* logits, void* workspace,
                            size_t workspace_size, edge_threadpool* pool);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_DECODER_H */
