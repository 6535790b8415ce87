/* Attention with int8 products: softmax(Q.K^T * scale + mask) . V, per head.
 *
 * Per (batch, head), heads spread over the pool's threads:
 *   1. K^T's codes minus their zero point are packed straight into the int8 weights
 *      of a GEMM (edge_q8_gemm_pack_codes), divided by r_k = max|k - z_k| / 127 when
 *      that exceeds 127 (else exact);
 *   2. scores = (Q - z_q) . W_k in int32 (the dense GEMM, s32 output), then
 *      float: scores * q_scale * k_scale * r_k * scale + mask;
 *   3. softmax over each row (float), probabilities quantized to u8 with scale
 *      1/255 and zero point 0 (what onnxruntime's QDQ attention does too);
 *   4. context = P . W_v in int32, W_v being V's codes like W_k;
 *   5. y = quantize(context * (1/255) * v_scale * r_v) with y's parameters.
 * The GEMMs run inline in the task (heads are the parallel dimension).
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "internal.h"

typedef struct attention_context {
  const edge_q8_attention_params* p;
  const uint8_t* q;
  const uint8_t* kt;
  const uint8_t* v;
  uint8_t* y;
  uint8_t* workspace; /* one region of layout_of(p).total bytes per task */
  size_t tasks;
  atomic_int status;
} attention_context;

typedef struct head_layout {
  size_t packed_k, packed_v, scores, codes, context, total;
} head_layout;

static head_layout layout_of(const edge_q8_attention_params* p) {
  const size_t sq = (size_t) p->s_q, sk = (size_t) p->s_k, d = (size_t) p->d;
  head_layout l;
  l.packed_k = EDGE_ROUND_UP(edge_q8_gemm_packed_size((int32_t) sk, (int32_t) d), EDGE_ALIGNMENT);
  l.packed_v = EDGE_ROUND_UP(edge_q8_gemm_packed_size((int32_t) d, (int32_t) sk), EDGE_ALIGNMENT);
  l.scores = EDGE_ROUND_UP(sq * sk * sizeof(float), EDGE_ALIGNMENT); /* also the int32 scores */
  l.codes = EDGE_ROUND_UP(sq * sk, EDGE_ALIGNMENT);
  l.context = EDGE_ROUND_UP(sq * d * sizeof(float), EDGE_ALIGNMENT); /* also the int32 context */
  /* Both packed weight sets, the scores in int32 and in float, P's codes, the context
   * in int32 and in float. */
  l.total = l.packed_k + l.packed_v + 2 * l.scores + l.codes + 2 * l.context;
  return l;
}

/* The fixed-point reciprocal that fits codes minus their zero point into [-127, 127]
 * (edge_q8_gemm_pack_codes), and the real factor it divided them by. */
static int32_t reciprocal_of(const uint8_t* x, size_t n, int is_signed, int32_t zero_point, float* divided_by) {
  int32_t lo = 255, hi = -128;
  if (is_signed) {
    const int8_t* s = (const int8_t*) x;
    for (size_t i = 0; i < n; i++) {
      lo = s[i] < lo ? s[i] : lo;
      hi = s[i] > hi ? s[i] : hi;
    }
  } else {
    for (size_t i = 0; i < n; i++) {
      lo = x[i] < lo ? x[i] : lo;
      hi = x[i] > hi ? x[i] : hi;
    }
  }
  const int32_t largest = EDGE_MAX(hi - zero_point, zero_point - lo);
  if (largest <= 127) {
    *divided_by = 1.0f;
    return 65536;
  }
  /* |d| <= largest < 2^9: d * reciprocal stays inside int32, and largest * reciprocal <=
   * 127 * 2^16 + largest / 2 keeps the result inside [-127, 127]. */
  *divided_by = (float) largest / 127.0f;
  return (int32_t) ((127 * 65536 + largest / 2) / largest);
}

/* One (batch, head). */
static edge_status attention_one(const attention_context* ctx, size_t index, uint8_t* block) {
  const edge_q8_attention_params* p = ctx->p;
  const size_t b = index / (size_t) p->heads, h = index % (size_t) p->heads;
  const size_t sq = (size_t) p->s_q, sk = (size_t) p->s_k, d = (size_t) p->d;
  const int is_signed = p->dtype == EDGE_DTYPE_S8;
  const head_layout l = layout_of(p);
  uint8_t* pk = block;
  uint8_t* pv = pk + l.packed_k;
  int32_t* acc = (int32_t*) (pv + l.packed_v);
  float* scores = (float*) ((uint8_t*) acc + l.scores);
  uint8_t* probs = (uint8_t*) scores + l.scores;
  int32_t* context = (int32_t*) (probs + l.codes);
  float* out = (float*) ((uint8_t*) context + l.context);

  const size_t head = b * (size_t) p->heads + h;
  const uint8_t* q = ctx->q + head * sq * d;
  /* K^T [d][s_k] as weights [s_k][d]; V [s_k][d] as weights [d][s_k]. */
  const uint8_t* kt = ctx->kt + head * d * sk;
  const uint8_t* v = ctx->v + head * sk * d;
  float rk, rv;
  const int32_t reciprocal_k = reciprocal_of(kt, d * sk, is_signed, p->kt_zero_point, &rk);
  const int32_t reciprocal_v = reciprocal_of(v, sk * d, is_signed, p->v_zero_point, &rv);
  edge_q8_gemm_pack_codes((int32_t) sk, (int32_t) d, kt, 1, sk, is_signed, p->kt_zero_point, reciprocal_k, pk);
  edge_q8_gemm_pack_codes((int32_t) d, (int32_t) sk, v, 1, d, is_signed, p->v_zero_point, reciprocal_v, pv);
  edge_status status = edge_q8_gemm((int32_t) sq, (int32_t) sk, (int32_t) d, p->dtype, q, d, p->q_zero_point, pk,
                                    EDGE_DTYPE_S32, acc, sk, NULL, NULL);
  if (status == EDGE_OK) {
    const float f = p->q_scale * p->kt_scale * rk * p->scale;
    const float* mask = p->mask == NULL ? NULL : p->mask + (int64_t) b * p->mask_strides[0] +
                                                     (int64_t) h * p->mask_strides[1];
    for (size_t i = 0; i < sq; i++) {
      const int32_t* a = acc + i * sk;
      float* s = scores + i * sk;
      const float* m = mask == NULL ? NULL : mask + (int64_t) i * p->mask_strides[2];
      if (m == NULL) {
        for (size_t j = 0; j < sk; j++) s[j] = (float) a[j] * f;
      } else if (p->mask_strides[3] == 1) {
        for (size_t j = 0; j < sk; j++) s[j] = (float) a[j] * f + m[j];
      } else {
        for (size_t j = 0; j < sk; j++) s[j] = (float) a[j] * f + m[(int64_t) j * p->mask_strides[3]];
      }
    }
    status = edge_f32_softmax((int32_t) sq, (int32_t) sk, scores, scores);
  }
  if (status == EDGE_OK) status = edge_f32_q8_quantize(sq * sk, scores, 1.0f / 255.0f, 0, EDGE_DTYPE_U8, probs, NULL);
  if (status == EDGE_OK) {
    status = edge_q8_gemm((int32_t) sq, (int32_t) d, (int32_t) sk, EDGE_DTYPE_U8, probs, sk, 0, pv,
                          EDGE_DTYPE_S32, context, d, NULL, NULL);
  }
  if (status == EDGE_OK) {
    const float f = p->v_scale * rv / 255.0f;
    for (size_t i = 0; i < sq * d; i++) out[i] = (float) context[i] * f;
    status = edge_f32_q8_quantize(sq * d, out, p->y_scale, p->y_zero_point, p->dtype, ctx->y + head * sq * d, NULL);
  }
  return status;
}

/* Task t runs heads t, t + tasks, ... in its own workspace region. */
static void attention_task(void* opaque, size_t t) {
  attention_context* ctx = (attention_context*) opaque;
  uint8_t* block = ctx->workspace + t * layout_of(ctx->p).total;
  const size_t heads = (size_t) ctx->p->batch * (size_t) ctx->p->heads;
  for (size_t index = t; index < heads; index += ctx->tasks) {
    if (atomic_load(&ctx->status) != EDGE_OK) return;
    const edge_status status = attention_one(ctx, index, block);
    if (status != EDGE_OK) atomic_store(&ctx->status, status);
  }
}

static size_t tasks_of(const edge_q8_attention_params* p, int32_t threads) {
  const size_t heads = (size_t) p->batch * (size_t) p->heads;
  return EDGE_MAX((size_t) 1, EDGE_MIN(heads, (size_t) (threads < 1 ? 1 : threads)));
}

size_t edge_q8_attention_workspace_size(const edge_q8_attention_params* p, int32_t threads) {
  if (p == NULL || p->s_q < 1 || p->s_k < 1 || p->d < 1 || p->heads < 1 || p->batch < 0) return 0;
  return tasks_of(p, threads) * layout_of(p).total;
}

edge_status edge_q8_attention(const edge_q8_attention_params* p, const void* q, const void* kt, const void* v,
                              void* y, void* workspace, size_t workspace_size, edge_threadpool* pool) {
  if (p == NULL) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_attention: params must not be NULL");
  if (p->batch < 0 || p->heads < 1 || p->s_q < 1 || p->s_k < 1 || p->d < 1) {
    return edge_fail(EDGE_ERR_SHAPE, "edge_q8_attention: batch %d >= 0, heads %d, s_q %d, s_k %d, d %d >= 1",
                     (int) p->batch, (int) p->heads, (int) p->s_q, (int) p->s_k, (int) p->d);
  }
  edge_status status = edge_check_q8_dtype(p->dtype, "edge_q8_attention dtype");
  if (status != EDGE_OK) return status;
  const float scales[4] = {p->q_scale, p->kt_scale, p->v_scale, p->y_scale};
  for (int i = 0; i < 4; i++) {
    if (!(scales[i] > 0.0f) || !isfinite(scales[i])) {
      return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_attention: scales must be finite and > 0");
    }
  }
  if (!isfinite(p->scale)) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_attention: scale must be finite");
  const int32_t zps[4] = {p->q_zero_point, p->kt_zero_point, p->v_zero_point, p->y_zero_point};
  for (int i = 0; i < 4; i++) {
    if (zps[i] < edge_dtype_min(p->dtype) || zps[i] > edge_dtype_max(p->dtype)) {
      return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_attention: zero point %d outside the dtype",
                       (int) zps[i]);
    }
  }
  if (p->batch == 0) return EDGE_OK;
  if (q == NULL || kt == NULL || v == NULL || y == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_attention: q, kt, v and y must not be NULL");
  }
  const size_t tasks = tasks_of(p, edge_threadpool_size(pool));
  const size_t needed = tasks * layout_of(p).total;
  if (workspace == NULL || workspace_size < needed || !EDGE_IS_ALIGNED(workspace)) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT,
                     "edge_q8_attention: workspace must be 64-byte aligned and at least %zu bytes "
                     "(edge_q8_attention_workspace_size), got %zu", needed, workspace_size);
  }
  attention_context ctx = {.p = p, .q = q, .kt = kt, .v = v, .y = y, .workspace = workspace, .tasks = tasks};
  atomic_init(&ctx.status, EDGE_OK);
  edge_parallelize(pool, attention_task, &ctx, tasks);
  status = (edge_status) atomic_load(&ctx.status);
  if (status == EDGE_OK) edge_clear_error();
  return status;
}
