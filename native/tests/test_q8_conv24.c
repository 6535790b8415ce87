/* 2:4-sparse conv2d (im2col + 2:4 GEMM) on every ISA and 1..3 threads: bit-exact
 * against the dense conv2d and the naive reference on the same 2:4 weights;
 * the 2:4 check of packing and the refusals of each other's packed forms. */
#include <string.h>

#include "internal.h"
#include "reference/q8-conv-reference.h"
#include "conv_test_util.h"
#include "test_util.h"

/* batch, in_h, in_w, in_c, out_c, kernel_h, kernel_w, stride_h, stride_w,
 * dilation_h, dilation_w, pad_top, pad_left, pad_bottom, pad_right, groups */
static const edge_conv2d_params cases[] = {
    {1, 5, 7, 19, 23, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},    /* 1x1 direct (no im2col), K = 19 not a multiple of 4 */
    {2, 4, 3, 16, 12, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2},    /* 1x1 direct, groups 2, batch 2 */
    {1, 4, 4, 1, 8, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},      /* K = 1 */
    {1, 6, 7, 5, 17, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1},     /* 1x1 stride 2: im2col */
    {1, 7, 6, 13, 21, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},    /* 3x3 "same", groups of 4 across taps */
    {2, 9, 8, 16, 18, 3, 3, 2, 2, 1, 1, 0, 0, 1, 1, 1},    /* 3x3 stride 2, asymmetric padding, batch 2 */
    {1, 8, 8, 10, 6, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 2},     /* 5x5, groups 2 */
    {1, 16, 15, 3, 16, 7, 7, 2, 2, 1, 1, 3, 3, 3, 2, 1},   /* 7x7 stem on 3 channels: K = 147 */
    {1, 9, 9, 8, 9, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2, 1},      /* dilation 2 */
    {1, 7, 5, 12, 36, 3, 3, 2, 1, 1, 2, 1, 0, 2, 3, 12},   /* grouped, channel multiplier 3, mixed strides */
    {1, 4, 4, 300, 20, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},   /* large K = 2700 */
    {1, 3, 3, 4, 5, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0, 1},      /* M = 1 */
    {2, 24, 24, 8, 33, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},   /* several im2col tiles (M = 1152), N tail */
};

static size_t weight_index(const edge_conv2d_params* p, size_t o, size_t k) {
  /* k-th weight of output channel o in the (kh, kw, cin_g) order -> OIHW index. */
  const size_t cin_g = (size_t) (p->in_c / p->groups), taps = (size_t) p->kernel_h * p->kernel_w;
  const size_t t = k / cin_g, c = k % cin_g;
  return (o * cin_g + c) * taps + t;
}

/* Random 2:4 weights along (kh, kw, cin_g): 0, 1 or 2 non-zeros per group of 4. */
static void fill_2_4(const edge_conv2d_params* p, int8_t* w) {
  const size_t k = (size_t) (p->in_c / p->groups) * p->kernel_h * p->kernel_w;
  for (size_t o = 0; o < (size_t) p->out_c; o++) {
    for (size_t k0 = 0; k0 < k; k0 += 4) {
      const size_t len = EDGE_MIN((size_t) 4, k - k0);
      for (size_t i = 0; i < len; i++) w[weight_index(p, o, k0 + i)] = 0;
      const int keep = edge_test_rand_range(0, 8) == 0 ? edge_test_rand_range(0, 1) : 2;
      for (int j = 0; j < keep; j++) {
        const size_t i = (size_t) edge_test_rand_range(0, (int32_t) len - 1);
        w[weight_index(p, o, k0 + i)] = (int8_t) edge_test_rand_range(-127, 127);
      }
    }
  }
}

static void run_case(const edge_conv2d_params* p, edge_dtype x_dtype, edge_dtype y_dtype, int with_bias) {
  conv_test_case c;
  conv_test_case_init(&c, p, y_dtype, fill_2_4);
  uint8_t* dense = edge_test_aligned_alloc(c.y_size);
  const int32_t x_zp = edge_test_rand_range(edge_dtype_min(x_dtype), edge_dtype_max(x_dtype));
  const int32_t y_lo = y_dtype == EDGE_DTYPE_U8 ? 0 : -128, y_hi = y_dtype == EDGE_DTYPE_U8 ? 255 : 127;
  const int32_t y_zp = edge_test_rand_range(y_lo, y_hi);
  const edge_q8_requant rq = {c.mult, c.shift, y_zp, y_lo, y_hi};
  const int32_t* b = with_bias ? c.bias : NULL;
  EDGE_CHECK(edge_ref_q8_conv2d(p, x_dtype, c.x, x_zp, c.w, b, y_dtype, c.expected, &rq) == 0, "reference");

  const size_t dense_size = edge_q8_conv2d_packed_size(p), sparse_size = edge_q8_conv2d24_packed_size(p);
  EDGE_CHECK(dense_size > 0 && sparse_size > 0, "packed sizes");
  void* dense_packed = edge_test_aligned_alloc(dense_size);
  void* sparse_packed = edge_test_aligned_alloc(sparse_size);
  EDGE_CHECK_OK(edge_q8_conv2d_pack(p, c.w, b, dense_packed, dense_size));
  EDGE_CHECK_OK(edge_q8_conv2d24_pack(p, c.w, b, sparse_packed, sparse_size));
  edge_isa isa;
  EDGE_FOR_EACH_ISA(isa) {
    for (int32_t threads = 1; threads <= 3; threads++) {
      edge_threadpool* pool = NULL;
      EDGE_CHECK_OK(edge_threadpool_create(threads, &pool));
      const size_t ws_size = edge_q8_conv2d_workspace_size(p, threads);
      void* ws = ws_size ? edge_test_aligned_alloc(ws_size) : NULL;
      memset(c.y, 0xA5, c.y_size);
      EDGE_CHECK_OK(edge_q8_conv2d24(p, x_dtype, c.x, x_zp, sparse_packed, y_dtype, c.y, &rq, ws, ws_size, pool));
      EDGE_CHECK_OK(edge_q8_conv2d(p, x_dtype, c.x, x_zp, dense_packed, y_dtype, dense, &rq, ws, ws_size, pool));
      size_t bad = 0;
      while (bad < c.y_size && c.y[bad] == dense[bad] && c.y[bad] == c.expected[bad]) bad++;
      EDGE_CHECK(bad == c.y_size,
                 "conv24 " CONV_TEST_FMT ", x %d y %d, threads %d: byte %zu (channel %zu): sparse %u dense %u "
                 "reference %u",
                 CONV_TEST_ARGS(p), (int) x_dtype, (int) y_dtype, threads, bad, bad / c.y_elem % c.n,
                 bad < c.y_size ? c.y[bad] : 0u, bad < c.y_size ? dense[bad] : 0u,
                 bad < c.y_size ? c.expected[bad] : 0u);
      free(ws);
      edge_threadpool_destroy(pool);
    }
  }
  edge_isa_set(edge_isa_detect());
  if (p->batch > 1) { /* the packed form serves any batch */
    edge_conv2d_params one = *p;
    one.batch = 1;
    const size_t ws_size = edge_q8_conv2d_workspace_size(&one, 1);
    void* ws = ws_size ? edge_test_aligned_alloc(ws_size) : NULL;
    EDGE_CHECK_OK(edge_q8_conv2d24(&one, x_dtype, c.x, x_zp, sparse_packed, y_dtype, c.y, &rq, ws, ws_size, NULL));
    EDGE_CHECK(memcmp(c.y, c.expected, c.y_size / p->batch) == 0, "batch 1 of a packed buffer");
    free(ws);
  }
  conv_test_case_free(&c);
  free(dense);
  free(dense_packed), free(sparse_packed);
}

static void test_against_dense(void) {
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    run_case(&cases[i], EDGE_DTYPE_U8, EDGE_DTYPE_U8, 1);
    run_case(&cases[i], EDGE_DTYPE_S8, EDGE_DTYPE_S8, (int) (i % 2));
    run_case(&cases[i], i % 2 ? EDGE_DTYPE_U8 : EDGE_DTYPE_S8, EDGE_DTYPE_S32, 1);
  }
}

static void test_refusals(void) {
  /* 3x3 on 6 channels, groups 2: K = 27 per group, groups of 4 cross the taps. */
  const edge_conv2d_params p = {1, 6, 6, 6, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2};
  const size_t sparse_size = edge_q8_conv2d24_packed_size(&p), dense_size = edge_q8_conv2d_packed_size(&p);
  int8_t w[8 * 3 * 9];
  memset(w, 0, sizeof(w));
  void* packed = edge_test_aligned_alloc(sparse_size);
  void* dense_packed = edge_test_aligned_alloc(dense_size);
  EDGE_CHECK(edge_q8_conv2d24_pack(&p, w, NULL, packed, sparse_size - 1) == EDGE_ERR_INVALID_ARGUMENT, "small buffer");
  EDGE_CHECK(edge_q8_conv2d24_pack(&p, w, NULL, (uint8_t*) packed + 1, sparse_size) == EDGE_ERR_ALIGNMENT,
             "alignment");
  EDGE_CHECK(edge_q8_conv2d24_pack(&p, NULL, NULL, packed, sparse_size) == EDGE_ERR_INVALID_ARGUMENT, "NULL weights");
  /* Output channel 6 (group 1): k = 4..7 is (ky 0, kx 1, c 1), (0, 1, 2), (0, 2, 0), (0, 2, 1).
   * Dense OIHW neighbours (c, ky, kx) that are far apart in that order stay fine. */
  const size_t o = 6, cin_g = 3, taps = 9;
  w[(o * cin_g + 1) * taps + 1] = 5;                                      /* k = 4 */
  w[(o * cin_g + 0) * taps + 2] = 9;                                      /* k = 6 */
  w[(o * cin_g + 0) * taps + 0] = 3, w[(o * cin_g + 0) * taps + 1] = 3;  /* k = 0 and 3 */
  w[(o * cin_g + 0) * taps + 3] = 3, w[(o * cin_g + 0) * taps + 4] = 3;  /* OIHW-consecutive, k = 9 and 12 */
  EDGE_CHECK_OK(edge_q8_conv2d24_pack(&p, w, NULL, packed, sparse_size));
  w[(o * cin_g + 2) * taps + 1] = -7; /* k = 5: the 3rd non-zero of k = 4..7 */
  EDGE_CHECK(edge_q8_conv2d24_pack(&p, w, NULL, packed, sparse_size) == EDGE_ERR_NOT_2_4_SPARSE, "3 of 4 refused");
  EDGE_CHECK(strstr(edge_last_error(), "output channel 6 (group 1)") != NULL &&
                 strstr(edge_last_error(), "ky 0, kx 1, input channel 1") != NULL,
             "detail names the channel, group and tap: %s", edge_last_error());
  EDGE_CHECK(edge_q8_conv2d24(&p, EDGE_DTYPE_U8, w, 0, packed, EDGE_DTYPE_S32, w, NULL, NULL, 0, NULL) ==
                 EDGE_ERR_PACKED_FORMAT, "a buffer whose packing failed is refused");
  w[(o * cin_g + 2) * taps + 1] = 0;
  w[3] = -128;
  EDGE_CHECK(edge_q8_conv2d24_pack(&p, w, NULL, packed, sparse_size) == EDGE_ERR_INVALID_ARGUMENT &&
                 strstr(edge_last_error(), "group 0") != NULL,
             "-128 refused, naming the group: %s", edge_last_error());
  w[3] = 0;
  EDGE_CHECK_OK(edge_q8_conv2d24_pack(&p, w, NULL, packed, sparse_size));
  EDGE_CHECK_OK(edge_q8_conv2d_pack(&p, w, NULL, dense_packed, dense_size));

  uint8_t x[6 * 6 * 6] = {0}, y[6 * 6 * 8];
  int32_t mult[8], shift[8];
  for (int i = 0; i < 8; i++) mult[i] = 1 << 30, shift[i] = 31;
  const edge_q8_requant rq = {mult, shift, 0, 0, 255};
  const size_t ws_size = edge_q8_conv2d_workspace_size(&p, 1);
  void* ws = edge_test_aligned_alloc(ws_size);
  EDGE_CHECK_OK(edge_q8_conv2d24(&p, EDGE_DTYPE_U8, x, 0, packed, EDGE_DTYPE_U8, y, &rq, ws, ws_size, NULL));
  EDGE_CHECK(edge_q8_conv2d24(&p, EDGE_DTYPE_U8, x, 0, dense_packed, EDGE_DTYPE_U8, y, &rq, ws, ws_size, NULL) ==
                     EDGE_ERR_PACKED_FORMAT &&
                 strstr(edge_last_error(), "edge_q8_conv2d_pack") != NULL,
             "dense packed refused by conv2d24: %s", edge_last_error());
  EDGE_CHECK(edge_q8_conv2d(&p, EDGE_DTYPE_U8, x, 0, packed, EDGE_DTYPE_U8, y, &rq, ws, ws_size, NULL) ==
                 EDGE_ERR_PACKED_FORMAT, "sparse packed refused by conv2d");
  edge_conv2d_params other = p;
  other.stride_h = 2;
  EDGE_CHECK(edge_q8_conv2d24(&other, EDGE_DTYPE_U8, x, 0, packed, EDGE_DTYPE_U8, y, &rq, ws, ws_size, NULL) ==
                 EDGE_ERR_SHAPE, "packed for another stride");
  EDGE_CHECK(edge_q8_conv2d24(&p, EDGE_DTYPE_U8, x, 0, packed, EDGE_DTYPE_U8, y, &rq, ws, ws_size - 1, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT && strstr(edge_last_error(), "conv2d24: workspace") != NULL,
             "small workspace: %s", edge_last_error());
  EDGE_CHECK(edge_q8_conv2d24(&p, EDGE_DTYPE_U8, x, 0, packed, EDGE_DTYPE_U8, y, NULL, ws, ws_size, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "u8 output without requantization");
  edge_conv2d_params bad = p;
  bad.groups = 4;
  EDGE_CHECK(edge_q8_conv2d24_packed_size(&bad) == 0, "no packed size for bad groups");
  free(ws), free(packed), free(dense_packed);
}

int main(void) {
  test_against_dense();
  test_refusals();
  return edge_test_summary("test_q8_conv24");
}
