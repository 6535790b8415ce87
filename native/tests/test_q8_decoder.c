/* edge_llm_decode: a tiny random decoder, three steps, against naive loops written from
 * include/edge/decoder.h, on every ISA this machine (or qemu CPU) runs, and bit-identical
 * across ISAs (the int32 products are exact; the float glue is the same portable code). */
#if defined(__GNUC__) && !defined(__clang__)
/* The naive loops need no vectorizing, and aarch64 gcc 12 crashes vectorizing them (an ICE in
 * vect_transform_reduction). */
#pragma GCC optimize("no-tree-vectorize")
#endif
#include <math.h>
#include <string.h>

#include "test_util.h"

enum { LAYERS = 2, DIM = 40, HIDDEN = 72, HEADS = 4, KV_HEADS = 2, HEAD_DIM = 10, VOCAB = 53, CONTEXT = 6 };
enum { QKV = (HEADS + 2 * KV_HEADS) * HEAD_DIM, Q_DIM = HEADS * HEAD_DIM, KV_DIM = KV_HEADS * HEAD_DIM };

typedef struct matrix {
  int32_t n, k;
  int8_t* w;
  float* scale;
  void* packed;
} matrix;

static float frand(void) { return (float) edge_test_rand_range(-1000, 1000) / 1000.0f; }

static matrix make_matrix(int32_t n, int32_t k) {
  matrix m = {n, k, malloc((size_t) n * k), malloc(sizeof(float) * n), NULL};
  edge_test_fill_s8(m.w, (size_t) n * k, -127, 127);
  for (int32_t i = 0; i < n; i++) m.scale[i] = 0.002f + 0.002f * (float) edge_test_rand_range(0, 100) / 100.0f;
  size_t size = edge_q8_gemm_packed_size(n, k);
  m.packed = edge_test_aligned_alloc(size);
  EDGE_CHECK_OK(edge_q8_gemm_pack(n, k, m.w, NULL, m.packed, size));
  return m;
}

/* The naive definition (double accumulation of the exact integer products). */
static void ref_linear(const matrix* m, const float* x, int digits, float* y) {
  float amax = 0.0f;
  for (int32_t i = 0; i < m->k; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
  float s = amax * (1.0f / 127.0f);
  s = s > 1e-30f ? s : 1e-30f;
  const float s2 = s * (1.0f / 254.0f);
  for (int32_t j = 0; j < m->n; j++) {
    int64_t a1 = 0, a2 = 0;
    for (int32_t i = 0; i < m->k; i++) {
      const float q1 = rintf(x[i] / s);
      float q2 = rintf((x[i] - q1 * s) / s2);
      q2 = q2 < -127 ? -127 : (q2 > 127 ? 127 : q2);
      a1 += (int64_t) q1 * m->w[(size_t) j * m->k + i];
      a2 += (int64_t) q2 * m->w[(size_t) j * m->k + i];
    }
    y[j] = (float) (((double) a1 * s + (digits == 2 ? (double) a2 * s2 : 0.0)) * m->scale[j]);
  }
}

static void ref_norm(const float* x, const float* w, int n, float* y) {
  double ss = 0;
  for (int i = 0; i < n; i++) ss += (double) x[i] * x[i];
  const double r = 1.0 / sqrt(ss / n + 1e-5);
  for (int i = 0; i < n; i++) y[i] = (float) (x[i] * r * w[i]);
}

static void ref_rope(float* x, int heads, const float* cos, const float* sin) {
  for (int h = 0; h < heads; h++) {
    float* a = x + h * HEAD_DIM;
    for (int i = 0; i < HEAD_DIM / 2; i++) {
      const float u = a[i], v = a[i + HEAD_DIM / 2];
      a[i] = u * cos[i] - v * sin[i];
      a[i + HEAD_DIM / 2] = v * cos[i] + u * sin[i];
    }
  }
}

typedef struct model {
  matrix qkv[LAYERS], o[LAYERS], gate_up[LAYERS], down[LAYERS], head;
  float attn_norm[LAYERS][DIM], ffn_norm[LAYERS][DIM], norm[DIM];
  float cos[CONTEXT][HEAD_DIM / 2], sin[CONTEXT][HEAD_DIM / 2];
  float embed[CONTEXT][DIM];
} model;

static void ref_step(const model* M, int pos, int digits, float* kc, float* vc, float* logits) {
  float x[DIM], a[DIM], qkv[QKV], attn[Q_DIM], gu[2 * HIDDEN], t[DIM];
  memcpy(x, M->embed[pos], sizeof(x));
  for (int l = 0; l < LAYERS; l++) {
    ref_norm(x, M->attn_norm[l], DIM, a);
    ref_linear(&M->qkv[l], a, digits, qkv);
    ref_rope(qkv, HEADS, M->cos[pos], M->sin[pos]);
    ref_rope(qkv + Q_DIM, KV_HEADS, M->cos[pos], M->sin[pos]);
    for (int g = 0; g < KV_HEADS; g++) {
      for (int i = 0; i < HEAD_DIM; i++) {
        kc[((l * KV_HEADS + g) * CONTEXT + pos) * HEAD_DIM + i] = qkv[Q_DIM + g * HEAD_DIM + i];
        vc[((l * KV_HEADS + g) * CONTEXT + pos) * HEAD_DIM + i] = qkv[Q_DIM + KV_DIM + g * HEAD_DIM + i];
      }
    }
    for (int h = 0; h < HEADS; h++) {
      const int g = h / (HEADS / KV_HEADS);
      double p[CONTEXT], mx = -1e300, sum = 0;
      for (int s = 0; s <= pos; s++) {
        double d = 0;
        for (int i = 0; i < HEAD_DIM; i++) d += (double) qkv[h * HEAD_DIM + i] * kc[((l * KV_HEADS + g) * CONTEXT + s) * HEAD_DIM + i];
        p[s] = d / sqrt((double) HEAD_DIM);
        mx = p[s] > mx ? p[s] : mx;
      }
      for (int s = 0; s <= pos; s++) p[s] = exp(p[s] - mx);
      for (int s = 0; s <= pos; s++) sum += p[s];
      for (int i = 0; i < HEAD_DIM; i++) {
        double o = 0;
        for (int s = 0; s <= pos; s++) o += p[s] / sum * vc[((l * KV_HEADS + g) * CONTEXT + s) * HEAD_DIM + i];
        attn[h * HEAD_DIM + i] = (float) o;
      }
    }
    ref_linear(&M->o[l], attn, digits, t);
    for (int i = 0; i < DIM; i++) x[i] += t[i];
    ref_norm(x, M->ffn_norm[l], DIM, a);
    ref_linear(&M->gate_up[l], a, digits, gu);
    for (int i = 0; i < HIDDEN; i++) gu[i] = (float) (gu[i] / (1.0 + exp(-(double) gu[i])) * gu[HIDDEN + i]);
    ref_linear(&M->down[l], gu, digits, t);
    for (int i = 0; i < DIM; i++) x[i] += t[i];
  }
  ref_norm(x, M->norm, DIM, a);
  ref_linear(&M->head, a, digits, logits);
}

static edge_llm_linear view(const matrix* m) {
  edge_llm_linear v = {m->n, m->k, m->packed, m->scale, NULL};
  return v;
}

int main(void) {
  edge_test_seed(7);
  static model M;
  for (int l = 0; l < LAYERS; l++) {
    M.qkv[l] = make_matrix(QKV, DIM);
    M.o[l] = make_matrix(DIM, Q_DIM);
    M.gate_up[l] = make_matrix(2 * HIDDEN, DIM);
    M.down[l] = make_matrix(DIM, HIDDEN);
    for (int i = 0; i < DIM; i++) M.attn_norm[l][i] = 1.0f + 0.2f * frand(), M.ffn_norm[l][i] = 1.0f + 0.2f * frand();
  }
  M.head = make_matrix(VOCAB, DIM);
  for (int i = 0; i < DIM; i++) M.norm[i] = 1.0f + 0.2f * frand();
  for (int p = 0; p < CONTEXT; p++) {
    for (int i = 0; i < HEAD_DIM / 2; i++) {
      const double angle = p / pow(10000.0, 2.0 * i / HEAD_DIM);
      M.cos[p][i] = (float) cos(angle), M.sin[p][i] = (float) sin(angle);
    }
    for (int i = 0; i < DIM; i++) M.embed[p][i] = frand();
  }
  edge_llm_layer layers[LAYERS];
  for (int l = 0; l < LAYERS; l++) {
    layers[l] = (edge_llm_layer){M.attn_norm[l], view(&M.qkv[l]), view(&M.o[l]), M.ffn_norm[l],
                                 view(&M.gate_up[l]), view(&M.down[l])};
  }
  edge_llm_decoder d = {LAYERS, DIM, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, VOCAB, CONTEXT, 1e-5f,
                        &M.cos[0][0], &M.sin[0][0], layers, M.norm, view(&M.head), 0, 2};
  const size_t ws_size = edge_llm_decode_workspace_size(&d);
  void* ws = malloc(ws_size);
  const size_t cache = (size_t) LAYERS * KV_HEADS * CONTEXT * HEAD_DIM;
  float *kc = calloc(cache, sizeof(float)), *vc = calloc(cache, sizeof(float));
  float *rk = calloc(cache, sizeof(float)), *rv = calloc(cache, sizeof(float));
  static float first[2][3][VOCAB];
  edge_isa isas[8];
  const int count = edge_test_isas(isas, 8);
  for (int digits = 1; digits <= 2; digits++) {
    d.activation_digits = digits;
    for (int n = 0; n < count; n++) {
      EDGE_CHECK_OK(edge_isa_set(isas[n]));
      memset(kc, 0, cache * sizeof(float));
      memset(vc, 0, cache * sizeof(float));
      for (int pos = 0; pos < 3; pos++) {
        float x[DIM], got[VOCAB], want[VOCAB];
        memcpy(x, M.embed[pos], sizeof(x));
        EDGE_CHECK_OK(edge_llm_decode(&d, x, pos, kc, vc, CONTEXT, got, ws, ws_size, NULL));
        ref_step(&M, pos, digits, rk, rv, want);
        double worst = 0, range = 0;
        for (int j = 0; j < VOCAB; j++) {
          worst = fmax(worst, fabs((double) got[j] - want[j]));
          range = fmax(range, fabs((double) want[j]));
        }
        /* float rounding only (an activation on an int8 rounding edge can move by one step) */
        EDGE_CHECK(worst <= 2e-3 * range, "digits %d step %d: |logit - reference| %g of %g", digits, pos, worst, range);
        if (n == 0) {
          memcpy(first[digits - 1][pos], got, sizeof(got));
        } else {
          EDGE_CHECK(memcmp(first[digits - 1][pos], got, sizeof(got)) == 0, "digits %d step %d differs from scalar",
                     digits, pos);
        }
      }
    }
  }
  /* typed errors */
  float x[DIM], out[VOCAB];
  EDGE_CHECK(edge_llm_decode(&d, x, CONTEXT, kc, vc, CONTEXT, out, ws, ws_size, NULL) == EDGE_ERR_SHAPE, "position");
  EDGE_CHECK(edge_llm_decode(&d, x, 0, kc, vc, CONTEXT, out, ws, ws_size - 1, NULL) == EDGE_ERR_INVALID_ARGUMENT,
             "workspace");
  d.activation_digits = 3;
  EDGE_CHECK(edge_llm_decode(&d, x, 0, kc, vc, CONTEXT, out, ws, ws_size, NULL) == EDGE_ERR_INVALID_ARGUMENT, "digits");
  free(ws);
  free(kc), free(vc), free(rk), free(rv);
  return edge_test_summary("test_q8_decoder");
}
