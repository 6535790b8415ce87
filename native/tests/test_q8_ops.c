/* q8-ops: add / mul, pooling, LUT activations, quantize / dequantize, on
 * every ISA the machine runs, bit-exact against src/reference/. */
#include <math.h>
#include <string.h>

#include "reference/q8-ops-reference.h"
#include "test_util.h"

/* 20000: above the size at which the ops split their work over a pool. */
static const int32_t kSizes[] = {0, 1, 15, 16, 17, 63, 64, 65, 1000, 20000};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const edge_dtype kDtypes[] = {EDGE_DTYPE_U8, EDGE_DTYPE_S8};

/* The pool every op runs on: NULL in the first pass of main, 3 threads in the second. */
static edge_threadpool* g_pool = NULL;

static int32_t dmin(edge_dtype d) { return d == EDGE_DTYPE_S8 ? -128 : 0; }
static int32_t dmax(edge_dtype d) { return d == EDGE_DTYPE_S8 ? 127 : 255; }
static double rand_unit(void) { return (double) (edge_test_rand() >> 11) * 0x1p-53; }
/* log-uniform scale in [10^lo, 10^hi] */
static double rand_scale(double lo, double hi) { return pow(10.0, lo + (hi - lo) * rand_unit()); }

static void fill(edge_dtype dtype, void* p, size_t n) {
  if (dtype == EDGE_DTYPE_S8) {
    edge_test_fill_s8(p, n, -128, 127);
  } else {
    edge_test_fill_u8(p, n, 0, 255);
  }
}

/* Broadcast layouts of (a, b): strides as multiples of cols. */
typedef struct layout {
  const char* name;
  size_t a_row, a_col, b_row, b_col; /* a_row / b_row: 1 = cols, 0 = broadcast, 2 = 2 * cols */
} layout;

static const layout kLayouts[] = {
    {"equal", 1, 1, 1, 1},        {"b row broadcast", 1, 1, 0, 1}, {"b scalar", 1, 1, 0, 0},
    {"a scalar", 0, 0, 1, 1},     {"a row broadcast", 0, 1, 1, 1}, {"b per-row scalar", 1, 1, 1, 0},
    {"strided a", 2, 2, 1, 1},
};

static void test_binary(int is_mul) {
  for (size_t d = 0; d < COUNT(kDtypes); d++) {
    const edge_dtype dtype = kDtypes[d];
    for (size_t s = 0; s < COUNT(kSizes); s++) {
      const int32_t cols = kSizes[s];
      for (size_t l = 0; l < COUNT(kLayouts); l++) {
        const layout* L = &kLayouts[l];
        const int32_t rows = cols > 100 ? 2 : 3;
        const size_t a_row = L->a_row * (size_t) cols, b_row = L->b_row * (size_t) cols;
        /* b per-row scalar: one element per row. */
        const size_t b_row_eff = (L->b_col == 0 && L->b_row == 1) ? 1 : b_row;
        const size_t a_size = (size_t) rows * 2 * cols * 2 + 1, b_size = (size_t) rows * cols + 1;
        uint8_t* a = edge_test_aligned_alloc(a_size);
        uint8_t* b = edge_test_aligned_alloc(b_size);
        uint8_t* y = edge_test_aligned_alloc((size_t) rows * cols + 1);
        uint8_t* ref = edge_test_aligned_alloc((size_t) rows * cols + 1);
        fill(dtype, a, a_size);
        fill(dtype, b, b_size);
        /* Random quantization, sometimes at the extremes of the dtype and of the ratio range. */
        const int32_t za = edge_test_rand_range(dmin(dtype), dmax(dtype));
        const int32_t zb = s % 3 == 0 ? dmax(dtype) : edge_test_rand_range(dmin(dtype), dmax(dtype));
        const int32_t zy = s % 4 == 1 ? dmin(dtype) : edge_test_rand_range(dmin(dtype), dmax(dtype));
        const int32_t y_min = l % 2 ? zy : dmin(dtype); /* a fused ReLU on half the cases */
        const int32_t y_max = dmax(dtype);
        const double sa = rand_scale(-3, -1), sb = rand_scale(-3, -1);
        const double sy = is_mul ? sa * sb * rand_scale(-3, 3.5) : rand_scale(-3.5, 1.5);
        edge_q8_add_params ap;
        edge_q8_mul_params mp;
        edge_status st = is_mul ? edge_q8_mul_params_init(sa, za, sb, zb, sy, zy, y_min, y_max, &mp)
                                : edge_q8_add_params_init(sa, za, sb, zb, sy, zy, y_min, y_max, &ap);
        EDGE_CHECK(st == EDGE_OK, "params_init (%s)", edge_last_error());
        if (st != EDGE_OK) goto next;
        if (is_mul) {
          edge_ref_q8_mul(rows, cols, dtype, a, a_row, L->a_col, b, b_row_eff, L->b_col, ref, &mp);
        } else {
          edge_ref_q8_add(rows, cols, dtype, a, a_row, L->a_col, b, b_row_eff, L->b_col, ref, &ap);
        }
        edge_isa isa;
        EDGE_FOR_EACH_ISA(isa) {
          memset(y, 0xAB, (size_t) rows * cols);
          EDGE_CHECK_OK(is_mul ? edge_q8_mul(rows, cols, dtype, a, a_row, L->a_col, b, b_row_eff, L->b_col, y, &mp, g_pool)
                               : edge_q8_add(rows, cols, dtype, a, a_row, L->a_col, b, b_row_eff, L->b_col, y, &ap, g_pool));
          EDGE_CHECK(memcmp(y, ref, (size_t) rows * cols) == 0, "%s %s cols %d layout %s", is_mul ? "mul" : "add",
                     dtype == EDGE_DTYPE_S8 ? "s8" : "u8", (int) cols, L->name);
        }
      next:
        free(a);
        free(b);
        free(y);
        free(ref);
      }
    }
  }
}

/* Scale ratios at the edges of the documented ranges, with every input pair. */
static void test_binary_extremes(void) {
  static const double add_ratios[] = {0x1p-11, 0x1p-10, 0x1.8p-10, 0.5, 1.0, 255.0, 0x1.fffp20};
  static const double mul_ratios[] = {0x1p-18, 0x1p-17, 0x1.8p-17, 1.0 / 255, 1.0, 0x1.fffp13};
  for (size_t d = 0; d < COUNT(kDtypes); d++) {
    const edge_dtype dtype = kDtypes[d];
    uint8_t a[256 * 256], b[256 * 256], y[256 * 256], ref[256 * 256];
    for (int i = 0; i < 256 * 256; i++) {
      a[i] = (uint8_t) (i & 255);
      b[i] = (uint8_t) (i >> 8);
    }
    const int32_t lo = dmin(dtype), hi = dmax(dtype);
    for (size_t r = 0; r < COUNT(add_ratios) + COUNT(mul_ratios); r++) {
      const int is_mul = r >= COUNT(add_ratios);
      const double ratio = is_mul ? mul_ratios[r - COUNT(add_ratios)] : add_ratios[r];
      edge_q8_add_params ap;
      edge_q8_mul_params mp;
      const int32_t za = r % 2 ? lo : hi, zb = r % 2 ? hi : lo, zy = (lo + hi) / 2;
      EDGE_CHECK_OK(is_mul ? edge_q8_mul_params_init(ratio, za, 1.0, zb, 1.0, zy, lo, hi, &mp)
                           : edge_q8_add_params_init(ratio, za, ratio * 0.75, zb, 1.0, zy, lo, hi, &ap));
      if (is_mul) {
        edge_ref_q8_mul(256, 256, dtype, a, 256, 1, b, 256, 1, ref, &mp);
      } else {
        edge_ref_q8_add(256, 256, dtype, a, 256, 1, b, 256, 1, ref, &ap);
      }
      edge_isa isa;
      EDGE_FOR_EACH_ISA(isa) {
        EDGE_CHECK_OK(is_mul ? edge_q8_mul(256, 256, dtype, a, 256, 1, b, 256, 1, y, &mp, g_pool)
                             : edge_q8_add(256, 256, dtype, a, 256, 1, b, 256, 1, y, &ap, g_pool));
        EDGE_CHECK(memcmp(y, ref, sizeof(y)) == 0, "%s ratio %g all input pairs", is_mul ? "mul" : "add", ratio);
      }
    }
  }
  /* Ratios under the lower edge give the zero point exactly; the rounding of the real product agrees. */
  edge_q8_add_params ap;
  EDGE_CHECK_OK(edge_q8_add_params_init(0x1p-11, 0, 0x1p-11, 0, 1.0, 7, 0, 255, &ap));
  EDGE_CHECK(ap.a_multiplier == 0 && ap.b_multiplier == 0, "tiny add ratio: zero multipliers");
}

static void test_binary_errors(void) {
  edge_q8_add_params ap;
  edge_q8_mul_params mp;
  EDGE_CHECK(edge_q8_add_params_init(1.0, 0, 1.0, 0, 0x1p-21, 0, 0, 255, &ap) == EDGE_ERR_INVALID_ARGUMENT,
             "add ratio 2^21 refused");
  EDGE_CHECK(strstr(edge_last_error(), "2^21") != NULL, "detail names the limit: %s", edge_last_error());
  EDGE_CHECK(edge_q8_mul_params_init(1.0, 0, 1.0, 0, 0x1p-14, 0, 0, 255, &mp) == EDGE_ERR_INVALID_ARGUMENT,
             "mul ratio 2^14 refused");
  EDGE_CHECK(edge_q8_add_params_init(0.0, 0, 1.0, 0, 1.0, 0, 0, 255, &ap) == EDGE_ERR_INVALID_ARGUMENT, "zero scale");
  EDGE_CHECK(edge_q8_add_params_init(NAN, 0, 1.0, 0, 1.0, 0, 0, 255, &ap) == EDGE_ERR_INVALID_ARGUMENT, "NaN scale");
  EDGE_CHECK(edge_q8_mul_params_init(1.0, 0, INFINITY, 0, 1.0, 0, 0, 255, &mp) == EDGE_ERR_INVALID_ARGUMENT,
             "inf scale");
  EDGE_CHECK(edge_q8_add_params_init(1.0, 300, 1.0, 0, 1.0, 0, 0, 255, &ap) == EDGE_ERR_INVALID_ARGUMENT, "zp 300");
  EDGE_CHECK(edge_q8_add_params_init(1.0, 0, 1.0, 0, 1.0, 0, 10, 5, &ap) == EDGE_ERR_INVALID_ARGUMENT, "empty clamp");
  EDGE_CHECK(edge_q8_add_params_init(1.0, 0, 1.0, 0, 1.0, 0, 0, 255, NULL) == EDGE_ERR_INVALID_ARGUMENT, "NULL");
  uint8_t a[4] = {0}, y[4];
  EDGE_CHECK_OK(edge_q8_add_params_init(0.5, 0, 0.5, 0, 1.0, 0, 0, 255, &ap));
  EDGE_CHECK(edge_q8_add(1, 4, EDGE_DTYPE_S32, a, 4, 1, a, 4, 1, y, &ap, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "bad dtype");
  EDGE_CHECK(edge_q8_add(1, 4, EDGE_DTYPE_U8, NULL, 4, 1, a, 4, 1, y, &ap, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "NULL a");
  EDGE_CHECK(edge_q8_add(1, 4, EDGE_DTYPE_U8, a, 4, 1, a, 4, 1, y, NULL, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "NULL params");
  EDGE_CHECK(edge_q8_add(-1, 4, EDGE_DTYPE_U8, a, 4, 1, a, 4, 1, y, &ap, g_pool) == EDGE_ERR_SHAPE, "negative rows");
  EDGE_CHECK(edge_q8_add(1, 4, EDGE_DTYPE_S8, a, 4, 1, a, 4, 1, y, &ap, g_pool) == EDGE_ERR_INVALID_ARGUMENT,
             "clamp [0, 255] is not an s8 range");
  EDGE_CHECK_OK(edge_q8_add(0, 4, EDGE_DTYPE_U8, NULL, 4, 1, NULL, 4, 1, NULL, &ap, g_pool));
  edge_q8_add_params bad = ap;
  bad.a_multiplier = (1 << 22) + 1;
  EDGE_CHECK(edge_q8_add(1, 4, EDGE_DTYPE_U8, a, 4, 1, a, 4, 1, y, &bad, g_pool) == EDGE_ERR_INVALID_ARGUMENT,
             "hand-made multiplier that could overflow");
  bad = ap;
  bad.shift = 0;
  EDGE_CHECK(edge_q8_add(1, 4, EDGE_DTYPE_U8, a, 4, 1, a, 4, 1, y, &bad, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "shift 0");
  EDGE_CHECK_OK(edge_q8_mul_params_init(0.5, 0, 0.5, 0, 1.0, 0, 0, 255, &mp));
  mp.multiplier = (1 << 15) + 1;
  EDGE_CHECK(edge_q8_mul(1, 4, EDGE_DTYPE_U8, a, 4, 1, a, 4, 1, y, &mp, g_pool) == EDGE_ERR_INVALID_ARGUMENT,
             "mul multiplier over 2^15");
}

/* ---- pooling ---- */

static void run_pool_case(const edge_pool2d_params* p, edge_dtype dtype, double x_scale, double y_scale) {
  int32_t oh, ow;
  EDGE_CHECK_OK(edge_pool2d_output_size(p, &oh, &ow));
  if (edge_pool2d_output_size(p, &oh, &ow) != EDGE_OK) return;
  const size_t x_size = (size_t) p->batch * p->in_h * p->in_w * p->channels;
  const size_t y_size = (size_t) p->batch * oh * ow * p->channels;
  uint8_t* x = edge_test_aligned_alloc(x_size);
  uint8_t* y = edge_test_aligned_alloc(y_size);
  uint8_t* ref = edge_test_aligned_alloc(y_size);
  fill(dtype, x, x_size);
  const int32_t zx = edge_test_rand_range(dmin(dtype), dmax(dtype)), zy = edge_test_rand_range(dmin(dtype), dmax(dtype));
  edge_ref_q8_maxpool2d(p, oh, ow, dtype, x, ref);
  edge_isa isa;
  EDGE_FOR_EACH_ISA(isa) {
    EDGE_CHECK_OK(edge_q8_maxpool2d(p, dtype, x, y, g_pool));
    EDGE_CHECK(memcmp(y, ref, y_size) == 0, "maxpool k %dx%d s %d d %d c %d", (int) p->kernel_h, (int) p->kernel_w,
               (int) p->stride_h, (int) p->dilation_h, (int) p->channels);
  }
  const edge_status ref_status =
      edge_ref_q8_avgpool2d(p, oh, ow, dtype, x, x_scale, zx, ref, y_scale, zy, dmin(dtype), dmax(dtype));
  { /* a second ISA loop needs its own scope */
    EDGE_FOR_EACH_ISA(isa) {
      const edge_status st = edge_q8_avgpool2d(p, dtype, x, x_scale, zx, y, y_scale, zy, dmin(dtype), dmax(dtype), g_pool);
    EDGE_CHECK(st == ref_status, "avgpool status %d, reference %d (%s)", (int) st, (int) ref_status, edge_last_error());
    EDGE_CHECK(st != EDGE_OK || memcmp(y, ref, y_size) == 0,
               "avgpool k %dx%d s %d d %d pads %d,%d incl %d c %d ratio %g", (int) p->kernel_h, (int) p->kernel_w,
               (int) p->stride_h, (int) p->dilation_h, (int) p->pad_top, (int) p->pad_left,
               (int) p->count_include_pad, (int) p->channels, x_scale / y_scale);
  }
  }
  free(x);
  free(y);
  free(ref);
}

static void test_pools(void) {
  static const int32_t channels[] = {1, 15, 16, 17, 33, 300};
  for (size_t d = 0; d < COUNT(kDtypes); d++) {
    for (int round = 0; round < 24; round++) {
      edge_pool2d_params p = {0};
      p.batch = 1 + round % 2;
      p.channels = channels[round % COUNT(channels)];
      p.kernel_h = edge_test_rand_range(1, 3);
      p.kernel_w = edge_test_rand_range(1, 3);
      p.stride_h = edge_test_rand_range(1, 2);
      p.stride_w = edge_test_rand_range(1, 2);
      p.dilation_h = edge_test_rand_range(1, 2);
      p.dilation_w = 1;
      p.in_h = edge_test_rand_range(p.dilation_h * (p.kernel_h - 1) + 1, 7);
      p.in_w = edge_test_rand_range(p.kernel_w, 7);
      p.pad_top = edge_test_rand_range(0, p.kernel_h - 1);
      p.pad_bottom = edge_test_rand_range(0, p.kernel_h - 1);
      p.pad_left = edge_test_rand_range(0, p.kernel_w - 1);
      p.pad_right = edge_test_rand_range(0, p.kernel_w - 1);
      p.count_include_pad = round % 2;
      /* Ratios below and above 1 (pre-shifted), and one that overflows int32 sums (refused). */
      const double ratio = round % 6 == 5 ? 0x1p30 : rand_scale(-2, 1.5);
      run_pool_case(&p, kDtypes[d], 0.02, 0.02 / ratio);
    }
    /* Large enough that a pool splits the output rows into tasks, with padding at every border. */
    const edge_pool2d_params big = {.batch = 2, .in_h = 29, .in_w = 31, .channels = 33, .kernel_h = 3, .kernel_w = 3,
                                    .stride_h = 2, .stride_w = 1, .dilation_h = 1, .dilation_w = 1, .pad_top = 1,
                                    .pad_left = 1, .pad_bottom = 1, .pad_right = 1, .count_include_pad = 0};
    run_pool_case(&big, kDtypes[d], 0.02, 0.03);
    /* Global average pool against the average pool reference over an hw x 1 window. */
    static const int32_t hws[] = {1, 7, 49, 300};
    for (size_t h = 0; h < COUNT(hws); h++) {
      const int32_t c = channels[h + 1], hw = hws[h];
      edge_pool2d_params p = {.batch = 2, .in_h = hw, .in_w = 1, .channels = c, .kernel_h = hw, .kernel_w = 1,
                              .stride_h = 1, .stride_w = 1, .dilation_h = 1, .dilation_w = 1};
      const edge_dtype dtype = kDtypes[d];
      uint8_t* x = edge_test_aligned_alloc((size_t) 2 * hw * c);
      uint8_t* y = edge_test_aligned_alloc((size_t) 2 * c);
      uint8_t* ref = edge_test_aligned_alloc((size_t) 2 * c);
      fill(dtype, x, (size_t) 2 * hw * c);
      const int32_t zx = edge_test_rand_range(dmin(dtype), dmax(dtype)), zy = edge_test_rand_range(dmin(dtype), dmax(dtype));
      const double ys = 0.05 * rand_scale(-1, 1);
      EDGE_CHECK_OK(edge_ref_q8_avgpool2d(&p, 1, 1, dtype, x, 0.05, zx, ref, ys, zy, dmin(dtype), dmax(dtype) - 3));
      edge_isa isa;
      EDGE_FOR_EACH_ISA(isa) {
        EDGE_CHECK_OK(edge_q8_global_avgpool(2, hw, c, dtype, x, 0.05, zx, y, ys, zy, dmin(dtype), dmax(dtype) - 3, g_pool));
        EDGE_CHECK(memcmp(y, ref, (size_t) 2 * c) == 0, "global avgpool hw %d c %d", (int) hw, (int) c);
      }
      free(x);
      free(y);
      free(ref);
    }
  }
}

static void test_pool_errors(void) {
  const edge_pool2d_params good = {.batch = 1, .in_h = 4, .in_w = 4, .channels = 3, .kernel_h = 2, .kernel_w = 2,
                                   .stride_h = 2, .stride_w = 2, .dilation_h = 1, .dilation_w = 1};
  int32_t oh, ow;
  uint8_t x[48] = {0}, y[48];
  EDGE_CHECK_OK(edge_pool2d_output_size(&good, &oh, &ow));
  EDGE_CHECK(oh == 2 && ow == 2, "output size %dx%d", (int) oh, (int) ow);
  EDGE_CHECK(edge_pool2d_output_size(NULL, &oh, &ow) == EDGE_ERR_INVALID_ARGUMENT, "NULL params");
  EDGE_CHECK(edge_q8_maxpool2d(&good, EDGE_DTYPE_U8, NULL, y, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "NULL x");
  EDGE_CHECK(edge_q8_maxpool2d(&good, EDGE_DTYPE_F32, x, y, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "bad dtype");
  edge_pool2d_params p = good;
  p.kernel_h = 0;
  EDGE_CHECK(edge_q8_maxpool2d(&p, EDGE_DTYPE_U8, x, y, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "kernel 0");
  p = good;
  p.pad_top = 2;
  EDGE_CHECK(edge_q8_maxpool2d(&p, EDGE_DTYPE_U8, x, y, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "pad >= kernel");
  p = good;
  p.kernel_h = 5;
  EDGE_CHECK(edge_q8_maxpool2d(&p, EDGE_DTYPE_U8, x, y, g_pool) == EDGE_ERR_SHAPE, "window larger than the input");
  p = good;
  p.in_h = 1;
  p.kernel_h = 2;
  p.dilation_h = 3;
  p.pad_top = 1;
  p.stride_h = 1;
  EDGE_CHECK(edge_q8_maxpool2d(&p, EDGE_DTYPE_U8, x, y, g_pool) == EDGE_ERR_SHAPE, "window only over padding: %s",
             edge_last_error());
  p = good;
  p.count_include_pad = 2;
  EDGE_CHECK(edge_q8_avgpool2d(&p, EDGE_DTYPE_U8, x, 1.0, 0, y, 1.0, 0, 0, 255, g_pool) == EDGE_ERR_INVALID_ARGUMENT,
             "count_include_pad 2");
  p = good;
  p.kernel_h = 1 << 12;
  p.kernel_w = 1 << 12;
  EDGE_CHECK(edge_q8_avgpool2d(&p, EDGE_DTYPE_U8, x, 1.0, 0, y, 1.0, 0, 0, 255, g_pool) == EDGE_ERR_INVALID_ARGUMENT,
             "window over 2^23");
  EDGE_CHECK(edge_q8_avgpool2d(&good, EDGE_DTYPE_U8, x, 1.0, 0, y, 0.0, 0, 0, 255, g_pool) == EDGE_ERR_INVALID_ARGUMENT,
             "zero y scale");
  EDGE_CHECK(edge_q8_avgpool2d(&good, EDGE_DTYPE_U8, x, 1.0, 0, y, 1e-9, 0, 0, 255, g_pool) == EDGE_ERR_INVALID_ARGUMENT,
             "ratio too large for int32 sums");
  EDGE_CHECK(edge_q8_avgpool2d(&good, EDGE_DTYPE_U8, x, 1e-12, 0, y, 1.0, 0, 0, 255, g_pool) == EDGE_ERR_INVALID_ARGUMENT,
             "ratio under 2^-32");
  EDGE_CHECK(edge_q8_global_avgpool(1, 0, 3, EDGE_DTYPE_U8, x, 1.0, 0, y, 1.0, 0, 0, 255, g_pool) == EDGE_ERR_SHAPE, "hw 0");
  EDGE_CHECK(edge_q8_global_avgpool(1, 4, 3, EDGE_DTYPE_S8, x, 1.0, 200, y, 1.0, 0, -128, 127, g_pool) ==
                 EDGE_ERR_INVALID_ARGUMENT, "s8 zero point 200");
}

/* ---- lookup tables ---- */

static void test_lut(void) {
  for (size_t d = 0; d < COUNT(kDtypes); d++) {
    const edge_dtype dtype = kDtypes[d];
    for (int kind = EDGE_LUT_SIGMOID; kind <= EDGE_LUT_TANH; kind++) {
      for (int round = 0; round < 4; round++) {
        const double xs = rand_scale(-2.5, -0.5), ys = round == 3 ? 1.0 / 256 : rand_scale(-3, -1);
        const int32_t zx = edge_test_rand_range(dmin(dtype), dmax(dtype)), zy = edge_test_rand_range(dmin(dtype), dmax(dtype));
        uint8_t table[256], ref[256];
        EDGE_CHECK_OK(edge_q8_lut_init((edge_lut_kind) kind, 0.2, 0.5, dtype, xs, zx, ys, zy, table));
        edge_ref_q8_lut_table((edge_lut_kind) kind, 0.2, 0.5, dtype, xs, zx, ys, zy, ref);
        EDGE_CHECK(memcmp(table, ref, 256) == 0, "lut table kind %d", kind);
      }
    }
  }
  uint8_t table[256];
  edge_test_fill_u8(table, 256, 0, 255);
  for (size_t s = 0; s < COUNT(kSizes); s++) {
    const size_t n = (size_t) kSizes[s] + 256;
    uint8_t* x = edge_test_aligned_alloc(n + 1);
    uint8_t* y = edge_test_aligned_alloc(n + 1);
    for (size_t i = 0; i < n; i++) x[i] = (uint8_t) (i < 256 ? i : edge_test_rand());
    for (size_t off = 0; off < 2; off++) { /* aligned, and unaligned over every byte value */
      const size_t len = off ? (size_t) kSizes[s] + 255 : (size_t) kSizes[s];
      edge_isa isa;
      EDGE_FOR_EACH_ISA(isa) {
        memset(y, 0, n + 1);
        EDGE_CHECK_OK(edge_q8_lut(len, table, x + off, y + off, g_pool));
        int ok = off == 0 || y[0] == 0;
        for (size_t i = 0; i < len; i++) ok &= y[off + i] == table[x[off + i]];
        ok &= y[off + len] == 0; /* nothing written past the end */
        EDGE_CHECK(ok, "lut n %zu offset %zu", len, off);
      }
    }
    free(x);
    free(y);
  }
  EDGE_CHECK(edge_q8_lut_init((edge_lut_kind) 9, 0, 0, EDGE_DTYPE_U8, 0.1, 0, 0.1, 0, table) ==
                 EDGE_ERR_INVALID_ARGUMENT, "unknown kind");
  EDGE_CHECK(edge_q8_lut_init(EDGE_LUT_TANH, 0, 0, EDGE_DTYPE_U8, -0.1, 0, 0.1, 0, table) == EDGE_ERR_INVALID_ARGUMENT,
             "negative scale");
  EDGE_CHECK(edge_q8_lut_init(EDGE_LUT_HARDSIGMOID, NAN, 0, EDGE_DTYPE_U8, 0.1, 0, 0.1, 0, table) ==
                 EDGE_ERR_INVALID_ARGUMENT, "NaN alpha");
  EDGE_CHECK(edge_q8_lut_init(EDGE_LUT_TANH, 0, 0, EDGE_DTYPE_S8, 0.1, 128, 0.1, 0, table) == EDGE_ERR_INVALID_ARGUMENT,
             "s8 zero point 128");
  EDGE_CHECK(edge_q8_lut_init(EDGE_LUT_TANH, 0, 0, EDGE_DTYPE_U8, 0.1, 0, 0.1, 0, NULL) == EDGE_ERR_INVALID_ARGUMENT,
             "NULL table");
  EDGE_CHECK(edge_q8_lut(4, NULL, table, table, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "NULL table");
}

/* ---- quantize / dequantize ---- */

static void test_quantize(void) {
  for (size_t d = 0; d < COUNT(kDtypes); d++) {
    const edge_dtype dtype = kDtypes[d];
    for (size_t s = 0; s < COUNT(kSizes); s++) {
      const size_t n = (size_t) kSizes[s];
      float* x = edge_test_aligned_alloc(n * sizeof(float) + 4);
      float* back = edge_test_aligned_alloc(n * sizeof(float) + 4);
      float* back_ref = edge_test_aligned_alloc(n * sizeof(float) + 4);
      uint8_t* y = edge_test_aligned_alloc(n + 1);
      uint8_t* ref = edge_test_aligned_alloc(n + 1);
      const float scale = s % 2 ? 0.25f : (float) rand_scale(-3, 0);
      const int32_t zp = edge_test_rand_range(dmin(dtype), dmax(dtype));
      static const float specials[] = {NAN, INFINITY, -INFINITY, 1e30f, -1e30f, 0.0f, -0.0f, 3.4e38f};
      for (size_t i = 0; i < n; i++) {
        const uint64_t r = edge_test_rand() % 8;
        if (r == 0) {
          x[i] = specials[edge_test_rand() % COUNT(specials)];
        } else if (r < 3) { /* exact ties: (k + 0.5) * scale with scale 0.25 */
          x[i] = ((float) edge_test_rand_range(-200, 200) + 0.5f) * scale;
        } else {
          x[i] = (float) ((rand_unit() - 0.5) * 300.0 * scale);
        }
      }
      edge_ref_f32_q8_quantize(n, x, scale, zp, dtype, ref);
      edge_isa isa;
      EDGE_FOR_EACH_ISA(isa) {
        memset(y, 0x5A, n + 1);
        EDGE_CHECK_OK(edge_f32_q8_quantize(n, x, scale, zp, dtype, y, g_pool));
        EDGE_CHECK(memcmp(y, ref, n) == 0 && y[n] == 0x5A, "quantize n %zu", n);
      }
      edge_ref_q8_f32_dequantize(n, dtype, ref, scale, zp, back_ref);
      { /* a second ISA loop needs its own scope */
        EDGE_FOR_EACH_ISA(isa) {
          EDGE_CHECK_OK(edge_q8_f32_dequantize(n, dtype, ref, scale, zp, back, g_pool));
          EDGE_CHECK(memcmp(back, back_ref, n * sizeof(float)) == 0, "dequantize n %zu", n);
        }
      }
      free(x);
      free(back);
      free(back_ref);
      free(y);
      free(ref);
    }
  }
  float f[2] = {0};
  uint8_t q[2];
  EDGE_CHECK(edge_f32_q8_quantize(2, f, 0.0f, 0, EDGE_DTYPE_U8, q, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "zero scale");
  EDGE_CHECK(edge_f32_q8_quantize(2, f, NAN, 0, EDGE_DTYPE_U8, q, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "NaN scale");
  EDGE_CHECK(edge_f32_q8_quantize(2, f, 1.0f, -1, EDGE_DTYPE_U8, q, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "u8 zero point -1");
  EDGE_CHECK(edge_f32_q8_quantize(2, f, 1.0f, 0, EDGE_DTYPE_S32, q, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "s32 output");
  EDGE_CHECK(edge_f32_q8_quantize(2, NULL, 1.0f, 0, EDGE_DTYPE_U8, q, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "NULL x");
  EDGE_CHECK(edge_q8_f32_dequantize(2, EDGE_DTYPE_U8, q, 1.0f, 0, NULL, g_pool) == EDGE_ERR_INVALID_ARGUMENT, "NULL y");
  EDGE_CHECK_OK(edge_f32_q8_quantize(0, NULL, 1.0f, 0, EDGE_DTYPE_U8, NULL, g_pool));
}

int main(void) {
  /* Every test on the calling thread, then on a pool of 3 threads (the large
   * sizes split into tasks there): the same bits either way. */
  for (int pass = 0; pass < 2; pass++) {
    if (pass == 1) EDGE_CHECK_OK(edge_threadpool_create(3, &g_pool));
    test_binary(0);
    test_binary(1);
    test_binary_extremes();
    test_binary_errors();
    test_pools();
    test_pool_errors();
    test_lut();
    test_quantize();
  }
  edge_threadpool_destroy(g_pool);
  return edge_test_summary("test_q8_ops");
}
