/* Dense INT8 GEMM against the naive reference on every ISA: the edge-case
 * shapes of every micro-kernel tile (generated/q8-gemm-shapes.h, from
 * native/kernels.json), each with u8 and s8 A and u8, s8 and s32 outputs,
 * random zero points and clamps, strided A and C, 1 to 3 threads, 8-bit and
 * 7-bit weights (the flagged packing that AVX2 runs through vpmaddubsw);
 * large K and int32 wrap-around; then the error paths. */
#include <string.h>

#include "internal.h"
#include "q8-gemm/q8-gemm.h"
#include "reference/q8-gemm-reference.h"
#include "generated/q8-gemm-shapes.h"
#include "test_util.h"

static edge_threadpool* pools[4]; /* pools[t] has t threads; pools[1] stays NULL (inline) */

static size_t dtype_size(edge_dtype d) { return d == EDGE_DTYPE_S32 ? 4 : 1; }

typedef struct case_spec {
  int32_t m, n, k;
  const char* tile; /* whose edges the shape tests, or NULL */
  edge_dtype a_dtype, c_dtype;
  int extreme; /* saturating inputs and bias: exercises int32 wrap-around */
  int threads;
  int w7; /* 7-bit weights ([-63, 63]), packed with weight_bits 7 */
} case_spec;

/* Runs one case on every ISA and compares each with the reference. */
static void run_case(const case_spec* cs) {
  const int32_t m = cs->m, n = cs->n, k = cs->k;
  const size_t a_stride = (size_t) k + (size_t) edge_test_rand_range(0, 3);
  const size_t c_stride = (size_t) n + (size_t) edge_test_rand_range(0, 3);
  const size_t c_bytes = (size_t) m * c_stride * dtype_size(cs->c_dtype) + 1;
  /* A exactly as large as the last row needs, so ASan catches over-reads. */
  const size_t a_bytes = m == 0 ? 1 : (size_t) (m - 1) * a_stride + (size_t) k;
  uint8_t* a = malloc(a_bytes);
  int8_t* w = malloc((size_t) n * k);
  int32_t* bias = malloc(sizeof(int32_t) * n);
  int32_t* mult = malloc(sizeof(int32_t) * n);
  int32_t* shift = malloc(sizeof(int32_t) * n);
  uint8_t* expected = malloc(c_bytes);
  uint8_t* actual = malloc(c_bytes);
  const int a_signed = cs->a_dtype == EDGE_DTYPE_S8;
  int32_t a_zp;
  const int w_max = cs->w7 ? 63 : 127;
  if (cs->extreme) {
    memset(a, a_signed ? 0x80 : 0xFF, a_bytes);
    memset(w, a_signed ? -w_max : w_max, (size_t) n * k);
    a_zp = 0;
  } else {
    edge_test_fill_u8(a, a_bytes, 0, 255);
    edge_test_fill_s8(w, (size_t) n * k, -w_max, w_max);
    if (cs->w7 && n * k > 1) { /* both ends of the 7-bit range */
      w[0] = -63;
      w[(size_t) n * k - 1] = 63;
    }
    a_zp = a_signed ? edge_test_rand_range(-128, 127) : edge_test_rand_range(0, 255);
  }
  int log_k = 0;
  while ((1 << log_k) < k) log_k++;
  for (int32_t j = 0; j < n; j++) {
    bias[j] = cs->extreme ? INT32_MAX - j : edge_test_rand_range(-100000, 100000);
    mult[j] = edge_test_rand_range(1 << 30, INT32_MAX);
    shift[j] = EDGE_MIN(62, EDGE_MAX(31, 31 + 6 + log_k / 2 + edge_test_rand_range(-2, 3)));
  }
  edge_q8_requant rq = {.multiplier = mult, .shift = shift};
  if (cs->c_dtype != EDGE_DTYPE_S32) {
    const int32_t lo = edge_dtype_min(cs->c_dtype), hi = edge_dtype_max(cs->c_dtype);
    rq.output_zero_point = edge_test_rand_range(lo, hi);
    if (edge_test_rand() % 2) { /* ReLU6-style clamp */
      rq.output_min = rq.output_zero_point;
      rq.output_max = EDGE_MIN(hi, rq.output_zero_point + 60);
    } else {
      rq.output_min = lo;
      rq.output_max = hi;
    }
  }
  edge_q8_gemm_reference(m, n, k, cs->a_dtype, a, a_stride, a_zp, w, bias, cs->c_dtype, expected, c_stride, &rq);

  const size_t packed_size = edge_q8_gemm_packed_size(n, k);
  void* packed = edge_test_aligned_alloc(packed_size);
  EDGE_CHECK_OK(edge_q8_gemm_pack_bits(n, k, w, bias, cs->w7 ? 7 : 8, packed, packed_size));
  if (cs->w7) EDGE_CHECK(edge_q8_gemm_packed_weight_bits(packed) == 7, "7-bit weights flagged");
  edge_isa isa;
  EDGE_FOR_EACH_ISA(isa) {
    memset(actual, 0xA5, c_bytes);
    EDGE_CHECK_OK(edge_q8_gemm(m, n, k, cs->a_dtype, a, a_stride, a_zp, packed, cs->c_dtype, actual, c_stride,
                               cs->c_dtype == EDGE_DTYPE_S32 ? NULL : &rq, pools[cs->threads]));
    const size_t row_bytes = (size_t) n * dtype_size(cs->c_dtype);
    const size_t stride_bytes = c_stride * dtype_size(cs->c_dtype);
    int same = 1, padding_kept = 1;
    for (int32_t i = 0; i < m; i++) {
      same &= memcmp(expected + i * stride_bytes, actual + i * stride_bytes, row_bytes) == 0;
      for (size_t b = row_bytes; b < stride_bytes; b++) padding_kept &= actual[i * stride_bytes + b] == 0xA5;
    }
    EDGE_CHECK(same, "%s: m=%d n=%d k=%d (tile %s) a_dtype=%d c_dtype=%d extreme=%d threads=%d w7=%d",
               edge_isa_name(isa), (int) m, (int) n, (int) k, cs->tile ? cs->tile : "-", (int) cs->a_dtype,
               (int) cs->c_dtype, cs->extreme, cs->threads, cs->w7);
    EDGE_CHECK(padding_kept, "C row padding untouched (m=%d n=%d k=%d)", (int) m, (int) n, (int) k);
  }
  edge_isa_set(edge_isa_detect());
  free(packed);
  free(a);
  free(w);
  free(bias);
  free(mult);
  free(shift);
  free(expected);
  free(actual);
}

/* Every tile's edge shapes with every pair of A and C dtypes, with 8-bit
 * weights and with 7-bit ones; the thread count cycles. */
static void test_shapes(void) {
  static const edge_dtype c_dtypes[] = {EDGE_DTYPE_U8, EDGE_DTYPE_S8, EDGE_DTYPE_S32};
  size_t index = 0;
  for (size_t s = 0; s < EDGE_TEST_COUNT(edge_test_q8_gemm_shapes); s++) {
    const edge_test_gemm_shape* shape = &edge_test_q8_gemm_shapes[s];
    for (int w7 = 0; w7 <= 1; w7++) {
      for (int a_dtype = EDGE_DTYPE_U8; a_dtype <= EDGE_DTYPE_S8; a_dtype++) {
        for (size_t c = 0; c < EDGE_TEST_COUNT(c_dtypes); c++, index++) {
          const case_spec cs = {
              .m = shape->m, .n = shape->n, .k = shape->k, .tile = shape->tile,
              .a_dtype = (edge_dtype) a_dtype, .c_dtype = c_dtypes[c],
              .threads = 1 + (int) (index % 3), .w7 = w7,
          };
          run_case(&cs);
        }
      }
    }
  }
}

static void test_large_k(void) {
  const int quick = getenv("EDGE_TEST_QUICK") != NULL;
  for (int w7 = 0; w7 <= 1; w7++) {
    for (int a_dtype = EDGE_DTYPE_U8; a_dtype <= EDGE_DTYPE_S8; a_dtype++) {
      const case_spec gemv = {.m = 1, .n = 33, .k = 4096, .a_dtype = a_dtype, .c_dtype = EDGE_DTYPE_U8,
                              .threads = 2, .w7 = w7};
      run_case(&gemv);
      const case_spec tile = {.m = 9, .n = 40, .k = 4095, .a_dtype = a_dtype, .c_dtype = EDGE_DTYPE_S8,
                              .threads = 3, .w7 = w7};
      run_case(&tile);
      /* K at the limit with every product at its extreme: int32 wrap-around
       * (7-bit: 255 * 63 pairs, the largest vpmaddubsw sums). */
      const case_spec wrap = {.m = quick ? 1 : 3, .n = 17, .k = EDGE_Q8_GEMM_MAX_K, .a_dtype = a_dtype,
                              .c_dtype = EDGE_DTYPE_S32, .extreme = 1, .threads = 1, .w7 = w7};
      run_case(&wrap);
      const case_spec wrap_rq = {.m = 2, .n = 16, .k = 1000, .a_dtype = a_dtype, .c_dtype = EDGE_DTYPE_U8,
                                 .extreme = 1, .threads = 2, .w7 = w7};
      run_case(&wrap_rq);
    }
  }
}

/* The 7-bit flag: set by packing exactly when every weight is in [-63, 63],
 * refused (not set) for weight_bits 7 with a weight outside. */
static void test_weight_bits(void) {
  const int32_t n = 20, k = 10;
  int8_t w[20 * 10];
  edge_test_fill_s8(w, sizeof(w), -63, 63);
  const size_t size = edge_q8_gemm_packed_size(n, k);
  uint8_t* packed = edge_test_aligned_alloc(size);
  EDGE_CHECK_OK(edge_q8_gemm_pack_bits(n, k, w, NULL, 7, packed, size));
  EDGE_CHECK(edge_q8_gemm_packed_weight_bits(packed) == 7, "7-bit weights flagged");
  EDGE_CHECK_OK(edge_q8_gemm_pack(n, k, w, NULL, packed, size));
  EDGE_CHECK(edge_q8_gemm_packed_weight_bits(packed) == 7, "8-bit packing of weights in [-63, 63] flags them too");
  for (int bad = 0; bad < 2; bad++) {
    int8_t wide[20 * 10];
    memcpy(wide, w, sizeof(wide));
    wide[13 * k + 4] = bad ? -64 : 64;
    EDGE_CHECK(edge_q8_gemm_pack_bits(n, k, wide, NULL, 7, packed, size) == EDGE_ERR_INVALID_ARGUMENT,
               "7-bit packing refuses %d", bad ? -64 : 64);
    EDGE_CHECK(strstr(edge_last_error(), "channel 13") != NULL, "detail names the channel: %s", edge_last_error());
    EDGE_CHECK_OK(edge_q8_gemm_pack_bits(n, k, wide, NULL, 8, packed, size));
    EDGE_CHECK(edge_q8_gemm_packed_weight_bits(packed) == 8, "a weight of %d is not flagged", bad ? -64 : 64);
  }
  EDGE_CHECK(edge_q8_gemm_pack_bits(n, k, w, NULL, 6, packed, size) == EDGE_ERR_INVALID_ARGUMENT, "6 bits");
  EDGE_CHECK(edge_q8_gemm_packed_weight_bits(packed + 64) == 0, "not a packed buffer");
  EDGE_CHECK(edge_q8_gemm_packed_weight_bits(NULL) == 0, "NULL");
  free(packed);
}

static void test_errors(void) {
  const int32_t n = 20, k = 10;
  int8_t w[20 * 10];
  edge_test_fill_s8(w, sizeof(w), -127, 127);
  uint8_t a[2 * 10] = {0};
  uint8_t c[2 * 20];
  int32_t mult[20], shift[20];
  for (int i = 0; i < n; i++) {
    mult[i] = 1 << 30;
    shift[i] = 40;
  }
  const edge_q8_requant rq = {mult, shift, 0, 0, 255};
  const size_t size = edge_q8_gemm_packed_size(n, k);
  uint8_t* packed = edge_test_aligned_alloc(size + 64);
  EDGE_CHECK(edge_q8_gemm_packed_size(n, EDGE_Q8_GEMM_MAX_K + 1) == 0, "packed size of a too large K is 0");
  EDGE_CHECK(edge_q8_gemm_packed_size(0, k) == 0, "packed size of n = 0 is 0");

  /* Packing. */
  EDGE_CHECK(edge_q8_gemm_pack(n, k, NULL, NULL, packed, size) == EDGE_ERR_INVALID_ARGUMENT, "null weights");
  EDGE_CHECK(edge_q8_gemm_pack(n, k, w, NULL, packed + 1, size) == EDGE_ERR_ALIGNMENT, "misaligned pack");
  EDGE_CHECK(edge_q8_gemm_pack(n, k, w, NULL, packed, size - 1) == EDGE_ERR_SHAPE, "small packed buffer");
  EDGE_CHECK(edge_q8_gemm_pack(n, EDGE_Q8_GEMM_MAX_K + 1, w, NULL, packed, size) == EDGE_ERR_SHAPE, "K too large");
  EDGE_CHECK(strstr(edge_last_error(), "65536") != NULL, "detail names the limit: %s", edge_last_error());
  int8_t bad[20 * 10];
  memcpy(bad, w, sizeof(bad));
  bad[7 * k + 3] = -128;
  EDGE_CHECK(edge_q8_gemm_pack(n, k, bad, NULL, packed, size) == EDGE_ERR_INVALID_ARGUMENT, "weight -128");
  EDGE_CHECK(strstr(edge_last_error(), "channel 7") != NULL, "detail names the channel: %s", edge_last_error());
  EDGE_CHECK_OK(edge_q8_gemm_pack(n, k, w, NULL, packed, size));
  EDGE_CHECK(edge_last_error()[0] == '\0', "success clears the detail");

  /* Running. */
  EDGE_CHECK_OK(edge_q8_gemm(2, n, k, EDGE_DTYPE_U8, a, k, 0, packed, EDGE_DTYPE_U8, c, n, &rq, NULL));
  EDGE_CHECK_OK(edge_q8_gemm(0, n, k, EDGE_DTYPE_U8, a, k, 0, packed, EDGE_DTYPE_U8, c, n, &rq, NULL));
  EDGE_CHECK(edge_q8_gemm(-1, n, k, EDGE_DTYPE_U8, a, k, 0, packed, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_SHAPE, "negative m");
  int32_t c32[2 * 32];
  EDGE_CHECK(edge_q8_gemm(2, n + 1, k, EDGE_DTYPE_U8, a, k, 0, packed, EDGE_DTYPE_S32, c32, n + 1, NULL, NULL) ==
                 EDGE_ERR_SHAPE, "n differs from the packed n");
  EDGE_CHECK(edge_q8_gemm(2, n, k - 1, EDGE_DTYPE_U8, a, k, 0, packed, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_SHAPE, "k differs from the packed k");
  EDGE_CHECK(edge_q8_gemm(2, n, EDGE_Q8_GEMM_MAX_K + 1, EDGE_DTYPE_U8, a, k, 0, packed, EDGE_DTYPE_U8, c, n, &rq,
                          NULL) == EDGE_ERR_SHAPE, "K too large");
  EDGE_CHECK(edge_q8_gemm(2, n, k, EDGE_DTYPE_U8, a, k - 1, 0, packed, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_SHAPE, "A stride below k");
  EDGE_CHECK(edge_q8_gemm(2, n, k, EDGE_DTYPE_U8, a, k, 0, packed, EDGE_DTYPE_U8, c, n - 1, &rq, NULL) ==
                 EDGE_ERR_SHAPE, "C stride below n");
  EDGE_CHECK(edge_q8_gemm(2, n, k, EDGE_DTYPE_U8, a, k, 0, packed + 64, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_PACKED_FORMAT, "not a packed buffer");
  EDGE_CHECK(edge_q8_gemm(2, n, k, EDGE_DTYPE_U8, a, k, 0, packed + 4, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_ALIGNMENT, "misaligned packed buffer");
  EDGE_CHECK(edge_q8_gemm(2, n, k, EDGE_DTYPE_U8, a, k, 0, NULL, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "null packed");
  EDGE_CHECK(edge_q8_gemm(2, n, k, EDGE_DTYPE_U8, NULL, k, 0, packed, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "null A");
  EDGE_CHECK(edge_q8_gemm(2, n, k, EDGE_DTYPE_U8, a, k, 0, packed, EDGE_DTYPE_U8, NULL, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "null C");
  EDGE_CHECK(edge_q8_gemm(2, n, k, EDGE_DTYPE_S32, a, k, 0, packed, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "s32 A");
  EDGE_CHECK(edge_q8_gemm(2, n, k, EDGE_DTYPE_U8, a, k, 256, packed, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "u8 zero point 256");
  EDGE_CHECK(edge_q8_gemm(2, n, k, EDGE_DTYPE_S8, a, k, 128, packed, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "s8 zero point 128");
  EDGE_CHECK(edge_q8_gemm(2, n, k, EDGE_DTYPE_U8, a, k, 0, packed, EDGE_DTYPE_U8, c, n, NULL, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "u8 output without requant");
  EDGE_CHECK(edge_q8_gemm(2, n, k, EDGE_DTYPE_U8, a, k, 0, packed, EDGE_DTYPE_F32, c, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "f32 output");
  mult[5] = 5;
  EDGE_CHECK(edge_q8_gemm(2, n, k, EDGE_DTYPE_U8, a, k, 0, packed, EDGE_DTYPE_U8, c, n, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "bad multiplier");
  EDGE_CHECK(strstr(edge_last_error(), "channel 5") != NULL, "detail names the channel: %s", edge_last_error());
  mult[5] = 1 << 30;
  const edge_q8_requant bad_clamp = {mult, shift, 0, 10, 5};
  EDGE_CHECK(edge_q8_gemm(2, n, k, EDGE_DTYPE_U8, a, k, 0, packed, EDGE_DTYPE_U8, c, n, &bad_clamp, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "empty clamp");
  free(packed);
}

int main(void) {
  for (int t = 2; t <= 3; t++) {
    if (edge_threadpool_create(t, &pools[t]) != EDGE_OK) {
      fprintf(stderr, "cannot create a pool of %d threads\n", t);
      return 1;
    }
  }
  test_shapes();
  test_large_k();
  test_weight_bits();
  test_errors();
  for (int t = 2; t <= 3; t++) edge_threadpool_destroy(pools[t]);
  return edge_test_summary("test_q8_gemm");
}
