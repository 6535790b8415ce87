/* One decode step of a Llama-family decoder: see include/edge/decoder.h.
 *
 * A driver over edge_q8_gemm (M = 1: its GEMV tiles) with the float glue of a
 * token (RMSNorm, RoPE, attention over the cache, SwiGLU) in portable C, so a
 * decode step is one call instead of some 400 numpy operations. The float loops
 * keep 8 independent partial sums so the compiler vectorizes them without
 * reassociating anything itself: the same bits on every ISA for a given build.
 */
#include <math.h>
#include <string.h>

#include "internal.h"

#define LANES 8

static float sum_squares(const float* x, size_t n) {
  float s[LANES] = {0};
  size_t i = 0;
  for (; i + LANES <= n; i += LANES) {
    for (size_t l = 0; l < LANES; l++) s[l] += x[i + l] * x[i + l];
  }
  for (; i < n; i++) s[0] += x[i] * x[i];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

static float dot(const float* a, const float* b, size_t n) {
  float s[LANES] = {0};
  size_t i = 0;
  for (; i + LANES <= n; i += LANES) {
    for (size_t l = 0; l < LANES; l++) s[l] += a[i + l] * b[i + l];
  }
  for (; i < n; i++) s[0] += a[i] * b[i];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

static void rms_norm(const float* x, const float* w, size_t n, float eps, float* y) {
  const float ms = sum_squares(x, n) * (1.0f / (float) n);
  const float r = 1.0f / sqrtf(ms + eps);
  for (size_t i = 0; i < n; i++) y[i] = x[i] * r * w[i];
}

/* y = linear(L, x) (see the header); q and acc are scratch of digits * L.k bytes and digits * L.n int32. */
static edge_status linear(const edge_llm_linear* L, const float* x, int8_t* q, int32_t* acc, float* y,
                          int32_t digits, int64_t parallel_min_macs, edge_threadpool* pool) {
  const size_t k = (size_t) L->k, n = (size_t) L->n;
  float amax = 0.0f;
  for (size_t i = 0; i < k; i++) {
    const float a = fabsf(x[i]);
    amax = a > amax ? a : amax;
  }
  float s = amax * (1.0f / 127.0f);
  s = s > 1e-30f ? s : 1e-30f; /* an all-zero row: any scale gives zeros */
  const float s2 = s * (1.0f / 254.0f);
  /* Round half to even (|v| <= 2^22): adding and subtracting 1.5 * 2^23 under the
   * default rounding mode, which vectorizes where rintf may not. */
  const float magic = 12582912.0f;
  for (size_t i = 0; i < k; i++) {
    const float r = (x[i] / s + magic) - magic;
    q[i] = (int8_t) (int32_t) r;
    if (digits == 2) {
      float r2 = ((x[i] - r * s) / s2 + magic) - magic;
      r2 = r2 < -127.0f ? -127.0f : (r2 > 127.0f ? 127.0f : r2);
      q[k + i] = (int8_t) (int32_t) r2;
    }
  }
  const int big = (int64_t) digits * (int64_t) n * (int64_t) k >= parallel_min_macs;
  edge_status status = edge_q8_gemm(digits, L->n, L->k, EDGE_DTYPE_S8, q, k, 0, L->packed, EDGE_DTYPE_S32, acc, n,
                                    NULL, big ? pool : NULL);
  if (status != EDGE_OK) return status;
  const float* scale = L->scale;
  if (digits == 2) {
    for (size_t j = 0; j < n; j++) y[j] = (((float) acc[j] * s) + ((float) acc[n + j] * s2)) * scale[j];
  } else {
    for (size_t j = 0; j < n; j++) y[j] = ((float) acc[j] * s) * scale[j];
  }
  if (L->bias != NULL) {
    for (size_t j = 0; j < n; j++) y[j] += L->bias[j];
  }
  return EDGE_OK;
}

/* Rotate-half RoPE of `heads` vectors of head_dim at x. */
static void rope(float* x, size_t heads, size_t head_dim, const float* cos, const float* sin) {
  const size_t half = head_dim / 2;
  for (size_t h = 0; h < heads; h++) {
    float* x1 = x + h * head_dim;
    float* x2 = x1 + half;
    for (size_t i = 0; i < half; i++) {
      const float a = x1[i], b = x2[i];
      x1[i] = a * cos[i] - b * sin[i];
      x2[i] = b * cos[i] + a * sin[i];
    }
  }
}

typedef struct workspace {
  float *a, *qkv, *attn, *gu, *scores;
  int32_t* acc;
  int8_t* q;
} workspace;

static size_t largest_n(const edge_llm_decoder* d) {
  const size_t q_dim = (size_t) d->heads * d->head_dim, kv_dim = (size_t) d->kv_heads * d->head_dim;
  size_t n = EDGE_MAX((size_t) d->dim, q_dim + 2 * kv_dim);
  n = EDGE_MAX(n, (size_t) d->vocab);
  return EDGE_MAX(n, 2 * (size_t) d->hidden);
}

static workspace carve(const edge_llm_decoder* d, void* base, size_t* total) {
  const size_t q_dim = (size_t) d->heads * d->head_dim, kv_dim = (size_t) d->kv_heads * d->head_dim;
  const size_t sizes[7] = {
      (size_t) d->dim * sizeof(float),
      (q_dim + 2 * kv_dim) * sizeof(float),
      q_dim * sizeof(float),
      2 * (size_t) d->hidden * sizeof(float),
      (size_t) d->context * sizeof(float),
      2 * largest_n(d) * sizeof(int32_t),
      2 * (size_t) EDGE_MAX(EDGE_MAX(d->dim, d->hidden), d->heads * d->head_dim),
  };
  uint8_t* p = base;
  uint8_t* parts[7];
  size_t offset = 0;
  for (int i = 0; i < 7; i++) {
    parts[i] = p == NULL ? NULL : p + offset;
    offset += EDGE_ROUND_UP(sizes[i], EDGE_ALIGNMENT);
  }
  *total = offset + EDGE_ALIGNMENT; /* room to align the base */
  workspace w = {(float*) (void*) parts[0], (float*) (void*) parts[1], (float*) (void*) parts[2],
                 (float*) (void*) parts[3], (float*) (void*) parts[4], (int32_t*) (void*) parts[5],
                 (int8_t*) parts[6]};
  return w;
}

static edge_status check_linear(const edge_llm_linear* L, int32_t n, int32_t k, const char* what, int32_t layer) {
  if (L->packed == NULL || L->scale == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_llm_decode: layer %d %s has no weights or scales", (int) layer,
                     what);
  }
  if (L->n != n || L->k != k) {
    return edge_fail(EDGE_ERR_SHAPE, "edge_llm_decode: layer %d %s is %dx%d, expected %dx%d", (int) layer, what,
                     (int) L->n, (int) L->k, (int) n, (int) k);
  }
  return EDGE_OK;
}

size_t edge_llm_decode_workspace_size(const edge_llm_decoder* d) {
  if (d == NULL) return 0;
  size_t total = 0;
  (void) carve(d, NULL, &total);
  return total;
}

edge_status edge_llm_decode(const edge_llm_decoder* d, float* x, int32_t position, float* k_cache,
                            float* v_cache, int32_t capacity, float* logits, void* workspace_base,
                            size_t workspace_size, edge_threadpool* pool) {
  if (d == NULL || x == NULL || k_cache == NULL || v_cache == NULL || logits == NULL || workspace_base == NULL ||
      d->layer == NULL || d->norm == NULL || d->rope_cos == NULL || d->rope_sin == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_llm_decode: a required pointer is NULL");
  }
  if (d->layers < 1 || d->dim < 1 || d->hidden < 1 || d->heads < 1 || d->kv_heads < 1 || d->head_dim < 2 ||
      d->head_dim % 2 || d->heads % d->kv_heads || d->vocab < 1 || d->context < 1) {
    return edge_fail(EDGE_ERR_SHAPE,
                     "edge_llm_decode: bad dimensions (layers %d, dim %d, hidden %d, heads %d, kv_heads %d, "
                     "head_dim %d, vocab %d, context %d)",
                     (int) d->layers, (int) d->dim, (int) d->hidden, (int) d->heads, (int) d->kv_heads,
                     (int) d->head_dim, (int) d->vocab, (int) d->context);
  }
  if (d->activation_digits != 1 && d->activation_digits != 2) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_llm_decode: activation_digits must be 1 or 2, got %d",
                     (int) d->activation_digits);
  }
  if (position < 0 || position >= capacity || position >= d->context) {
    return edge_fail(EDGE_ERR_SHAPE, "edge_llm_decode: position %d outside the cache (%d) or the context (%d)",
                     (int) position, (int) capacity, (int) d->context);
  }
  size_t need = 0;
  (void) carve(d, NULL, &need);
  if (workspace_size < need) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_llm_decode: workspace of %zu bytes, %zu needed",
                     workspace_size, need);
  }
  const int32_t q_dim = d->heads * d->head_dim, kv_dim = d->kv_heads * d->head_dim;
  for (int32_t l = 0; l < d->layers; l++) {
    const edge_llm_layer* L = &d->layer[l];
    edge_status st;
    if ((st = check_linear(&L->qkv, q_dim + 2 * kv_dim, d->dim, "qkv", l)) != EDGE_OK) return st;
    if ((st = check_linear(&L->o, d->dim, q_dim, "o", l)) != EDGE_OK) return st;
    if ((st = check_linear(&L->gate_up, 2 * d->hidden, d->dim, "gate_up", l)) != EDGE_OK) return st;
    if ((st = check_linear(&L->down, d->dim, d->hidden, "down", l)) != EDGE_OK) return st;
    if (L->attn_norm == NULL || L->ffn_norm == NULL) {
      return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_llm_decode: layer %d has no norm weights", (int) l);
    }
  }
  edge_status st = check_linear(&d->lm_head, d->vocab, d->dim, "lm_head", -1);
  if (st != EDGE_OK) return st;

  uint8_t* base = (uint8_t*) EDGE_ROUND_UP((uintptr_t) workspace_base, EDGE_ALIGNMENT);
  workspace w = carve(d, base, &need);
  const size_t dim = (size_t) d->dim, hidden = (size_t) d->hidden, hd = (size_t) d->head_dim;
  const size_t kvh = (size_t) d->kv_heads, group = (size_t) (d->heads / d->kv_heads);
  const size_t cap = (size_t) capacity, pos = (size_t) position, len = pos + 1;
  const float* cos = d->rope_cos + pos * (hd / 2);
  const float* sin = d->rope_sin + pos * (hd / 2);
  const float scale = (float) (1.0 / sqrt((double) hd));
  const int64_t pmin = d->parallel_min_macs;
  const int32_t digits = d->activation_digits;

  for (int32_t l = 0; l < d->layers; l++) {
    const edge_llm_layer* L = &d->layer[l];
    rms_norm(x, L->attn_norm, dim, d->rms_eps, w.a);
    if ((st = linear(&L->qkv, w.a, w.q, w.acc, w.qkv, digits, pmin, pool)) != EDGE_OK) return st;
    float* q = w.qkv;
    float* k = w.qkv + q_dim;
    float* v = k + kv_dim;
    rope(q, (size_t) d->heads, hd, cos, sin);
    rope(k, kvh, hd, cos, sin);
    float* kc = k_cache + (size_t) l * kvh * cap * hd;
    float* vc = v_cache + (size_t) l * kvh * cap * hd;
    for (size_t g = 0; g < kvh; g++) {
      memcpy(kc + (g * cap + pos) * hd, k + g * hd, hd * sizeof(float));
      memcpy(vc + (g * cap + pos) * hd, v + g * hd, hd * sizeof(float));
    }
    for (size_t h = 0; h < (size_t) d->heads; h++) {
      const size_t g = h / group;
      const float* qh = q + h * hd;
      const float* keys = kc + g * cap * hd;
      const float* vals = vc + g * cap * hd;
      float* s = w.scores;
      float mx = -INFINITY;
      for (size_t t = 0; t < len; t++) {
        s[t] = dot(qh, keys + t * hd, hd) * scale;
        mx = s[t] > mx ? s[t] : mx;
      }
      float sum = 0.0f;
      for (size_t t = 0; t < len; t++) {
        s[t] = expf(s[t] - mx);
        sum += s[t];
      }
      const float inv = 1.0f / sum;
      float* out = w.attn + h * hd;
      memset(out, 0, hd * sizeof(float));
      for (size_t t = 0; t < len; t++) {
        const float p = s[t] * inv;
        const float* vt = vals + t * hd;
        for (size_t i = 0; i < hd; i++) out[i] += p * vt[i];
      }
    }
    if ((st = linear(&L->o, w.attn, w.q, w.acc, w.a, digits, pmin, pool)) != EDGE_OK) return st;
    for (size_t i = 0; i < dim; i++) x[i] += w.a[i];
    rms_norm(x, L->ffn_norm, dim, d->rms_eps, w.a);
    if ((st = linear(&L->gate_up, w.a, w.q, w.acc, w.gu, digits, pmin, pool)) != EDGE_OK) return st;
    float* gate = w.gu;
    const float* up = w.gu + hidden;
    for (size_t i = 0; i < hidden; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    if ((st = linear(&L->down, gate, w.q, w.acc, w.a, digits, pmin, pool)) != EDGE_OK) return st;
    for (size_t i = 0; i < dim; i++) x[i] += w.a[i];
  }
  rms_norm(x, d->norm, dim, d->rms_eps, w.a);
  st = linear(&d->lm_head, w.a, w.q, w.acc, logits, digits, pmin, pool);
  if (st != EDGE_OK) return st;
  edge_clear_error();
  return EDGE_OK;
}
