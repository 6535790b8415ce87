/* Direct depthwise conv2d on every ISA, bit-exact against the naive reference
 * (a grouped convolution with groups == channels): geometry cases (stride,
 * padding, batch), then the edge-case channel counts of every micro-kernel
 * tile (generated/q8-dwconv-shapes.h, from native/kernels.json). */
#include <string.h>

#include "generated/q8-dwconv-shapes.h"
#include "internal.h"
#include "reference/q8-conv-reference.h"
#include "test_util.h"

typedef struct dw_case {
  int32_t batch, in_h, in_w, channels, kernel, stride;
  int32_t pad_top, pad_left, pad_bottom, pad_right;
} dw_case;

static const dw_case cases[] = {
    {1, 5, 5, 16, 3, 1, 1, 1, 1, 1},   /* one full block */
    {1, 6, 7, 1, 3, 1, 1, 1, 1, 1},    /* one channel: all tail */
    {2, 7, 6, 17, 3, 1, 0, 0, 0, 0},   /* block + 1, no padding, batch 2 */
    {1, 8, 9, 24, 3, 2, 1, 1, 1, 1},   /* stride 2, tail of 8 */
    {1, 9, 8, 40, 3, 2, 0, 0, 1, 1},   /* stride 2, asymmetric (TF "same") padding */
    {1, 7, 7, 15, 5, 1, 2, 2, 2, 2},   /* 5x5 */
    {2, 10, 9, 33, 5, 2, 2, 1, 2, 3},  /* 5x5 stride 2, uneven padding */
    {1, 3, 3, 32, 3, 1, 2, 2, 2, 2},   /* padding wider than the image: all-padding taps */
    {1, 5, 5, 48, 5, 1, 0, 0, 0, 0},   /* 5x5 on a 5x5 image: a single output pixel */
    {1, 2, 21, 20, 3, 1, 1, 1, 1, 1},  /* a wide row */
    {1, 9, 9, 64, 3, 1, 1, 1, 1, 1},   /* one 64-channel step; 81 pixels: chunks across rows */
    {1, 9, 10, 144, 3, 2, 0, 0, 1, 1}, /* two 64-channel steps and a tail of 16 */
    {2, 6, 6, 101, 5, 1, 2, 2, 2, 2},  /* 5x5, 64 channels and a tail of 37 */
    {1, 12, 11, 65, 3, 1, 1, 1, 1, 1}, /* 132 pixels, tail of one channel */
    /* AVX-512 tails of 17-32 channels run 2 pixels per step, of 1-16 channels 4: odd pixel counts
     * leave a step with fewer pixels, the padding mixes zero-row and image taps within one step. */
    {1, 5, 3, 26, 3, 1, 1, 1, 1, 1},   /* 15 pixels, a tail of 26 */
    {2, 7, 7, 96, 3, 1, 1, 1, 1, 1},   /* 64 + a tail of 32, 49 pixels */
    {1, 7, 6, 72, 5, 2, 2, 2, 2, 2},   /* 5x5 stride 2, 64 + a tail of 8, 12 pixels */
    {1, 3, 11, 13, 3, 1, 1, 1, 1, 1},  /* 33 pixels: 8 steps of 4 and one of 1 */
};

static edge_conv2d_params params_of(const dw_case* c) {
  edge_conv2d_params p = {
      .batch = c->batch, .in_h = c->in_h, .in_w = c->in_w, .in_c = c->channels, .out_c = c->channels,
      .kernel_h = c->kernel, .kernel_w = c->kernel, .stride_h = c->stride, .stride_w = c->stride,
      .dilation_h = 1, .dilation_w = 1, .pad_top = c->pad_top, .pad_left = c->pad_left,
      .pad_bottom = c->pad_bottom, .pad_right = c->pad_right, .groups = c->channels,
  };
  return p;
}

static void run_case(const dw_case* c, edge_dtype x_dtype, edge_dtype y_dtype, int extreme_bias) {
  const edge_conv2d_params p = params_of(c);
  int32_t out_h = 0, out_w = 0;
  EDGE_CHECK_OK(edge_conv2d_output_size(&p, &out_h, &out_w));
  const size_t ch = (size_t) c->channels, taps = (size_t) c->kernel * c->kernel;
  const size_t x_size = (size_t) c->batch * c->in_h * c->in_w * ch;
  const size_t y_size = (size_t) c->batch * out_h * out_w * ch;
  uint8_t* x = edge_test_aligned_alloc(x_size);
  int8_t* w = edge_test_aligned_alloc(ch * taps);
  int32_t* bias = edge_test_aligned_alloc(ch * sizeof(int32_t));
  int32_t* mult = edge_test_aligned_alloc(ch * sizeof(int32_t));
  int32_t* shift = edge_test_aligned_alloc(ch * sizeof(int32_t));
  uint8_t* expected = edge_test_aligned_alloc(y_size);
  uint8_t* y = edge_test_aligned_alloc(y_size);
  edge_test_fill_u8(x, x_size, 0, 255);
  edge_test_fill_s8(w, ch * taps, -127, 127);
  for (size_t i = 0; i < ch; i++) {
    /* Extreme biases make the int32 accumulator wrap, which every path must do alike. */
    bias[i] = extreme_bias ? (i % 2 ? INT32_MAX - edge_test_rand_range(0, 50000) : INT32_MIN + edge_test_rand_range(0, 50000))
                           : edge_test_rand_range(-20000, 20000);
    mult[i] = (int32_t) ((1u << 30) + (uint32_t) (edge_test_rand() % (1u << 30)));
    shift[i] = extreme_bias ? 31 + edge_test_rand_range(0, 31) : edge_test_rand_range(37, 42);
  }
  const int32_t lo = edge_dtype_min(x_dtype), hi = edge_dtype_max(x_dtype);
  const int32_t x_zp = edge_test_rand_range(lo, hi);
  const int32_t y_lo = edge_dtype_min(y_dtype), y_hi = edge_dtype_max(y_dtype);
  const int32_t y_zp = edge_test_rand_range(y_lo, y_hi);
  const int32_t y_min = edge_test_rand_range(0, 1) ? y_lo : edge_test_rand_range(y_lo, y_zp);
  const int32_t y_max = edge_test_rand_range(0, 1) ? y_hi : edge_test_rand_range(y_zp, y_hi);
  const edge_q8_requant rq = {mult, shift, y_zp, y_min, y_max};
  EDGE_CHECK(edge_ref_q8_conv2d(&p, x_dtype, x, x_zp, w, bias, y_dtype, expected, &rq) == 0, "reference");

  const size_t packed_size = edge_q8_dwconv2d_packed_size(&p);
  EDGE_CHECK(packed_size > 0, "packed size");
  void* packed = edge_test_aligned_alloc(packed_size);
  EDGE_CHECK_OK(edge_q8_dwconv2d_pack(&p, w, bias, packed, packed_size));
  edge_isa isa;
  EDGE_FOR_EACH_ISA(isa) {
    for (int32_t threads = 1; threads <= 3; threads++) {
      edge_threadpool* pool = NULL;
      EDGE_CHECK_OK(edge_threadpool_create(threads, &pool));
      memset(y, 0xA5, y_size);
      EDGE_CHECK_OK(edge_q8_dwconv2d(&p, x_dtype, x, x_zp, packed, y_dtype, y, &rq, pool));
      size_t bad = 0;
      while (bad < y_size && y[bad] == expected[bad]) bad++;
      EDGE_CHECK(bad == y_size,
                 "dwconv %dx%dx%d k%d s%d pads %d,%d,%d,%d batch %d x %s y %s threads %d: element %zu (channel %zu) "
                 "got %d expected %d",
                 c->in_h, c->in_w, c->channels, c->kernel, c->stride, c->pad_top, c->pad_left, c->pad_bottom,
                 c->pad_right, c->batch, x_dtype == EDGE_DTYPE_U8 ? "u8" : "s8", y_dtype == EDGE_DTYPE_U8 ? "u8" : "s8",
                 threads, bad, bad % ch, bad < y_size ? y[bad] : 0, bad < y_size ? expected[bad] : 0);
      edge_threadpool_destroy(pool);
    }
  }
  edge_isa_set(edge_isa_detect());
  /* The packed form is independent of the batch: run batch 1 of it. */
  edge_conv2d_params one = p;
  one.batch = 1;
  EDGE_CHECK_OK(edge_q8_dwconv2d(&one, x_dtype, x, x_zp, packed, y_dtype, y, &rq, NULL));
  EDGE_CHECK(memcmp(y, expected, y_size / c->batch) == 0, "batch 1 of a packed buffer");
  free(x), free(w), free(bias), free(mult), free(shift), free(expected), free(y), free(packed);
}

static void test_against_reference(void) {
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    run_case(&cases[i], EDGE_DTYPE_U8, EDGE_DTYPE_U8, 0);
    run_case(&cases[i], EDGE_DTYPE_S8, EDGE_DTYPE_S8, 0);
    run_case(&cases[i], EDGE_DTYPE_U8, EDGE_DTYPE_S8, i % 2);
    run_case(&cases[i], EDGE_DTYPE_S8, EDGE_DTYPE_U8, 1);
  }
}

/* Channels around each tile, on a 5x4 image with "same" padding: 20 pixels,
 * padding taps on the border. */
static void test_tile_edges(void) {
  for (size_t i = 0; i < EDGE_TEST_COUNT(edge_test_q8_dwconv_shapes); i++) {
    const edge_test_dwconv_shape* s = &edge_test_q8_dwconv_shapes[i];
    const int32_t pad = s->kernel / 2;
    const dw_case c = {1, 5, 4, s->channels, s->kernel, 1, pad, pad, pad, pad};
    run_case(&c, EDGE_DTYPE_U8, EDGE_DTYPE_U8, 0);
    run_case(&c, EDGE_DTYPE_S8, EDGE_DTYPE_S8, 0);
    run_case(&c, EDGE_DTYPE_U8, EDGE_DTYPE_S8, 1);
    run_case(&c, EDGE_DTYPE_S8, EDGE_DTYPE_U8, 0);
  }
}

static void test_refusals(void) {
  const dw_case base = {1, 8, 8, 16, 3, 1, 1, 1, 1, 1};
  edge_conv2d_params p = params_of(&base);
  /* Parameters conv2d handles but the direct kernel does not. */
  edge_conv2d_params unsupported[6];
  for (int i = 0; i < 6; i++) unsupported[i] = p;
  unsupported[0].kernel_h = unsupported[0].kernel_w = 7;
  unsupported[1].stride_h = unsupported[1].stride_w = 3;
  unsupported[2].dilation_h = unsupported[2].dilation_w = 2;
  unsupported[3].out_c = 32; /* channel multiplier 2 */
  unsupported[4].kernel_w = 5;
  unsupported[5].groups = 8, unsupported[5].out_c = 16;
  for (int i = 0; i < 6; i++) {
    int32_t oh, ow;
    EDGE_CHECK(edge_conv2d_output_size(&unsupported[i], &oh, &ow) == EDGE_OK, "case %d is a valid conv2d", i);
    EDGE_CHECK(edge_q8_dwconv2d_packed_size(&unsupported[i]) == 0, "case %d: no packed size", i);
    EDGE_CHECK(edge_q8_dwconv2d_pack(&unsupported[i], NULL, NULL, NULL, 0) == EDGE_ERR_INVALID_ARGUMENT, "case %d", i);
    EDGE_CHECK(strstr(edge_last_error(), "use conv2d") != NULL, "detail says what to do: %s", edge_last_error());
  }
  const size_t packed_size = edge_q8_dwconv2d_packed_size(&p);
  int8_t w[16 * 9];
  memset(w, 1, sizeof(w));
  void* packed = edge_test_aligned_alloc(packed_size);
  EDGE_CHECK(edge_q8_dwconv2d_pack(&p, w, NULL, packed, packed_size - 1) == EDGE_ERR_INVALID_ARGUMENT, "small buffer");
  w[20] = -128;
  EDGE_CHECK(edge_q8_dwconv2d_pack(&p, w, NULL, packed, packed_size) == EDGE_ERR_INVALID_ARGUMENT, "-128 weight");
  w[20] = 0;
  EDGE_CHECK_OK(edge_q8_dwconv2d_pack(&p, w, NULL, packed, packed_size));
  uint8_t x[8 * 8 * 16] = {0}, y[8 * 8 * 16];
  int32_t mult[16], shift[16];
  for (int i = 0; i < 16; i++) mult[i] = 1 << 30, shift[i] = 31;
  const edge_q8_requant rq = {mult, shift, 0, 0, 255};
  edge_conv2d_params other = p;
  other.pad_left = 0;
  EDGE_CHECK(edge_q8_dwconv2d(&other, EDGE_DTYPE_U8, x, 0, packed, EDGE_DTYPE_U8, y, &rq, NULL) == EDGE_ERR_SHAPE,
             "packed for other padding");
  EDGE_CHECK(edge_q8_dwconv2d(&p, EDGE_DTYPE_U8, x, 0, packed, EDGE_DTYPE_S32, y, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "s32 output");
  EDGE_CHECK(edge_q8_dwconv2d(&p, EDGE_DTYPE_U8, x, 256, packed, EDGE_DTYPE_U8, y, &rq, NULL) ==
                 EDGE_ERR_INVALID_ARGUMENT, "zero point out of range");
  EDGE_CHECK(edge_q8_dwconv2d(&p, EDGE_DTYPE_U8, x, 0, (uint8_t*) packed + 1, EDGE_DTYPE_U8, y, &rq, NULL) ==
                 EDGE_ERR_ALIGNMENT, "misaligned packed");
  memset(packed, 0, 8);
  EDGE_CHECK(edge_q8_dwconv2d(&p, EDGE_DTYPE_U8, x, 0, packed, EDGE_DTYPE_U8, y, &rq, NULL) ==
                 EDGE_ERR_PACKED_FORMAT, "bad magic");
  free(packed);
}

int main(void) {
  test_against_reference();
  test_tile_edges();
  test_refusals();
  return edge_test_summary("test_q8_dwconv");
}
