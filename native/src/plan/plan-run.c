/* The plan interpreter (edge/plan.h): one C call runs a bound program of
 * kernel calls, so that a model's inference costs no per-step Python or cffi
 * work and releases the GIL once for the whole run.
 *
 * Besides dispatching to the kernel entry points, it holds the byte moves a
 * plan needs between kernels: a permutation (NCHW <-> NHWC at the plan's edges,
 * Transpose steps), the im2col of a convolution with few input channels (an
 * image stem, whose GEMM then reads whole rows of taps), a copy, and a clamp. */
#define _POSIX_C_SOURCE 200809L /* nanosleep, clock_gettime under -std=c11 */
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "internal.h"

static atomic_int runs_active = 0;
static atomic_int runs_peak = 0;
static atomic_int rendezvous_parties = 0;
static atomic_int rendezvous_arrived = 0;
static atomic_int rendezvous_timeout_ms = 0;

int32_t edge_plan_runs_active(void) { return atomic_load(&runs_active); }
int32_t edge_plan_runs_peak(void) { return atomic_load(&runs_peak); }
void edge_plan_runs_peak_reset(void) { atomic_store(&runs_peak, atomic_load(&runs_active)); }

void edge_plan_rendezvous(int32_t parties, int32_t timeout_ms) {
  atomic_store(&rendezvous_arrived, 0);
  atomic_store(&rendezvous_timeout_ms, timeout_ms);
  atomic_store(&rendezvous_parties, parties);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

/* The test hook of edge_plan_rendezvous: wait until `parties` runs have arrived. */
static edge_status rendezvous(void) {
  const int parties = atomic_load(&rendezvous_parties);
  if (parties <= 1) return EDGE_OK;
  atomic_fetch_add(&rendezvous_arrived, 1);
  const uint64_t deadline = now_ms() + (uint64_t) atomic_load(&rendezvous_timeout_ms);
  const struct timespec pause = {0, 1000000}; /* 1 ms */
  while (atomic_load(&rendezvous_arrived) < parties) {
    if (now_ms() > deadline) {
      return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "plan rendezvous: %d of %d runs arrived",
                       atomic_load(&rendezvous_arrived), parties);
    }
    nanosleep(&pause, NULL);
  }
  return EDGE_OK;
}

static edge_status clamp(const edge_plan_clamp_args* a) {
  if (a->n > 0 && (a->x == NULL || a->y == NULL)) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "clamp: null pointer");
  if (a->dtype == EDGE_DTYPE_U8) {
    const uint8_t* x = a->x;
    uint8_t* y = a->y;
    const uint8_t lo = (uint8_t) EDGE_MAX(a->lo, 0), hi = (uint8_t) EDGE_MIN(a->hi, 255);
    for (size_t i = 0; i < a->n; i++) y[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
  } else if (a->dtype == EDGE_DTYPE_S8) {
    const int8_t* x = a->x;
    int8_t* y = a->y;
    const int8_t lo = (int8_t) EDGE_MAX(a->lo, -128), hi = (int8_t) EDGE_MIN(a->hi, 127);
    for (size_t i = 0; i < a->n; i++) y[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
  } else {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "clamp: dtype %d is not u8 or s8", (int) a->dtype);
  }
  return EDGE_OK;
}

/* NCHW -> NHWC of bytes, x's planes contiguous: y[n][p][c] = x[n][c][p] for the
 * p < planes pixels of a plane. The channel count is a constant in the common
 * cases (an image's 1, 3 or 4 channels), so each pixel is a few loads and stores. */
static void interleave_planes(size_t batch, size_t channels, size_t pixels, size_t x_batch_stride,
                              size_t plane_stride, const uint8_t* x, uint8_t* y) {
  for (size_t n = 0; n < batch; n++) {
    const uint8_t* xn = x + n * x_batch_stride;
    uint8_t* yn = y + n * pixels * channels;
    if (channels == 3) {
      const uint8_t *r = xn, *g = xn + plane_stride, *b = xn + 2 * plane_stride;
      for (size_t p = 0; p < pixels; p++) {
        yn[3 * p] = r[p];
        yn[3 * p + 1] = g[p];
        yn[3 * p + 2] = b[p];
      }
    } else {
      for (size_t c = 0; c < channels; c++) {
        const uint8_t* plane = xn + c * plane_stride;
        for (size_t p = 0; p < pixels; p++) yn[p * channels + c] = plane[p];
      }
    }
  }
}

/* y (contiguous) from x with strides: the loops run in x's order (largest
 * stride outermost), so that x is read in order and y written with strides. */
static edge_status permute(const edge_plan_permute_args* a) {
  const int nd = a->ndim;
  const size_t es = a->element_size;
  if (nd < 1 || nd > EDGE_PLAN_MAX_DIMS || (es != 1 && es != 2 && es != 4 && es != 8) || a->x == NULL ||
      a->y == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "permute: ndim %d, element size %zu", nd, es);
  }
  size_t y_strides[EDGE_PLAN_MAX_DIMS];
  size_t total = 1;
  for (int d = nd - 1; d >= 0; d--) {
    y_strides[d] = total * es;
    total *= a->shape[d];
  }
  if (total == 0) return EDGE_OK;
  const size_t* xs4 = a->x_strides;
  if (nd == 4 && es == 1 && a->shape[3] <= 16 && xs4[2] == 1 && xs4[1] == a->shape[2] &&
      xs4[3] >= a->shape[1] * a->shape[2] && xs4[0] >= xs4[3] * a->shape[3]) {
    interleave_planes(a->shape[0], a->shape[3], a->shape[1] * a->shape[2], xs4[0], xs4[3], a->x, a->y);
    return EDGE_OK;
  }
  /* Loop order: dimensions by decreasing x stride (insertion sort of at most 6). */
  int order[EDGE_PLAN_MAX_DIMS];
  for (int d = 0; d < nd; d++) {
    int j = d;
    while (j > 0 && a->x_strides[order[j - 1]] < a->x_strides[d]) {
      order[j] = order[j - 1];
      j--;
    }
    order[j] = d;
  }
  const int inner = order[nd - 1];
  const size_t n_inner = a->shape[inner], xs = a->x_strides[inner], ys = y_strides[inner];
  size_t index[EDGE_PLAN_MAX_DIMS] = {0};
  const uint8_t* x = a->x;
  uint8_t* y = a->y;
  for (size_t done = 0; done < total; done += n_inner) {
    size_t xo = 0, yo = 0;
    for (int k = 0; k < nd - 1; k++) {
      xo += index[k] * a->x_strides[order[k]];
      yo += index[k] * y_strides[order[k]];
    }
    const uint8_t* xp = x + xo;
    uint8_t* yp = y + yo;
    switch (es) {
      case 1:
        for (size_t i = 0; i < n_inner; i++) yp[i * ys] = xp[i * xs];
        break;
      default:
        for (size_t i = 0; i < n_inner; i++) memcpy(yp + i * ys, xp + i * xs, es);
        break;
    }
    for (int k = nd - 2; k >= 0; k--) { /* the odometer over the outer dimensions */
      if (++index[k] < a->shape[order[k]]) break;
      index[k] = 0;
    }
  }
  return EDGE_OK;
}

/* memcpy of a short run (an image stem's row of taps: 9 bytes for 3x3x3, 21 for
 * 7x7x3) as two overlapping fixed-size moves, which compile to single loads and stores. */
static inline void copy_run(uint8_t* dst, const uint8_t* src, size_t n) {
  if (n >= 16 && n <= 32) {
    memcpy(dst, src, 16);
    memcpy(dst + n - 16, src + n - 16, 16);
  } else if (n >= 8 && n < 16) {
    memcpy(dst, src, 8);
    memcpy(dst + n - 8, src + n - 8, 8);
  } else {
    memcpy(dst, src, n);
  }
}

typedef struct im2col_context {
  const edge_plan_im2col_args* a;
  size_t rows_per_task; /* output rows (batch * out_h) */
} im2col_context;

static void im2col_rows(void* context, size_t task) {
  const im2col_context* ctx = context;
  const edge_plan_im2col_args* a = ctx->a;
  const size_t rows = (size_t) a->batch * (size_t) a->out_h;
  const size_t first = task * ctx->rows_per_task;
  const size_t last = EDGE_MIN(rows, first + ctx->rows_per_task);
  const size_t c = (size_t) a->channels;
  const size_t tap_row = (size_t) a->kernel_w * c;
  const size_t k = (size_t) a->kernel_h * tap_row;
  const size_t padded_row = (size_t) a->padded_w * c;
  const uint8_t* padded = a->padded;
  uint8_t* out = a->a;
  for (size_t row = first; row < last; row++) {
    const size_t n = row / (size_t) a->out_h, oy = row % (size_t) a->out_h;
    const uint8_t* image = padded + n * (size_t) a->padded_h * padded_row;
    uint8_t* dst = out + row * (size_t) a->out_w * k;
    for (size_t ox = 0; ox < (size_t) a->out_w; ox++) {
      const uint8_t* src = image + (oy * (size_t) a->stride_h) * padded_row + ox * (size_t) a->stride_w * c;
      for (int32_t ky = 0; ky < a->kernel_h; ky++) {
        copy_run(dst, src + (size_t) ky * padded_row, tap_row);
        dst += tap_row;
      }
    }
  }
}

static edge_status im2col(const edge_plan_im2col_args* a, edge_threadpool* pool) {
  if (a->x == NULL || a->padded == NULL || a->a == NULL || a->batch < 0 || a->channels < 1 || a->kernel_h < 1 ||
      a->kernel_w < 1 || a->stride_h < 1 || a->stride_w < 1 || a->pad_top < 0 || a->pad_left < 0 ||
      a->pad_top + a->in_h > a->padded_h || a->pad_left + a->in_w > a->padded_w ||
      (a->out_h - 1) * a->stride_h + a->kernel_h > a->padded_h ||
      (a->out_w - 1) * a->stride_w + a->kernel_w > a->padded_w) {
    return edge_fail(EDGE_ERR_SHAPE, "im2col: the geometry does not fit the padded input");
  }
  const size_t c = (size_t) a->channels, in_row = (size_t) a->in_w * c, padded_row = (size_t) a->padded_w * c;
  const uint8_t* x = a->x;
  uint8_t* padded = a->padded;
  for (size_t n = 0; n < (size_t) a->batch; n++) {
    for (size_t y = 0; y < (size_t) a->in_h; y++) {
      uint8_t* dst = padded + ((n * (size_t) a->padded_h + (size_t) a->pad_top + y) * padded_row) +
                     (size_t) a->pad_left * c;
      memcpy(dst, x + (n * (size_t) a->in_h + y) * in_row, in_row);
    }
  }
  const size_t rows = (size_t) a->batch * (size_t) a->out_h;
  const size_t row_bytes = (size_t) a->out_w * (size_t) a->kernel_h * (size_t) a->kernel_w * c;
  if (rows == 0) return EDGE_OK;
  const size_t min_rows = EDGE_MAX(1, EDGE_MIN_TASK_ELEMENTS / EDGE_MAX(1, row_bytes));
  im2col_context ctx = {a, edge_task_units(pool, rows, min_rows, 1)};
  edge_parallelize(pool, im2col_rows, &ctx, (rows + ctx.rows_per_task - 1) / ctx.rows_per_task);
  return EDGE_OK;
}

static edge_status run_op(const edge_plan_op* op, edge_threadpool* pool) {
  switch (op->kind) {
    case EDGE_PLAN_GEMM:
    case EDGE_PLAN_GEMM24: {
      const edge_plan_gemm_args* a = &op->args.gemm;
      return (op->kind == EDGE_PLAN_GEMM ? edge_q8_gemm : edge_q8_gemm24)(
          a->m, a->n, a->k, a->a_dtype, a->a, a->a_stride, a->a_zero_point, a->packed, a->c_dtype, a->c,
          a->c_stride, a->requant, pool);
    }
    case EDGE_PLAN_CONV2D:
    case EDGE_PLAN_CONV2D24: {
      const edge_plan_conv_args* a = &op->args.conv;
      return (op->kind == EDGE_PLAN_CONV2D ? edge_q8_conv2d : edge_q8_conv2d24)(
          a->params, a->x_dtype, a->x, a->x_zero_point, a->packed, a->y_dtype, a->y, a->requant, a->workspace,
          a->workspace_size, pool);
    }
    case EDGE_PLAN_DWCONV2D: {
      const edge_plan_conv_args* a = &op->args.conv;
      return edge_q8_dwconv2d(a->params, a->x_dtype, a->x, a->x_zero_point, a->packed, a->y_dtype, a->y,
                              a->requant, pool);
    }
    case EDGE_PLAN_ADD: {
      const edge_plan_add_args* a = &op->args.add;
      return edge_q8_add(a->rows, a->cols, a->dtype, a->a, a->a_row_stride, a->a_col_stride, a->b,
                         a->b_row_stride, a->b_col_stride, a->y, a->params, pool);
    }
    case EDGE_PLAN_MUL: {
      const edge_plan_mul_args* a = &op->args.mul;
      return edge_q8_mul(a->rows, a->cols, a->dtype, a->a, a->a_row_stride, a->a_col_stride, a->b,
                         a->b_row_stride, a->b_col_stride, a->y, a->params, pool);
    }
    case EDGE_PLAN_LUT: {
      const edge_plan_lut_args* a = &op->args.lut;
      return edge_q8_lut(a->n, a->table, a->x, a->y, pool);
    }
    case EDGE_PLAN_LUT_CHANNELS: {
      const edge_plan_lut_channels_args* a = &op->args.lut_channels;
      return edge_q8_lut_channels(a->outer, a->channels, a->inner, a->tables, a->x, a->y, pool);
    }
    case EDGE_PLAN_SOFTMAX: {
      const edge_plan_softmax_args* a = &op->args.softmax;
      return edge_f32_softmax(a->rows, a->cols, a->x, a->y);
    }
    case EDGE_PLAN_MAXPOOL2D: {
      const edge_plan_maxpool_args* a = &op->args.maxpool;
      return edge_q8_maxpool2d(a->params, a->dtype, a->x, a->y, pool);
    }
    case EDGE_PLAN_AVGPOOL2D: {
      const edge_plan_avgpool_args* a = &op->args.avgpool;
      return edge_q8_avgpool2d(a->params, a->dtype, a->x, a->x_scale, a->x_zero_point, a->y, a->y_scale,
                               a->y_zero_point, a->y_min, a->y_max, pool);
    }
    case EDGE_PLAN_GLOBAL_AVGPOOL: {
      const edge_plan_global_avgpool_args* a = &op->args.global_avgpool;
      return edge_q8_global_avgpool(a->batch, a->hw, a->channels, a->dtype, a->x, a->x_scale, a->x_zero_point,
                                    a->y, a->y_scale, a->y_zero_point, a->y_min, a->y_max, pool);
    }
    case EDGE_PLAN_QUANTIZE: {
      const edge_plan_quantize_args* a = &op->args.quantize;
      return edge_f32_q8_quantize(a->n, a->x, a->scale, a->zero_point, a->dtype, a->y, pool);
    }
    case EDGE_PLAN_DEQUANTIZE: {
      const edge_plan_dequantize_args* a = &op->args.dequantize;
      return edge_q8_f32_dequantize(a->n, a->dtype, a->x, a->scale, a->zero_point, a->y, pool);
    }
    case EDGE_PLAN_LAYERNORM: {
      const edge_plan_layernorm_args* a = &op->args.layernorm;
      return edge_f32_layernorm(a->rows, a->cols, a->x, a->gamma, a->beta, a->epsilon, a->y);
    }
    case EDGE_PLAN_CLAMP:
      return clamp(&op->args.clamp);
    case EDGE_PLAN_PERMUTE:
      return permute(&op->args.permute);
    case EDGE_PLAN_IM2COL:
      return im2col(&op->args.im2col, pool);
    case EDGE_PLAN_COPY: {
      const edge_plan_copy_args* a = &op->args.copy;
      if (a->n > 0 && (a->x == NULL || a->y == NULL)) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "copy: null pointer");
      if (a->n > 0) memcpy(a->y, a->x, a->n);
      return EDGE_OK;
    }
    case EDGE_PLAN_ATTENTION: {
      const edge_plan_attention_args* a = &op->args.attention;
      return edge_q8_attention(a->params, a->q, a->kt, a->v, a->y, a->workspace, a->workspace_size, pool);
    }
  }
  return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "plan op kind %d is unknown", (int) op->kind);
}

edge_status edge_plan_run(const edge_plan_op* ops, size_t count, edge_threadpool* pool, size_t* failed_op) {
  if (ops == NULL && count > 0) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "ops must not be NULL");
  const int active = atomic_fetch_add(&runs_active, 1) + 1;
  int peak = atomic_load(&runs_peak);
  while (active > peak && !atomic_compare_exchange_weak(&runs_peak, &peak, active)) {
  }
  size_t failed = SIZE_MAX; /* the run itself (the rendezvous), not an op */
  edge_status status = rendezvous();
  for (size_t i = 0; status == EDGE_OK && i < count; i++) {
    status = run_op(&ops[i], pool);
    failed = i;
  }
  atomic_fetch_sub(&runs_active, 1);
  if (status != EDGE_OK && failed_op != NULL) *failed_op = failed;
  return status;
}
