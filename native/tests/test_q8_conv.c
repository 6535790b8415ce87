/* conv2d (im2col + dense GEMM) on every ISA and 1..3 threads, bit-exact
 * against the naive reference; parameter checks and refusals. */
#include <string.h>

#include "internal.h"
#include "reference/q8-conv-reference.h"
#include "conv_test_util.h"
#include "test_util.h"

/* batch, in_h, in_w, in_c, out_c, kernel_h, kernel_w, stride_h, stride_w,
 * dilation_h, dilation_w, pad_top, pad_left, pad_bottom, pad_right, groups */
static const edge_conv2d_params cases[] = {
    {1, 5, 7, 19, 23, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},    /* 1x1 direct (no im2col), N and K not multiples of 16 */
    {2, 4, 3, 8, 12, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2},     /* 1x1 direct, groups 2, batch 2 */
    {1, 4, 4, 1, 8, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},      /* K = 1 */
    {1, 6, 7, 5, 17, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1},     /* 1x1 stride 2: im2col */
    {1, 7, 6, 13, 21, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},    /* 3x3 "same" */
    {2, 9, 8, 6, 18, 3, 3, 2, 2, 1, 1, 0, 0, 1, 1, 1},     /* 3x3 stride 2, asymmetric padding, batch 2 */
    {1, 8, 8, 10, 6, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 2},     /* 5x5, groups 2 */
    {1, 16, 15, 3, 16, 7, 7, 2, 2, 1, 1, 3, 3, 3, 2, 1},   /* 7x7 stem on 3 channels */
    {1, 9, 9, 8, 9, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2, 1},      /* dilation 2 */
    {1, 6, 6, 24, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 24},   /* depthwise through the GEMM */
    {1, 7, 5, 12, 36, 3, 3, 2, 1, 1, 2, 1, 0, 2, 3, 12},   /* grouped, channel multiplier 3, mixed strides */
    {1, 4, 4, 300, 20, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},   /* large K = 2700 */
    {1, 3, 3, 4, 5, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0, 1},      /* M = 1 */
    {1, 5, 6, 7, 9, 3, 1, 1, 2, 1, 1, 2, 0, 0, 1, 1},      /* 3x1 kernel, uneven padding */
    {2, 24, 24, 3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},    /* several im2col tiles (M = 1152) */
};

static void run_case(const edge_conv2d_params* p, edge_dtype x_dtype, edge_dtype y_dtype, int with_bias) {
  conv_test_case c;
  conv_test_case_init(&c, p, y_dtype, NULL);
  const int32_t x_zp = edge_test_rand_range(edge_dtype_min(x_dtype), edge_dtype_max(x_dtype));
  const int32_t y_lo = y_dtype == EDGE_DTYPE_U8 ? 0 : -128, y_hi = y_dtype == EDGE_DTYPE_U8 ? 255 : 127;
  const int32_t y_zp = edge_test_rand_range(y_lo, y_hi);
  const int32_t y_min = edge_test_rand_range(0, 1) ? y_lo : edge_test_rand_range(y_lo, y_zp);
  const int32_t y_max = edge_test_rand_range(0, 1) ? y_hi : edge_test_rand_range(y_zp, y_hi);
  const edge_q8_requant rq = {c.mult, c.shift, y_zp, y_min, y_max};
  const int32_t* b = with_bias ? c.bias : NULL;
  EDGE_CHECK(edge_ref_q8_conv2d(p, x_dtype, c.x, x_zp, c.w, b, y_dtype, c.expected, &rq) == 0, "reference");

  const size_t packed_size = edge_q8_conv2d_packed_size(p);
  EDGE_CHECK(packed_size > 0, "packed size");
  void* packed = edge_test_aligned_alloc(packed_size);
  EDGE_CHECK_OK(edge_q8_conv2d_pack(p, c.w, b, packed, packed_size));
  edge_isa isa;
  EDGE_FOR_EACH_ISA(isa) {
    for (int32_t threads = 1; threads <= 3; threads++) {
      edge_threadpool* pool = NULL;
      EDGE_CHECK_OK(edge_threadpool_create(threads, &pool));
      const size_t ws_size = edge_q8_conv2d_workspace_size(p, threads);
      void* ws = ws_size ? edge_test_aligned_alloc(ws_size) : NULL;
      memset(c.y, 0xA5, c.y_size);
      EDGE_CHECK_OK(edge_q8_conv2d(p, x_dtype, c.x, x_zp, packed, y_dtype, c.y, &rq, ws, ws_size, pool));
      size_t bad = 0;
      while (bad < c.y_size && c.y[bad] == c.expected[bad]) bad++;
      EDGE_CHECK(bad == c.y_size,
                 "conv " CONV_TEST_FMT ", x %d y %d, threads %d: byte %zu (channel %zu)", CONV_TEST_ARGS(p),
                 (int) x_dtype, (int) y_dtype, threads, bad, bad / c.y_elem % c.n);
      if (ws_size > 0 && threads == 2) {
        EDGE_CHECK(edge_q8_conv2d(p, x_dtype, c.x, x_zp, packed, y_dtype, c.y, &rq, ws, ws_size - 1, pool) ==
                       EDGE_ERR_INVALID_ARGUMENT && strstr(edge_last_error(), "workspace") != NULL,
                   "too small workspace refused: %s", edge_last_error());
        EDGE_CHECK(edge_q8_conv2d(p, x_dtype, c.x, x_zp, packed, y_dtype, c.y, &rq, NULL, ws_size, pool) ==
                       EDGE_ERR_INVALID_ARGUMENT, "NULL workspace refused");
      }
      free(ws);
      edge_threadpool_destroy(pool);
    }
  }
  edge_isa_set(edge_isa_detect());
  if (p->batch > 1) { /* the packed form serves any batch */
    edge_conv2d_params one = *p;
    one.batch = 1;
    const size_t ws_size = edge_q8_conv2d_workspace_size(&one, 1);
    EDGE_CHECK(ws_size <= edge_q8_conv2d_workspace_size(p, 1), "a smaller batch needs no more workspace");
    void* ws = ws_size ? edge_test_aligned_alloc(ws_size) : NULL;
    EDGE_CHECK_OK(edge_q8_conv2d(&one, x_dtype, c.x, x_zp, packed, y_dtype, c.y, &rq, ws, ws_size, NULL));
    EDGE_CHECK(memcmp(c.y, c.expected, c.y_size / p->batch) == 0, "batch 1 of a packed buffer");
    free(ws);
  }
  conv_test_case_free(&c);
  free(packed);
}

static void test_against_reference(void) {
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    run_case(&cases[i], EDGE_DTYPE_U8, EDGE_DTYPE_U8, 1);
    run_case(&cases[i], EDGE_DTYPE_S8, EDGE_DTYPE_S8, (int) (i % 2));
    run_case(&cases[i], i % 2 ? EDGE_DTYPE_U8 : EDGE_DTYPE_S8, EDGE_DTYPE_S32, 1);
  }
}

static void test_output_size(void) {
  const edge_conv2d_params good = {1, 8, 8, 4, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 2};
  int32_t oh = 0, ow = 0;
  EDGE_CHECK_OK(edge_conv2d_output_size(&good, &oh, &ow));
  EDGE_CHECK(oh == 4 && ow == 4, "output %dx%d", oh, ow);
  struct { edge_conv2d_params p; const char* field; } bad[8];
  for (int i = 0; i < 8; i++) bad[i].p = good;
  bad[0].p.batch = 0, bad[0].field = "batch";
  bad[1].p.stride_w = 0, bad[1].field = "stride_w";
  bad[2].p.dilation_h = -1, bad[2].field = "dilation_h";
  bad[3].p.pad_left = -1, bad[3].field = "pad_left";
  bad[4].p.groups = 3, bad[4].field = "groups";
  bad[5].p.kernel_h = 11, bad[5].field = "kernel_h";
  bad[6].p.kernel_w = 5, bad[6].p.dilation_w = 3, bad[6].field = "kernel_w";
  bad[7].p.out_c = 0, bad[7].field = "out_c";
  for (int i = 0; i < 8; i++) {
    const edge_status s = edge_conv2d_output_size(&bad[i].p, &oh, &ow);
    EDGE_CHECK(s == EDGE_ERR_INVALID_ARGUMENT || s == EDGE_ERR_SHAPE, "bad %s refused", bad[i].field);
    EDGE_CHECK(strstr(edge_last_error(), bad[i].field) != NULL, "detail names %s: %s", bad[i].field, edge_last_error());
    EDGE_CHECK(edge_q8_conv2d_packed_size(&bad[i].p) == 0, "no packed size for bad %s", bad[i].field);
  }
  EDGE_CHECK(edge_conv2d_output_size(NULL, &oh, &ow) == EDGE_ERR_INVALID_ARGUMENT, "NULL params");
  edge_conv2d_params huge_k = good;
  huge_k.in_c = huge_k.out_c = 8000, huge_k.groups = 1;
  EDGE_CHECK(edge_q8_conv2d_packed_size(&huge_k) == 0 && strstr(edge_last_error(), "65536") != NULL,
             "K over the GEMM limit: %s", edge_last_error());
}

static void test_refusals(void) {
  const edge_conv2d_params p = {1, 6, 6, 4, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  const size_t packed_size = edge_q8_conv2d_packed_size(&p);
  int8_t w[8 * 4 * 9];
  memset(w, 1, sizeof(w));
  void* packed = edge_test_aligned_alloc(packed_size);
  EDGE_CHECK(edge_q8_conv2d_pack(&p, w, NULL, packed, packed_size - 1) == EDGE_ERR_INVALID_ARGUMENT, "small buffer");
  EDGE_CHECK(edge_q8_conv2d_pack(&p, w, NULL, (uint8_t*) packed + 1, packed_size) == EDGE_ERR_ALIGNMENT, "alignment");
  w[5 * 36 + 3] = -128;
  EDGE_CHECK(edge_q8_conv2d_pack(&p, w, NULL, packed, packed_size) != EDGE_OK, "-128 weight refused");
  w[5 * 36 + 3] = 0;
  EDGE_CHECK_OK(edge_q8_conv2d_pack(&p, w, NULL, packed, packed_size));
  uint8_t x[6 * 6 * 4] = {0}, y[6 * 6 * 8];
  int32_t mult[8], shift[8];
  for (int i = 0; i < 8; i++) mult[i] = 1 << 30, shift[i] = 31;
  const edge_q8_requant rq = {mult, shift, 0, 0, 255};
  const size_t ws_size = edge_q8_conv2d_workspace_size(&p, 1);
  void* ws = edge_test_aligned_alloc(ws_size);
  EDGE_CHECK_OK(edge_q8_conv2d(&p, EDGE_DTYPE_U8, x, 0, packed, EDGE_DTYPE_U8, y, &rq, ws, ws_size, NULL));
  edge_conv2d_params other = p;
  other.stride_h = 2;
  EDGE_CHECK(edge_q8_conv2d(&other, EDGE_DTYPE_U8, x, 0, packed, EDGE_DTYPE_U8, y, &rq, ws, ws_size, NULL) ==
                 EDGE_ERR_SHAPE, "packed for another stride");
  EDGE_CHECK(edge_q8_conv2d(&p, EDGE_DTYPE_F32, x, 0, packed, EDGE_DTYPE_U8, y, &rq, ws, ws_size, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "f32 input");
  EDGE_CHECK(edge_q8_conv2d(&p, EDGE_DTYPE_S8, x, 128, packed, EDGE_DTYPE_U8, y, &rq, ws, ws_size, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "zero point out of range");
  EDGE_CHECK(edge_q8_conv2d(&p, EDGE_DTYPE_U8, x, 0, packed, EDGE_DTYPE_U8, y, NULL, ws, ws_size, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "u8 output without requantization");
  memset(packed, 0, 4);
  EDGE_CHECK(edge_q8_conv2d(&p, EDGE_DTYPE_U8, x, 0, packed, EDGE_DTYPE_U8, y, &rq, ws, ws_size, NULL) ==
                 EDGE_ERR_PACKED_FORMAT, "bad magic");
  free(ws);
  free(packed);
}

int main(void) {
  test_against_reference();
  test_output_size();
  test_refusals();
  return edge_test_summary("test_q8_conv");
}
