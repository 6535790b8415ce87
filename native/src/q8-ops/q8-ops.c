/* Entry points of the q8-ops family: add / mul with rescale, lookup-table
 * activations, quantize / dequantize. Pooling is in q8-pool.c.
 *
 * Every entry point checks its arguments, moves s8 parameters into the u8
 * domain (see q8-ops.h) and runs the micro-kernel of the active ISA. */
#include <math.h>

#include "q8-ops/q8-ops.h"

/* Zero points and clamps a params_init accepts before the dtype is known. */
#define Q8_ANY_MIN (-128)
#define Q8_ANY_MAX 255

static int finite_positive(double x) { return isfinite(x) && x > 0.0; }

static edge_status check_binary_init(const char* op, double a_scale, int32_t a_zero_point, double b_scale,
                                     int32_t b_zero_point, double y_scale, int32_t y_zero_point, int32_t y_min,
                                     int32_t y_max, const void* params) {
  if (params == NULL) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: params must not be NULL", op);
  if (!finite_positive(a_scale) || !finite_positive(b_scale) || !finite_positive(y_scale)) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: scales must be finite and > 0 (a %g, b %g, y %g)", op,
                     a_scale, b_scale, y_scale);
  }
  const int32_t zps[3] = {a_zero_point, b_zero_point, y_zero_point};
  for (int i = 0; i < 3; i++) {
    if (zps[i] < Q8_ANY_MIN || zps[i] > Q8_ANY_MAX) {
      return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: %c zero point %d outside [-128, 255]", op, "aby"[i],
                       (int) zps[i]);
    }
  }
  if (y_min > y_max || y_min < Q8_ANY_MIN || y_max > Q8_ANY_MAX) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: output clamp [%d, %d] is empty or outside [-128, 255]", op,
                     (int) y_min, (int) y_max);
  }
  return EDGE_OK;
}

edge_status edge_q8_add_params_init(double a_scale, int32_t a_zero_point, double b_scale, int32_t b_zero_point,
                                    double y_scale, int32_t y_zero_point, int32_t y_min, int32_t y_max,
                                    edge_q8_add_params* params) {
  edge_status status = check_binary_init("edge_q8_add_params_init", a_scale, a_zero_point, b_scale, b_zero_point,
                                         y_scale, y_zero_point, y_min, y_max, params);
  if (status != EDGE_OK) return status;
  const double a_ratio = a_scale / y_scale, b_ratio = b_scale / y_scale;
  const double max_ratio = a_ratio > b_ratio ? a_ratio : b_ratio;
  if (!(max_ratio < 0x1p21)) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT,
                     "edge_q8_add_params_init: input/output scale ratio %g >= 2^21: use a larger output scale",
                     max_ratio);
  }
  int32_t a_mult = 0, b_mult = 0, shift = 1;
  /* Below 2^-10, |a - za| * ratio + |b - zb| * ratio <= 510 * 2^-10 < 0.5:
   * every output is the zero point, which multipliers of 0 give exactly. */
  if (max_ratio >= 0x1p-10) {
    int exponent;
    frexp(max_ratio, &exponent); /* max_ratio in [2^(e-1), 2^e) */
    shift = 22 - exponent;       /* the larger multiplier lands in [2^21, 2^22]: shift in [1, 31] */
    a_mult = (int32_t) llround(ldexp(a_ratio, shift));
    b_mult = (int32_t) llround(ldexp(b_ratio, shift));
  }
  *params = (edge_q8_add_params){a_zero_point, b_zero_point, y_zero_point, a_mult, b_mult, shift, y_min, y_max};
  return EDGE_OK;
}

edge_status edge_q8_mul_params_init(double a_scale, int32_t a_zero_point, double b_scale, int32_t b_zero_point,
                                    double y_scale, int32_t y_zero_point, int32_t y_min, int32_t y_max,
                                    edge_q8_mul_params* params) {
  edge_status status = check_binary_init("edge_q8_mul_params_init", a_scale, a_zero_point, b_scale, b_zero_point,
                                         y_scale, y_zero_point, y_min, y_max, params);
  if (status != EDGE_OK) return status;
  const double ratio = a_scale * b_scale / y_scale;
  if (!(ratio < 0x1p14)) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT,
                     "edge_q8_mul_params_init: a_scale * b_scale / y_scale = %g >= 2^14: use a larger output scale",
                     ratio);
  }
  int32_t mult = 0, shift = 1;
  /* Below 2^-17, |(a - za) * (b - zb)| * ratio <= 65025 * 2^-17 < 0.5. */
  if (ratio >= 0x1p-17) {
    int exponent;
    frexp(ratio, &exponent);
    shift = 15 - exponent; /* multiplier in [2^14, 2^15]: shift in [1, 31] */
    mult = (int32_t) llround(ldexp(ratio, shift));
  }
  *params = (edge_q8_mul_params){a_zero_point, b_zero_point, y_zero_point, mult, shift, y_min, y_max};
  return EDGE_OK;
}

/* Checks shared by add and mul; fills the u8-domain kernel parameters. */
static edge_status prepare_binary(const char* op, int32_t rows, int32_t cols, edge_dtype dtype, const void* a,
                                  const void* b, const void* y, const void* params, int32_t a_zp, int32_t b_zp,
                                  int32_t y_zp, int32_t a_mult, int32_t b_mult, int32_t mult_max, int32_t shift,
                                  int32_t y_min, int32_t y_max, edge_q8_vbinary_params* out) {
  if (params == NULL) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: params must not be NULL", op);
  if (rows < 0 || cols < 0) {
    return edge_fail(EDGE_ERR_SHAPE, "%s: rows %d and cols %d must be >= 0", op, (int) rows, (int) cols);
  }
  edge_status status = edge_check_q8_dtype(dtype, op);
  if (status != EDGE_OK) return status;
  if ((a == NULL || b == NULL || y == NULL) && rows > 0 && cols > 0) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: a, b and y must not be NULL", op);
  }
  const int32_t lo = edge_dtype_min(dtype), hi = edge_dtype_max(dtype);
  const int32_t zps[3] = {a_zp, b_zp, y_zp};
  for (int i = 0; i < 3; i++) {
    if (zps[i] < lo || zps[i] > hi) {
      return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: %c zero point %d outside [%d, %d] of the dtype", op,
                       "aby"[i], (int) zps[i], (int) lo, (int) hi);
    }
  }
  if (y_min < lo || y_max > hi || y_min > y_max) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: output clamp [%d, %d] not inside [%d, %d]", op, (int) y_min,
                     (int) y_max, (int) lo, (int) hi);
  }
  /* Parameters not made by *_params_init could overflow int32: refuse them. */
  if (shift < 1 || shift > 31 || a_mult < 0 || a_mult > mult_max || b_mult < 0 || b_mult > mult_max) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT,
                     "%s: multipliers (%d, %d) must be in [0, %d] and shift %d in [1, 31]: use the params_init function",
                     op, (int) a_mult, (int) b_mult, (int) mult_max, (int) shift);
  }
  const int32_t offset = dtype == EDGE_DTYPE_S8 ? 128 : 0;
  *out = (edge_q8_vbinary_params){
      .a_zero_point = a_zp + offset, .b_zero_point = b_zp + offset, .y_zero_point = y_zp + offset,
      .a_multiplier = a_mult, .b_multiplier = b_mult, .shift = shift,
      .y_min = y_min + offset, .y_max = y_max + offset, .flip = (uint8_t) offset};
  return EDGE_OK;
}

/* Runs a binary micro-kernel over rows x cols with the given strides (y rows
 * y_row_stride bytes apart): rows with contiguous a and b (or a broadcast b)
 * go to the SIMD kernel, any other layout one element at a time. swapped_p
 * holds the parameters with a and b exchanged: both ops are symmetric, so a
 * broadcast a becomes a broadcast b. */
static void run_binary(edge_q8_vbinary_ukernel_fn ukernel, size_t rows, size_t cols, const uint8_t* a,
                       size_t a_row_stride, size_t a_col_stride, const uint8_t* b, size_t b_row_stride,
                       size_t b_col_stride, uint8_t* y, size_t y_row_stride, const edge_q8_vbinary_params* p,
                       const edge_q8_vbinary_params* swapped_p) {
  if (cols == 0) return; /* the kernels read a broadcast b[0] up front */
  for (size_t r = 0; r < rows; r++) {
    const uint8_t* ar = a + r * a_row_stride;
    const uint8_t* br = b + r * b_row_stride;
    uint8_t* yr = y + r * y_row_stride;
    if (a_col_stride == 1 && b_col_stride <= 1) {
      ukernel(cols, ar, br, b_col_stride, yr, p);
    } else if (a_col_stride == 0 && b_col_stride == 1) {
      ukernel(cols, br, ar, 0, yr, swapped_p);
    } else {
      for (size_t i = 0; i < cols; i++) {
        ukernel(1, ar + i * a_col_stride, br + i * b_col_stride, 0, yr + i, p);
      }
    }
  }
}

/* A binary op split over the pool into blocks of rows_per_task rows x
 * cols_per_task columns (whole rows when rows are short, column blocks of
 * one row when they are long). */
typedef struct binary_job {
  edge_q8_vbinary_ukernel_fn ukernel;
  size_t rows, cols;
  const uint8_t* a;
  size_t a_row_stride, a_col_stride;
  const uint8_t* b;
  size_t b_row_stride, b_col_stride;
  uint8_t* y;
  const edge_q8_vbinary_params *p, *swapped;
  size_t rows_per_task, cols_per_task, col_tasks;
} binary_job;

static void binary_task(void* context, size_t index) {
  const binary_job* j = (const binary_job*) context;
  const size_t r0 = index / j->col_tasks * j->rows_per_task, c0 = index % j->col_tasks * j->cols_per_task;
  run_binary(j->ukernel, EDGE_MIN(j->rows_per_task, j->rows - r0), EDGE_MIN(j->cols_per_task, j->cols - c0),
             j->a + r0 * j->a_row_stride + c0 * j->a_col_stride, j->a_row_stride, j->a_col_stride,
             j->b + r0 * j->b_row_stride + c0 * j->b_col_stride, j->b_row_stride, j->b_col_stride,
             j->y + r0 * j->cols + c0, j->cols, j->p, j->swapped);
}

static void parallel_binary(edge_q8_vbinary_ukernel_fn ukernel, int32_t rows, int32_t cols, const void* a,
                            size_t a_row_stride, size_t a_col_stride, const void* b, size_t b_row_stride,
                            size_t b_col_stride, void* y, const edge_q8_vbinary_params* p,
                            const edge_q8_vbinary_params* swapped, edge_threadpool* pool) {
  if (rows == 0 || cols == 0) return;
  binary_job j = {ukernel, (size_t) rows, (size_t) cols, a, a_row_stride, a_col_stride, b, b_row_stride,
                  b_col_stride, y, p, swapped, (size_t) rows, (size_t) cols, 1};
  const size_t units = edge_task_units(pool, j.rows * j.cols, EDGE_MIN_TASK_ELEMENTS, 64);
  if (units >= j.cols) {
    j.rows_per_task = units / j.cols;
  } else {
    j.rows_per_task = 1;
    j.cols_per_task = units;
  }
  j.col_tasks = (j.cols + j.cols_per_task - 1) / j.cols_per_task;
  const size_t row_tasks = (j.rows + j.rows_per_task - 1) / j.rows_per_task;
  edge_parallelize(pool, binary_task, &j, row_tasks * j.col_tasks);
}

static edge_q8_vbinary_params swap_operands(const edge_q8_vbinary_params* p) {
  edge_q8_vbinary_params s = *p;
  s.a_zero_point = p->b_zero_point;
  s.b_zero_point = p->a_zero_point;
  s.a_multiplier = p->b_multiplier;
  s.b_multiplier = p->a_multiplier;
  return s;
}

edge_status edge_q8_add(int32_t rows, int32_t cols, edge_dtype dtype,
                        const void* a, size_t a_row_stride, size_t a_col_stride,
                        const void* b, size_t b_row_stride, size_t b_col_stride,
                        void* y, const edge_q8_add_params* params, edge_threadpool* pool) {
  edge_q8_vbinary_params p;
  edge_status status = params == NULL
      ? edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_add: params must not be NULL")
      : prepare_binary("edge_q8_add", rows, cols, dtype, a, b, y, params, params->a_zero_point,
                       params->b_zero_point, params->y_zero_point, params->a_multiplier, params->b_multiplier,
                       1 << 22, params->shift, params->y_min, params->y_max, &p);
  if (status != EDGE_OK) return status;
  const edge_q8_vbinary_params swapped = swap_operands(&p);
  parallel_binary(edge_q8_ops_config_get()->vadd, rows, cols, a, a_row_stride, a_col_stride, b, b_row_stride,
                  b_col_stride, y, &p, &swapped, pool);
  return EDGE_OK;
}

edge_status edge_q8_mul(int32_t rows, int32_t cols, edge_dtype dtype,
                        const void* a, size_t a_row_stride, size_t a_col_stride,
                        const void* b, size_t b_row_stride, size_t b_col_stride,
                        void* y, const edge_q8_mul_params* params, edge_threadpool* pool) {
  edge_q8_vbinary_params p;
  edge_status status = params == NULL
      ? edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_mul: params must not be NULL")
      : prepare_binary("edge_q8_mul", rows, cols, dtype, a, b, y, params, params->a_zero_point,
                       params->b_zero_point, params->y_zero_point, params->multiplier,
                       params->multiplier /* symmetric, so the a/b swap keeps it */, 1 << 15,
                       params->shift, params->y_min, params->y_max, &p);
  if (status != EDGE_OK) return status;
  const edge_q8_vbinary_params swapped = swap_operands(&p);
  parallel_binary(edge_q8_ops_config_get()->vmul, rows, cols, a, a_row_stride, a_col_stride, b, b_row_stride,
                  b_col_stride, y, &p, &swapped, pool);
  return EDGE_OK;
}

/* ---- lookup tables ---- */

static double lut_function(edge_lut_kind kind, double alpha, double beta, double x) {
  switch (kind) {
    case EDGE_LUT_SIGMOID: return 1.0 / (1.0 + exp(-x));
    case EDGE_LUT_HARDSIGMOID: {
      /* volatile keeps alpha * x + beta two roundings: gnu11 builds on arm64
       * would contract it into an fma, and the tables must match numpy. */
      const volatile double ax = alpha * x;
      return fmax(0.0, fmin(1.0, ax + beta));
    }
    case EDGE_LUT_HARDSWISH: return x * fmax(0.0, fmin(1.0, x / 6.0 + 0.5));
    case EDGE_LUT_GELU: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case EDGE_LUT_TANH: return tanh(x);
  }
  return 0.0;
}

edge_status edge_q8_lut_init(edge_lut_kind kind, double alpha, double beta, edge_dtype dtype,
                             double x_scale, int32_t x_zero_point, double y_scale, int32_t y_zero_point,
                             uint8_t* table) {
  if (table == NULL) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_lut_init: table must not be NULL");
  if ((int) kind < EDGE_LUT_SIGMOID || (int) kind > EDGE_LUT_TANH) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_lut_init: unknown kind %d (expected 0..4)", (int) kind);
  }
  edge_status status = edge_check_q8_dtype(dtype, "edge_q8_lut_init: dtype");
  if (status != EDGE_OK) return status;
  if (!finite_positive(x_scale) || !finite_positive(y_scale)) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_lut_init: scales must be finite and > 0 (x %g, y %g)",
                     x_scale, y_scale);
  }
  if (kind == EDGE_LUT_HARDSIGMOID && !(isfinite(alpha) && isfinite(beta))) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_lut_init: hard-sigmoid alpha %g and beta %g must be finite",
                     alpha, beta);
  }
  const int32_t lo = edge_dtype_min(dtype), hi = edge_dtype_max(dtype);
  if (x_zero_point < lo || x_zero_point > hi || y_zero_point < lo || y_zero_point > hi) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_lut_init: zero points (x %d, y %d) outside [%d, %d]",
                     (int) x_zero_point, (int) y_zero_point, (int) lo, (int) hi);
  }
  for (int32_t i = 0; i < 256; i++) {
    const int32_t q = dtype == EDGE_DTYPE_S8 ? (int32_t) (int8_t) (uint8_t) i : i;
    const double f = lut_function(kind, alpha, beta, x_scale * (double) (q - x_zero_point));
    double v = nearbyint(f / y_scale) + (double) y_zero_point; /* half to even; exact below 2^52 */
    v = v < (double) lo ? (double) lo : v;
    v = v > (double) hi ? (double) hi : v;
    table[i] = (uint8_t) (int32_t) v; /* s8: the two's-complement byte */
  }
  return EDGE_OK;
}

/* An element-wise op on n contiguous elements, split over the pool in chunks
 * of `chunk` elements: each op's task runs its micro-kernel on one chunk. */
typedef struct chunk_job {
  size_t n, chunk;
  const void* x;
  void* y;
  const void* extra; /* the table, or the quantize parameters */
  uint8_t flip;      /* dequantize */
  int32_t zero_point;
  float scale;
} chunk_job;

static size_t chunk_of(const chunk_job* j, size_t index, size_t* i0) {
  *i0 = index * j->chunk;
  return EDGE_MIN(j->chunk, j->n - *i0);
}

static size_t chunk_tasks(chunk_job* j, edge_threadpool* pool) {
  j->chunk = edge_task_units(pool, j->n, EDGE_MIN_TASK_ELEMENTS, 64);
  return (j->n + j->chunk - 1) / j->chunk;
}

static void lut_task(void* context, size_t index) {
  const chunk_job* j = (const chunk_job*) context;
  size_t i0;
  const size_t n = chunk_of(j, index, &i0);
  edge_q8_ops_config_get()->lut(n, (const uint8_t*) j->x + i0, (const uint8_t*) j->extra, (uint8_t*) j->y + i0);
}

edge_status edge_q8_lut(size_t n, const uint8_t* table, const void* x, void* y, edge_threadpool* pool) {
  if (n == 0) return EDGE_OK;
  if (table == NULL || x == NULL || y == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_lut: table, x and y must not be NULL");
  }
  chunk_job j = {.n = n, .x = x, .y = y, .extra = table};
  edge_parallelize(pool, lut_task, &j, chunk_tasks(&j, pool));
  return EDGE_OK;
}

/* ---- quantize / dequantize ---- */

static edge_status check_quant(const char* op, size_t n, const void* x, float scale, int32_t zero_point,
                               edge_dtype dtype, const void* y) {
  edge_status status = edge_check_q8_dtype(dtype, op);
  if (status != EDGE_OK) return status;
  if (n > 0 && (x == NULL || y == NULL)) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: x and y must not be NULL", op);
  if (!(isfinite(scale) && scale > 0.0f)) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: scale %g must be finite and > 0", op, (double) scale);
  }
  const int32_t lo = edge_dtype_min(dtype), hi = edge_dtype_max(dtype);
  if (zero_point < lo || zero_point > hi) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: zero point %d outside [%d, %d]", op, (int) zero_point,
                     (int) lo, (int) hi);
  }
  return EDGE_OK;
}

static void quantize_task(void* context, size_t index) {
  const chunk_job* j = (const chunk_job*) context;
  size_t i0;
  const size_t n = chunk_of(j, index, &i0);
  edge_q8_ops_config_get()->quantize(n, (const float*) j->x + i0, (const edge_q8_quantize_params*) j->extra,
                                     (uint8_t*) j->y + i0);
}

edge_status edge_f32_q8_quantize(size_t n, const float* x, float scale, int32_t zero_point,
                                 edge_dtype dtype, void* y, edge_threadpool* pool) {
  edge_status status = check_quant("edge_f32_q8_quantize", n, x, scale, zero_point, dtype, y);
  if (status != EDGE_OK) return status;
  const int32_t offset = dtype == EDGE_DTYPE_S8 ? 128 : 0;
  const int32_t zp = zero_point + offset;
  const edge_q8_quantize_params p = {
      .scale = scale, .lo = (float) (0 - zp), .hi = (float) (255 - zp), .zero_point = zp, .flip = (uint8_t) offset};
  if (n == 0) return EDGE_OK;
  chunk_job j = {.n = n, .x = x, .y = y, .extra = &p};
  edge_parallelize(pool, quantize_task, &j, chunk_tasks(&j, pool));
  return EDGE_OK;
}

static void dequantize_task(void* context, size_t index) {
  const chunk_job* j = (const chunk_job*) context;
  size_t i0;
  const size_t n = chunk_of(j, index, &i0);
  edge_q8_ops_config_get()->dequantize(n, (const uint8_t*) j->x + i0, j->flip, j->zero_point, j->scale,
                                       (float*) j->y + i0);
}

edge_status edge_q8_f32_dequantize(size_t n, edge_dtype dtype, const void* x, float scale,
                                   int32_t zero_point, float* y, edge_threadpool* pool) {
  edge_status status = check_quant("edge_q8_f32_dequantize", n, x, scale, zero_point, dtype, y);
  if (status != EDGE_OK) return status;
  const int32_t offset = dtype == EDGE_DTYPE_S8 ? 128 : 0;
  if (n == 0) return EDGE_OK;
  chunk_job j = {.n = n, .x = x, .y = y, .flip = (uint8_t) offset, .zero_point = zero_point + offset, .scale = scale};
  edge_parallelize(pool, dequantize_task, &j, chunk_tasks(&j, pool));
  return EDGE_OK;
}
