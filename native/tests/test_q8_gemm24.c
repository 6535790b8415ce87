/* 2:4-sparse INT8 GEMM against the naive reference: the edge-case shapes of
 * every micro-kernel tile (generated/q8-gemm24-shapes.h, from
 * native/kernels.json) with u8/s8 A and u8/s8/s32 output, large K, strides,
 * 1..3 threads, every ISA; then the error paths. EDGE_TEST_QUICK drops the
 * large-K shapes (for qemu), never an ISA. */
#include <stdlib.h>
#include <string.h>

#include "generated/q8-gemm24-shapes.h"
#include "reference/q8-gemm24-reference.h"
#include "test_util.h"

static edge_threadpool* pools[3];

/* Random 2:4 weights; mode 0..2 = at most that many non-zeros per group,
 * mode 3 = a random count per group. Values include the extremes +-127. */
static void fill_sparse(int8_t* w, int32_t n, int32_t k, int mode) {
  memset(w, 0, (size_t) n * (size_t) k);
  for (int32_t j = 0; j < n; j++) {
    for (int32_t g = 0; g < k; g += 4) {
      const int32_t width = k - g < 4 ? k - g : 4;
      int count = mode == 3 ? edge_test_rand_range(0, 2) : mode;
      if (count > width) count = width;
      for (int placed = 0; placed < count;) {
        const int32_t p = g + edge_test_rand_range(0, width - 1);
        int8_t* x = &w[(size_t) j * (size_t) k + (size_t) p];
        if (*x != 0) continue;
        const int32_t v = edge_test_rand_range(0, 9) == 0 ? (edge_test_rand() & 1 ? 127 : -127)
                                                          : edge_test_rand_range(-127, 127);
        *x = (int8_t) (v == 0 ? 1 : v);
        placed++;
      }
    }
  }
}

typedef struct gemm_case {
  int32_t m, n, k;
  const char* tile; /* whose edges the shape tests, or NULL */
  edge_dtype a_dtype, c_dtype;
  int sparsity_mode;
  int threads;
  size_t a_pad, c_pad; /* extra elements per row of A and C */
} gemm_case;

static void run_case(const gemm_case* tc) {
  const int32_t m = tc->m, n = tc->n, k = tc->k;
  const size_t a_stride = (size_t) k + tc->a_pad, c_stride = (size_t) n + tc->c_pad;
  const size_t c_elem = tc->c_dtype == EDGE_DTYPE_S32 ? 4 : 1;
  int8_t* w = malloc((size_t) n * (size_t) k);
  int32_t* bias = malloc(sizeof(int32_t) * (size_t) n);
  int32_t* mult = malloc(sizeof(int32_t) * (size_t) n);
  int32_t* shift = malloc(sizeof(int32_t) * (size_t) n);
  /* A is allocated exactly (no slack after the last row) so ASan catches over-reads. */
  uint8_t* a = malloc((size_t) (m - 1) * a_stride + (size_t) k);
  uint8_t* expected = malloc((size_t) m * c_stride * c_elem);
  uint8_t* actual = malloc((size_t) m * c_stride * c_elem);

  fill_sparse(w, n, k, tc->sparsity_mode);
  for (int32_t j = 0; j < n; j++) {
    bias[j] = edge_test_rand_range(-100000, 100000);
    mult[j] = edge_test_rand_range(INT32_C(1) << 30, INT32_MAX);
    shift[j] = edge_test_rand_range(36, 44);
  }
  edge_test_fill_u8(a, (size_t) (m - 1) * a_stride + (size_t) k, 0, 255);
  const int32_t a_zp = tc->a_dtype == EDGE_DTYPE_U8 ? edge_test_rand_range(0, 255) : edge_test_rand_range(-128, 127);
  edge_q8_requant rq = {mult, shift, 0, 0, 0};
  if (tc->c_dtype != EDGE_DTYPE_S32) {
    const int32_t lo = tc->c_dtype == EDGE_DTYPE_U8 ? 0 : -128, hi = lo + 255;
    rq.output_zero_point = edge_test_rand_range(lo, hi);
    rq.output_min = edge_test_rand_range(lo, lo + 40);
    rq.output_max = edge_test_rand_range(hi - 40, hi);
  }

  const size_t size = edge_q8_gemm24_packed_size(n, k);
  void* packed = edge_test_aligned_alloc(size);
  EDGE_CHECK_OK(edge_q8_gemm24_pack(n, k, w, bias, packed, size));
  edge_q8_gemm24_reference(m, n, k, tc->a_dtype, a, a_stride, a_zp, w, bias, tc->c_dtype, expected, c_stride, &rq);

  edge_isa isa;
  EDGE_FOR_EACH_ISA(isa) {
    memset(actual, 0xA5, (size_t) m * c_stride * c_elem);
    EDGE_CHECK_OK(edge_q8_gemm24(m, n, k, tc->a_dtype, a, a_stride, a_zp, packed, tc->c_dtype, actual, c_stride, &rq,
                                 pools[tc->threads - 1]));
    int bad = 0;
    for (int32_t i = 0; i < m && !bad; i++) {
      bad = memcmp(expected + (size_t) i * c_stride * c_elem, actual + (size_t) i * c_stride * c_elem,
                   (size_t) n * c_elem) != 0;
      /* The padding between rows of C must be left alone. */
      for (size_t p = (size_t) n * c_elem; p < c_stride * c_elem && !bad; p++) {
        bad = actual[(size_t) i * c_stride * c_elem + p] != 0xA5;
      }
    }
    EDGE_CHECK(!bad, "m %d n %d k %d (tile %s) a %d c %d mode %d threads %d a_pad %zu c_pad %zu", (int) m, (int) n,
               (int) k, tc->tile ? tc->tile : "-", (int) tc->a_dtype, (int) tc->c_dtype, tc->sparsity_mode, tc->threads, tc->a_pad, tc->c_pad);
  }
  edge_isa_set(edge_isa_detect());
  free(packed);
  free(w);
  free(bias);
  free(mult);
  free(shift);
  free(a);
  free(expected);
  free(actual);
}

static gemm_case rotated_case(int32_t m, int32_t n, int32_t k, int counter) {
  static const edge_dtype c_types[] = {EDGE_DTYPE_U8, EDGE_DTYPE_S8, EDGE_DTYPE_S32};
  /* Rotate through the sparsity modes, thread counts and strides. */
  gemm_case tc = {.m = m, .n = n, .k = k};
  tc.a_dtype = counter % 2 == 0 ? EDGE_DTYPE_U8 : EDGE_DTYPE_S8;
  tc.c_dtype = c_types[(counter / 2) % 3];
  tc.sparsity_mode = (counter / 3) % 4;
  tc.threads = 1 + counter % 3;
  tc.a_pad = counter % 5 == 0 ? (size_t) edge_test_rand_range(1, 9) : 0;
  tc.c_pad = counter % 7 == 0 ? (size_t) edge_test_rand_range(1, 5) : 0;
  return tc;
}

/* Every tile's edge shapes with every pair of A and C dtypes. */
static void test_shapes(void) {
  int counter = 0;
  for (size_t s = 0; s < EDGE_TEST_COUNT(edge_test_q8_gemm24_shapes); s++) {
    const edge_test_gemm_shape* shape = &edge_test_q8_gemm24_shapes[s];
    for (int pair = 0; pair < 6; pair++, counter++) {
      gemm_case tc = rotated_case(shape->m, shape->n, shape->k, counter);
      tc.tile = shape->tile;
      tc.a_dtype = pair % 2 == 0 ? EDGE_DTYPE_U8 : EDGE_DTYPE_S8;
      tc.c_dtype = pair / 2 == 0 ? EDGE_DTYPE_U8 : pair / 2 == 1 ? EDGE_DTYPE_S8 : EDGE_DTYPE_S32;
      run_case(&tc);
    }
  }
}

/* Large K: the gemv path and a tile with tails. */
static void test_large_k(int quick) {
  static const int32_t shapes[][3] = {{1, 33, 4096}, {5, 16, 4096}, {17, 40, 4093}};
  for (size_t s = 0; s < (quick ? 0 : EDGE_TEST_COUNT(shapes)); s++) {
    for (int counter = 0; counter < 2; counter++) {
      const gemm_case tc = rotated_case(shapes[s][0], shapes[s][1], shapes[s][2], counter + (int) s);
      run_case(&tc);
    }
  }
}

/* Every dtype pair on a few shapes with tails everywhere. */
static void test_dtypes(void) {
  static const edge_dtype c_types[] = {EDGE_DTYPE_U8, EDGE_DTYPE_S8, EDGE_DTYPE_S32};
  for (int ai = 0; ai < 2; ai++) {
    for (int ci = 0; ci < 3; ci++) {
      for (int threads = 1; threads <= 3; threads++) {
        gemm_case tc = {9, 37, 45, NULL, ai == 0 ? EDGE_DTYPE_U8 : EDGE_DTYPE_S8, c_types[ci], 3, threads, 3, 2};
        run_case(&tc);
      }
    }
  }
}

/* int32 accumulation wraps mod 2^32, the same on every path. */
static void test_wraparound(void) {
  const int32_t m = 2, n = 17, k = 65536;
  int8_t* w = malloc((size_t) n * k);
  uint8_t* a = malloc((size_t) m * k);
  int32_t bias[17], expected[2 * 17], actual[2 * 17];
  for (size_t i = 0; i < (size_t) n * k; i++) w[i] = (i % 4) < 2 ? 127 : 0;
  memset(a, 255, (size_t) m * k);
  for (int32_t j = 0; j < n; j++) bias[j] = INT32_MAX - j;
  const size_t size = edge_q8_gemm24_packed_size(n, k);
  void* packed = edge_test_aligned_alloc(size);
  EDGE_CHECK_OK(edge_q8_gemm24_pack(n, k, w, bias, packed, size));
  edge_q8_gemm24_reference(m, n, k, EDGE_DTYPE_U8, a, k, 0, w, bias, EDGE_DTYPE_S32, expected, n, NULL);
  edge_isa isa;
  EDGE_FOR_EACH_ISA(isa) {
    memset(actual, 0, sizeof(actual));
    EDGE_CHECK_OK(edge_q8_gemm24(m, n, k, EDGE_DTYPE_U8, a, k, 0, packed, EDGE_DTYPE_S32, actual, n, NULL, pools[1]));
    EDGE_CHECK(memcmp(expected, actual, sizeof(actual)) == 0, "wrapping accumulation (acc[0] %d vs %d)",
               (int) actual[0], (int) expected[0]);
  }
  EDGE_CHECK(expected[0] < 0, "the test does wrap");
  edge_isa_set(edge_isa_detect());
  free(packed);
  free(w);
  free(a);
}

static int detail_has(const char* needle) { return strstr(edge_last_error(), needle) != NULL; }

static void test_errors(void) {
  const int32_t n = 8, k = 12;
  int8_t w[8 * 12];
  memset(w, 0, sizeof(w));
  w[0] = 3;
  const size_t size = edge_q8_gemm24_packed_size(n, k);
  EDGE_CHECK(size % 64 == 0 && size > 0, "packed size %zu", size);
  EDGE_CHECK(edge_q8_gemm24_packed_size(0, 4) == 0 && edge_q8_gemm24_packed_size(4, 65537) == 0, "bad shape: 0");
  uint8_t* buffer = edge_test_aligned_alloc(size + 64);

  /* Not 2:4: channel 5, group 2 (k 8..11) has 3 non-zeros. */
  w[5 * k + 8] = 1;
  w[5 * k + 9] = -1;
  w[5 * k + 11] = 7;
  EDGE_CHECK(edge_q8_gemm24_pack(n, k, w, NULL, buffer, size) == EDGE_ERR_NOT_2_4_SPARSE, "3 of 4 refused");
  EDGE_CHECK(detail_has("channel 5") && detail_has("group 2") && detail_has("k 8..11") && detail_has("3 non-zeros"),
             "detail names channel, group and count: %s", edge_last_error());
  w[5 * k + 11] = 0;
  w[2 * k + 1] = -128;
  EDGE_CHECK(edge_q8_gemm24_pack(n, k, w, NULL, buffer, size) == EDGE_ERR_INVALID_ARGUMENT, "-128 refused");
  EDGE_CHECK(detail_has("[2][1]"), "detail names the weight: %s", edge_last_error());
  w[2 * k + 1] = 0;
  EDGE_CHECK(edge_q8_gemm24_pack(n, k, w, NULL, buffer + 1, size) == EDGE_ERR_ALIGNMENT, "misaligned pack");
  EDGE_CHECK(edge_q8_gemm24_pack(n, k, w, NULL, buffer, size - 1) == EDGE_ERR_INVALID_ARGUMENT, "small buffer");
  EDGE_CHECK(edge_q8_gemm24_pack(n, k, NULL, NULL, buffer, size) == EDGE_ERR_INVALID_ARGUMENT, "null weights");
  EDGE_CHECK(edge_q8_gemm24_pack(0, k, w, NULL, buffer, size) == EDGE_ERR_SHAPE, "n = 0");
  EDGE_CHECK_OK(edge_q8_gemm24_pack(n, k, w, NULL, buffer, size));
  EDGE_CHECK(edge_last_error()[0] == '\0', "success clears the detail");

  uint8_t a[3 * 12] = {0};
  uint8_t c[3 * 8];
  int32_t mult[9], shift[9]; /* one more than n for the wrong-n call */
  for (int j = 0; j < 9; j++) {
    mult[j] = 1 << 30;
    shift[j] = 40;
  }
  edge_q8_requant rq = {mult, shift, 0, 0, 255};
  EDGE_CHECK_OK(edge_q8_gemm24(3, n, k, EDGE_DTYPE_U8, a, k, 0, buffer, EDGE_DTYPE_U8, c, n, &rq, NULL));
  EDGE_CHECK_OK(edge_q8_gemm24(0, n, k, EDGE_DTYPE_U8, a, k, 0, buffer, EDGE_DTYPE_U8, c, n, &rq, NULL));
  EDGE_CHECK(edge_q8_gemm24(3, n + 1, k, EDGE_DTYPE_U8, a, k, 0, buffer, EDGE_DTYPE_U8, c, n + 1, &rq, NULL) ==
                 EDGE_ERR_SHAPE, "wrong n");
  EDGE_CHECK(detail_has("8 x 12"), "detail gives the packed shape: %s", edge_last_error());
  EDGE_CHECK(edge_q8_gemm24(3, n, k - 1, EDGE_DTYPE_U8, a, k, 0, buffer, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_SHAPE, "wrong k");
  EDGE_CHECK(edge_q8_gemm24(3, n, k, EDGE_DTYPE_U8, a, k - 1, 0, buffer, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_SHAPE, "a_stride < k");
  EDGE_CHECK(edge_q8_gemm24(3, n, k, EDGE_DTYPE_U8, a, k, 0, buffer + 8, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_ALIGNMENT, "misaligned packed");
  EDGE_CHECK(edge_q8_gemm24(3, n, k, EDGE_DTYPE_U8, NULL, k, 0, buffer, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "null a");
  EDGE_CHECK(edge_q8_gemm24(3, n, k, EDGE_DTYPE_U8, a, k, 256, buffer, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "u8 zero point 256");
  EDGE_CHECK(edge_q8_gemm24(3, n, k, EDGE_DTYPE_S8, a, k, 128, buffer, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "s8 zero point 128");
  EDGE_CHECK(edge_q8_gemm24(3, n, k, EDGE_DTYPE_F32, a, k, 0, buffer, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "f32 input");
  EDGE_CHECK(edge_q8_gemm24(3, n, k, EDGE_DTYPE_U8, a, k, 0, buffer, EDGE_DTYPE_F32, c, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "f32 output");
  EDGE_CHECK(edge_q8_gemm24(3, n, k, EDGE_DTYPE_U8, a, k, 0, buffer, EDGE_DTYPE_U8, c, n, NULL, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "u8 output without requant");
  mult[3] = 5;
  EDGE_CHECK(edge_q8_gemm24(3, n, k, EDGE_DTYPE_U8, a, k, 0, buffer, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "bad multiplier");
  EDGE_CHECK(detail_has("channel 3"), "detail names the channel: %s", edge_last_error());
  mult[3] = 1 << 30;
  rq.output_min = 200;
  rq.output_max = 100;
  EDGE_CHECK(edge_q8_gemm24(3, n, k, EDGE_DTYPE_U8, a, k, 0, buffer, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "inverted clamp");
  buffer[0] ^= 0xFF;
  EDGE_CHECK(edge_q8_gemm24(3, n, k, EDGE_DTYPE_U8, a, k, 0, buffer, EDGE_DTYPE_S32, c, n, NULL, NULL) ==
                 EDGE_ERR_PACKED_FORMAT, "bad magic");
  free(buffer);
}

int main(void) {
  const int quick = getenv("EDGE_TEST_QUICK") != NULL;
  edge_test_seed(24);
  for (int i = 0; i < 3; i++) {
    if (edge_threadpool_create(i + 1, &pools[i]) != EDGE_OK) return 1;
  }
  test_errors();
  test_dtypes();
  test_wraparound();
  test_shapes();
  test_large_k(quick);
  for (int i = 0; i < 3; i++) edge_threadpool_destroy(pools[i]);
  return edge_test_summary("test_q8_gemm24");
}
