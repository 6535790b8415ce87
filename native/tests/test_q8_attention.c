/* q8-attention on every ISA against a double-precision loop, on one thread and on a pool.
 *
 * Tolerance: K and V here stay within 127 codes of their zero points (exact int8
 * weights), so the error is the output's rounding plus the probabilities' 8 bits:
 * at most 2 output codes for these sizes and ranges, and the same codes on a pool
 * as on one thread.
 */
#include <math.h>
#include <string.h>

#include "test_util.h"

enum { B = 2, H = 3, SQ = 5, SK = 19, D = 8 };

static double real_of(uint8_t code, float scale, int32_t zero_point) { return ((double) code - zero_point) * scale; }

/* y[b][h][i][:] in double, then quantized with y's parameters. */
static void reference(const edge_q8_attention_params* p, const uint8_t* q, const uint8_t* kt, const uint8_t* v,
                      uint8_t* y) {
  for (int bh = 0; bh < B * H; bh++) {
    const int b = bh / H;
    for (int i = 0; i < SQ; i++) {
      double s[SK], max = -INFINITY, sum = 0.0;
      for (int j = 0; j < SK; j++) {
        double dot = 0.0;
        for (int k = 0; k < D; k++) {
          dot += real_of(q[(bh * SQ + i) * D + k], p->q_scale, p->q_zero_point) *
                 real_of(kt[(bh * D + k) * SK + j], p->kt_scale, p->kt_zero_point);
        }
        s[j] = dot * p->scale + (p->mask != NULL ? p->mask[b * p->mask_strides[0] + j * p->mask_strides[3]] : 0.0);
        max = s[j] > max ? s[j] : max;
      }
      for (int j = 0; j < SK; j++) sum += (s[j] = exp(s[j] - max));
      for (int k = 0; k < D; k++) {
        double out = 0.0;
        for (int j = 0; j < SK; j++) out += s[j] / sum * real_of(v[(bh * SK + j) * D + k], p->v_scale, p->v_zero_point);
        const double code = nearbyint(out / p->y_scale) + p->y_zero_point;
        y[(bh * SQ + i) * D + k] = (uint8_t) (code < 0 ? 0 : code > 255 ? 255 : code);
      }
    }
  }
}

int main(void) {
  uint8_t q[B * H * SQ * D], kt[B * H * D * SK], v[B * H * SK * D], want[B * H * SQ * D];
  uint8_t y[B * H * SQ * D], y_pool[B * H * SQ * D];
  edge_test_fill_u8(q, sizeof(q), 20, 235);
  edge_test_fill_u8(kt, sizeof(kt), 30, 225);
  edge_test_fill_u8(v, sizeof(v), 40, 220);
  float mask[B * SK] = {0};
  for (int j = SK - 4; j < SK; j++) mask[SK + j] = -10000.0f; /* padding in the second sample */
  edge_q8_attention_params p = {
      .batch = B, .heads = H, .s_q = SQ, .s_k = SK, .d = D, .dtype = EDGE_DTYPE_U8,
      .q_scale = 0.02f, .kt_scale = 0.03f, .v_scale = 0.05f, .y_scale = 0.02f,
      .q_zero_point = 128, .kt_zero_point = 125, .v_zero_point = 131, .y_zero_point = 128,
      .scale = 0.35f, .mask = mask, .mask_strides = {SK, 0, 0, 1},
  };
  reference(&p, q, kt, v, want);
  edge_threadpool* pool = NULL;
  EDGE_CHECK_OK(edge_threadpool_create(2, &pool));
  const size_t size = edge_q8_attention_workspace_size(&p, 2);
  void* workspace = edge_test_aligned_alloc(size);
  edge_isa isa;
  EDGE_FOR_EACH_ISA(isa) {
    EDGE_CHECK_OK(edge_q8_attention(&p, q, kt, v, y, workspace, size, NULL));
    EDGE_CHECK_OK(edge_q8_attention(&p, q, kt, v, y_pool, workspace, size, pool));
    int worst = 0;
    for (size_t i = 0; i < sizeof(y); i++) {
      const int e = abs((int) y[i] - (int) want[i]);
      worst = e > worst ? e : worst;
    }
    EDGE_CHECK(worst <= 2, "max error %d codes", worst);
    EDGE_CHECK(memcmp(y, y_pool, sizeof(y)) == 0, "a pool of 2 gave other codes than one thread");
  }
  /* Bad arguments: typed errors, nothing written. */
  EDGE_CHECK(edge_q8_attention(&p, q, kt, v, y, workspace, size / 4, NULL) == EDGE_ERR_INVALID_ARGUMENT,
             "small workspace");
  edge_q8_attention_params bad = p;
  bad.y_scale = 0.0f;
  EDGE_CHECK(edge_q8_attention(&bad, q, kt, v, y, workspace, size, NULL) == EDGE_ERR_INVALID_ARGUMENT, "scale 0");
  bad = p;
  bad.d = 0;
  EDGE_CHECK(edge_q8_attention(&bad, q, kt, v, y, workspace, size, NULL) == EDGE_ERR_SHAPE, "d = 0");
  bad = p;
  bad.kt_zero_point = 300;
  EDGE_CHECK(edge_q8_attention(&bad, q, kt, v, y, workspace, size, NULL) == EDGE_ERR_INVALID_ARGUMENT, "zero point");
  free(workspace);
  edge_threadpool_destroy(pool);
  return edge_test_summary("test_q8_attention");
}
