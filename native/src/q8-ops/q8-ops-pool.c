/* Pooling on NHWC: max pool, average pool and global average pool.
 *
 * The window loops are plain C; the work per window tap runs over the
 * channels in the micro-kernels (vmax, vsum) of the active ISA. Average pools
 * accumulate in int32 and requantize with edge_requantize (edge/ops.h states
 * the exact rule, including the pre-shift for scale ratios >= 1). */
#include <math.h>
#include <string.h>

#include "q8-ops/q8-ops.h"

/* Channels per block of average-pool accumulators (kept on the stack). */
#define POOL_CHANNEL_BLOCK 256
/* Window taps per average: 2^23 * 255 < 2^31 keeps the int32 sums exact. */
#define POOL_MAX_WINDOW (INT32_C(1) << 23)

/* Number of window taps of output index o that fall inside [0, in). */
static int32_t valid_taps(int32_t o, int32_t stride, int32_t pad, int32_t kernel, int32_t dilation, int32_t in) {
  int32_t count = 0;
  const int64_t start = (int64_t) o * stride - pad;
  for (int32_t k = 0; k < kernel; k++) {
    const int64_t i = start + (int64_t) k * dilation;
    count += i >= 0 && i < in;
  }
  return count;
}

static edge_status check_pool_params(const edge_pool2d_params* p, const char* op, int32_t* out_h, int32_t* out_w) {
  if (p == NULL) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: params must not be NULL", op);
  if (p->batch < 1 || p->in_h < 1 || p->in_w < 1 || p->channels < 1) {
    return edge_fail(EDGE_ERR_SHAPE, "%s: batch %d, in_h %d, in_w %d and channels %d must be >= 1", op,
                     (int) p->batch, (int) p->in_h, (int) p->in_w, (int) p->channels);
  }
  if (p->kernel_h < 1 || p->kernel_w < 1 || p->stride_h < 1 || p->stride_w < 1 || p->dilation_h < 1 ||
      p->dilation_w < 1) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: kernel %dx%d, stride %dx%d and dilation %dx%d must be >= 1", op,
                     (int) p->kernel_h, (int) p->kernel_w, (int) p->stride_h, (int) p->stride_w,
                     (int) p->dilation_h, (int) p->dilation_w);
  }
  if ((int64_t) p->kernel_h * p->kernel_w > POOL_MAX_WINDOW) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: window %dx%d has more than 2^23 taps", op, (int) p->kernel_h,
                     (int) p->kernel_w);
  }
  const int64_t extent_h = (int64_t) p->dilation_h * (p->kernel_h - 1) + 1;
  const int64_t extent_w = (int64_t) p->dilation_w * (p->kernel_w - 1) + 1;
  if (p->pad_top < 0 || p->pad_bottom < 0 || p->pad_left < 0 || p->pad_right < 0 || p->pad_top >= extent_h ||
      p->pad_bottom >= extent_h || p->pad_left >= extent_w || p->pad_right >= extent_w) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT,
                     "%s: pads (top %d, left %d, bottom %d, right %d) must be >= 0 and smaller than the dilated "
                     "window %lldx%lld", op, (int) p->pad_top, (int) p->pad_left, (int) p->pad_bottom,
                     (int) p->pad_right, (long long) extent_h, (long long) extent_w);
  }
  if (p->count_include_pad != 0 && p->count_include_pad != 1) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: count_include_pad must be 0 or 1 (got %d)", op,
                     (int) p->count_include_pad);
  }
  const int64_t span_h = (int64_t) p->in_h + p->pad_top + p->pad_bottom - extent_h;
  const int64_t span_w = (int64_t) p->in_w + p->pad_left + p->pad_right - extent_w;
  if (span_h < 0 || span_w < 0) {
    return edge_fail(EDGE_ERR_SHAPE, "%s: padded input %lldx%lld is smaller than the dilated window %lldx%lld", op,
                     (long long) (span_h + extent_h), (long long) (span_w + extent_w), (long long) extent_h,
                     (long long) extent_w);
  }
  const int32_t oh = (int32_t) (span_h / p->stride_h + 1), ow = (int32_t) (span_w / p->stride_w + 1);
  /* A dilated window can straddle a small input without touching it. */
  for (int32_t o = 0; o < oh; o++) {
    if (valid_taps(o, p->stride_h, p->pad_top, p->kernel_h, p->dilation_h, p->in_h) == 0) {
      return edge_fail(EDGE_ERR_SHAPE, "%s: the window of output row %d covers only padding", op, (int) o);
    }
  }
  for (int32_t o = 0; o < ow; o++) {
    if (valid_taps(o, p->stride_w, p->pad_left, p->kernel_w, p->dilation_w, p->in_w) == 0) {
      return edge_fail(EDGE_ERR_SHAPE, "%s: the window of output column %d covers only padding", op, (int) o);
    }
  }
  *out_h = oh;
  *out_w = ow;
  return EDGE_OK;
}

edge_status edge_pool2d_output_size(const edge_pool2d_params* p, int32_t* out_h, int32_t* out_w) {
  if (out_h == NULL || out_w == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_pool2d_output_size: out_h and out_w must not be NULL");
  }
  return check_pool_params(p, "edge_pool2d_output_size", out_h, out_w);
}

/* Requantization of an average over `divisor` taps (see edge/ops.h):
 * y = requantize(acc * 2^pre_shift, multiplier, shift) with
 * scale = x_scale / (y_scale * divisor) = multiplier * 2^(pre_shift - shift). */
typedef struct avg_requant {
  int32_t divisor, multiplier, shift, pre_scale; /* pre_scale = 2^pre_shift */
} avg_requant;

static edge_status avg_requant_init(const char* op, double x_scale, double y_scale, int32_t divisor,
                                    avg_requant* out) {
  double scale = x_scale / (y_scale * (double) divisor);
  int32_t pre_shift = 0;
  if (scale >= 1.0) {
    int exponent;
    frexp(scale, &exponent); /* scale / 2^exponent in [0.5, 1) */
    pre_shift = exponent;
    /* |acc| <= divisor * 255 must stay inside int32 after the pre-shift. */
    if (pre_shift > 30 || (((int64_t) divisor * 255) << pre_shift) > INT32_MAX) {
      return edge_fail(EDGE_ERR_INVALID_ARGUMENT,
                       "%s: x_scale / (y_scale * %d) = %g is too large for int32 sums of %d taps: use a larger "
                       "output scale", op, (int) divisor, scale, (int) divisor);
    }
    scale = ldexp(scale, -pre_shift);
  }
  if (scale < 0x1p-32) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT,
                     "%s: x_scale / (y_scale * %d) = %g is below 2^-32: use a smaller output scale", op,
                     (int) divisor, scale);
  }
  out->divisor = divisor;
  out->pre_scale = INT32_C(1) << pre_shift;
  return edge_requant_from_scale(scale, &out->multiplier, &out->shift);
}

/* Arguments shared by the average pools, and their u8-domain form. */
typedef struct avg_args {
  double x_scale, y_scale;
  int32_t x_zero_point, y_zero_point, y_min, y_max; /* u8 domain */
  uint8_t flip;
} avg_args;

static edge_status check_avg_args(const char* op, edge_dtype dtype, const void* x, const void* y, double x_scale,
                                  int32_t x_zero_point, double y_scale, int32_t y_zero_point, int32_t y_min,
                                  int32_t y_max, avg_args* out) {
  edge_status status = edge_check_q8_dtype(dtype, op);
  if (status != EDGE_OK) return status;
  if (x == NULL || y == NULL) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: x and y must not be NULL", op);
  if (!(isfinite(x_scale) && x_scale > 0.0 && isfinite(y_scale) && y_scale > 0.0)) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: scales must be finite and > 0 (x %g, y %g)", op, x_scale,
                     y_scale);
  }
  const int32_t lo = edge_dtype_min(dtype), hi = edge_dtype_max(dtype);
  if (x_zero_point < lo || x_zero_point > hi || y_zero_point < lo || y_zero_point > hi) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: zero points (x %d, y %d) outside [%d, %d]", op,
                     (int) x_zero_point, (int) y_zero_point, (int) lo, (int) hi);
  }
  if (y_min < lo || y_max > hi || y_min > y_max) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: output clamp [%d, %d] not inside [%d, %d]", op, (int) y_min,
                     (int) y_max, (int) lo, (int) hi);
  }
  const int32_t offset = dtype == EDGE_DTYPE_S8 ? 128 : 0;
  *out = (avg_args){x_scale, y_scale, x_zero_point + offset, y_zero_point + offset, y_min + offset,
                    y_max + offset, (uint8_t) offset};
  return EDGE_OK;
}

/* y[c] = requantize(acc[c] - taps * x_zero_point) for c < n. */
static void avg_store(size_t n, const int32_t* acc, int32_t taps, const avg_requant* rq, const avg_args* a,
                      uint8_t* y) {
  const int32_t bias = taps * a->x_zero_point;
  for (size_t c = 0; c < n; c++) {
    const int32_t v = edge_requantize((acc[c] - bias) * rq->pre_scale, rq->multiplier, rq->shift, a->y_zero_point,
                                      a->y_min, a->y_max);
    y[c] = (uint8_t) v ^ a->flip;
  }
}

/* A pool split over the pool of threads by output rows (batch * out_h of
 * them; the global pool: batch * channel blocks), rows_per_task at a time. */
typedef struct pool_job {
  const edge_pool2d_params* p;
  int32_t oh, ow;
  size_t rows, rows_per_task; /* rows: batch * oh (global pool: batch * channel blocks) */
  const uint8_t* x;
  uint8_t* y;
  uint8_t flip;                /* max pool */
  const avg_args* args;        /* average pools */
  const avg_requant* global_rq; /* the global pool's one divisor */
  double x_scale, y_scale;
  int32_t hw, channels; /* global pool */
} pool_job;

/* rows_per_task for `rows` output rows of `row_work` element-taps each. */
static size_t pool_tasks(pool_job* j, edge_threadpool* pool, size_t row_work) {
  const size_t min_rows = EDGE_MAX((size_t) 1, (size_t) EDGE_MIN_TASK_ELEMENTS / EDGE_MAX(row_work, (size_t) 1));
  j->rows_per_task = edge_task_units(pool, j->rows, min_rows, 1);
  return (j->rows + j->rows_per_task - 1) / j->rows_per_task;
}

static void maxpool_task(void* context, size_t index) {
  const pool_job* j = (const pool_job*) context;
  const edge_pool2d_params* p = j->p;
  const edge_q8_vmax_ukernel_fn vmax = edge_q8_ops_config_get()->vmax;
  const size_t c = (size_t) p->channels;
  const size_t row0 = index * j->rows_per_task, row1 = EDGE_MIN(row0 + j->rows_per_task, j->rows);
  for (size_t row = row0; row < row1; row++) {
    const size_t n = row / (size_t) j->oh;
    const int32_t oy = (int32_t) (row % (size_t) j->oh);
    const uint8_t* image = j->x + n * (size_t) p->in_h * p->in_w * c;
    for (int32_t ox = 0; ox < j->ow; ox++) {
      uint8_t* pixel = j->y + (row * (size_t) j->ow + (size_t) ox) * c;
      int first = 1;
      for (int32_t ky = 0; ky < p->kernel_h; ky++) {
        const int64_t iy = (int64_t) oy * p->stride_h - p->pad_top + (int64_t) ky * p->dilation_h;
        if (iy < 0 || iy >= p->in_h) continue;
        for (int32_t kx = 0; kx < p->kernel_w; kx++) {
          const int64_t ix = (int64_t) ox * p->stride_w - p->pad_left + (int64_t) kx * p->dilation_w;
          if (ix < 0 || ix >= p->in_w) continue;
          const uint8_t* tap = image + ((size_t) iy * p->in_w + (size_t) ix) * c;
          if (first) {
            memcpy(pixel, tap, c); /* padding never wins: start from the first real tap */
            first = 0;
          } else {
            vmax(c, tap, j->flip, pixel);
          }
        }
      }
    }
  }
}

edge_status edge_q8_maxpool2d(const edge_pool2d_params* p, edge_dtype dtype, const void* x, void* y,
                              edge_threadpool* pool) {
  int32_t oh, ow;
  edge_status status = check_pool_params(p, "edge_q8_maxpool2d", &oh, &ow);
  if (status == EDGE_OK) status = edge_check_q8_dtype(dtype, "edge_q8_maxpool2d");
  if (status != EDGE_OK) return status;
  if (x == NULL || y == NULL) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_maxpool2d: x and y must not be NULL");
  pool_job j = {.p = p, .oh = oh, .ow = ow, .rows = (size_t) p->batch * (size_t) oh, .x = x, .y = y,
                .flip = dtype == EDGE_DTYPE_S8 ? 0x80 : 0};
  const size_t row_work = (size_t) ow * (size_t) p->channels * (size_t) p->kernel_h * (size_t) p->kernel_w;
  edge_parallelize(pool, maxpool_task, &j, pool_tasks(&j, pool, row_work));
  return EDGE_OK;
}

static void avgpool_task(void* context, size_t index) {
  const pool_job* j = (const pool_job*) context;
  const edge_pool2d_params* p = j->p;
  const edge_q8_vsum_ukernel_fn vsum = edge_q8_ops_config_get()->vsum;
  const size_t channels = (size_t) p->channels;
  const int32_t window = p->kernel_h * p->kernel_w;
  /* Divisors change only at the borders: a one-entry cache per task (every
   * divisor was checked before any task ran). */
  avg_requant rq = {0, 0, 0, 0};
  int32_t acc[POOL_CHANNEL_BLOCK];
  const size_t row0 = index * j->rows_per_task, row1 = EDGE_MIN(row0 + j->rows_per_task, j->rows);
  for (size_t row = row0; row < row1; row++) {
    const size_t n = row / (size_t) j->oh;
    const int32_t oy = (int32_t) (row % (size_t) j->oh);
    const uint8_t* image = j->x + n * (size_t) p->in_h * p->in_w * channels;
    for (int32_t ox = 0; ox < j->ow; ox++) {
      uint8_t* pixel = j->y + (row * (size_t) j->ow + (size_t) ox) * channels;
      for (size_t c0 = 0; c0 < channels; c0 += POOL_CHANNEL_BLOCK) {
        const size_t cb = EDGE_MIN(channels - c0, (size_t) POOL_CHANNEL_BLOCK);
        memset(acc, 0, cb * sizeof(int32_t));
        int32_t taps = 0;
        for (int32_t ky = 0; ky < p->kernel_h; ky++) {
          const int64_t iy = (int64_t) oy * p->stride_h - p->pad_top + (int64_t) ky * p->dilation_h;
          if (iy < 0 || iy >= p->in_h) continue;
          for (int32_t kx = 0; kx < p->kernel_w; kx++) {
            const int64_t ix = (int64_t) ox * p->stride_w - p->pad_left + (int64_t) kx * p->dilation_w;
            if (ix < 0 || ix >= p->in_w) continue;
            vsum(cb, image + ((size_t) iy * p->in_w + (size_t) ix) * channels + c0, j->args->flip, acc);
            taps++;
          }
        }
        const int32_t divisor = p->count_include_pad ? window : taps;
        if (divisor != rq.divisor) avg_requant_init("edge_q8_avgpool2d", j->x_scale, j->y_scale, divisor, &rq);
        avg_store(cb, acc, taps, &rq, j->args, pixel + c0);
      }
    }
  }
}

edge_status edge_q8_avgpool2d(const edge_pool2d_params* p, edge_dtype dtype,
                              const void* x, double x_scale, int32_t x_zero_point,
                              void* y, double y_scale, int32_t y_zero_point, int32_t y_min, int32_t y_max,
                              edge_threadpool* pool) {
  static const char op[] = "edge_q8_avgpool2d";
  int32_t oh, ow;
  avg_args args;
  edge_status status = check_pool_params(p, op, &oh, &ow);
  if (status == EDGE_OK) {
    status = check_avg_args(op, dtype, x, y, x_scale, x_zero_point, y_scale, y_zero_point, y_min, y_max, &args);
  }
  if (status != EDGE_OK) return status;
  const int32_t window = p->kernel_h * p->kernel_w;
  /* Derive the parameters of every divisor that occurs before any output is
   * written, so a refused ratio leaves y untouched. */
  avg_requant rq = {0, 0, 0, 0};
  for (int32_t oy = 0; oy < oh; oy++) {
    const int32_t vh = valid_taps(oy, p->stride_h, p->pad_top, p->kernel_h, p->dilation_h, p->in_h);
    for (int32_t ox = 0; ox < ow; ox++) {
      const int32_t divisor =
          p->count_include_pad ? window : vh * valid_taps(ox, p->stride_w, p->pad_left, p->kernel_w, p->dilation_w, p->in_w);
      if (divisor != rq.divisor && (status = avg_requant_init(op, x_scale, y_scale, divisor, &rq)) != EDGE_OK) {
        return status;
      }
    }
  }
  pool_job j = {.p = p, .oh = oh, .ow = ow, .rows = (size_t) p->batch * (size_t) oh, .x = x, .y = y,
                .args = &args, .x_scale = x_scale, .y_scale = y_scale};
  const size_t row_work = (size_t) ow * (size_t) p->channels * (size_t) window;
  edge_parallelize(pool, avgpool_task, &j, pool_tasks(&j, pool, row_work));
  return EDGE_OK;
}

/* Task rows of the global pool: (sample, block of POOL_CHANNEL_BLOCK channels). */
static void global_avgpool_task(void* context, size_t index) {
  const pool_job* j = (const pool_job*) context;
  const edge_q8_vsum_ukernel_fn vsum = edge_q8_ops_config_get()->vsum;
  const size_t channels = (size_t) j->channels;
  const size_t blocks = (channels + POOL_CHANNEL_BLOCK - 1) / POOL_CHANNEL_BLOCK;
  int32_t acc[POOL_CHANNEL_BLOCK];
  const size_t row0 = index * j->rows_per_task, row1 = EDGE_MIN(row0 + j->rows_per_task, j->rows);
  for (size_t row = row0; row < row1; row++) {
    const size_t n = row / blocks, c0 = row % blocks * POOL_CHANNEL_BLOCK;
    const size_t cb = EDGE_MIN(channels - c0, (size_t) POOL_CHANNEL_BLOCK);
    memset(acc, 0, cb * sizeof(int32_t));
    for (int32_t i = 0; i < j->hw; i++) {
      vsum(cb, j->x + (n * (size_t) j->hw + (size_t) i) * channels + c0, j->args->flip, acc);
    }
    avg_store(cb, acc, j->hw, j->global_rq, j->args, j->y + n * channels + c0);
  }
}

edge_status edge_q8_global_avgpool(int32_t batch, int32_t hw, int32_t channels, edge_dtype dtype,
                                   const void* x, double x_scale, int32_t x_zero_point,
                                   void* y, double y_scale, int32_t y_zero_point, int32_t y_min, int32_t y_max,
                                   edge_threadpool* pool) {
  static const char op[] = "edge_q8_global_avgpool";
  if (batch < 1 || hw < 1 || channels < 1) {
    return edge_fail(EDGE_ERR_SHAPE, "%s: batch %d, hw %d and channels %d must be >= 1", op, (int) batch, (int) hw,
                     (int) channels);
  }
  if (hw > POOL_MAX_WINDOW) return edge_fail(EDGE_ERR_SHAPE, "%s: hw %d is over 2^23", op, (int) hw);
  avg_args args;
  avg_requant rq;
  edge_status status =
      check_avg_args(op, dtype, x, y, x_scale, x_zero_point, y_scale, y_zero_point, y_min, y_max, &args);
  if (status == EDGE_OK) status = avg_requant_init(op, x_scale, y_scale, hw, &rq);
  if (status != EDGE_OK) return status;
  const size_t blocks = ((size_t) channels + POOL_CHANNEL_BLOCK - 1) / POOL_CHANNEL_BLOCK;
  pool_job j = {.rows = (size_t) batch * blocks, .x = x, .y = y, .args = &args, .global_rq = &rq, .hw = hw,
                .channels = channels};
  const size_t row_work = (size_t) hw * EDGE_MIN((size_t) channels, (size_t) POOL_CHANNEL_BLOCK);
  edge_parallelize(pool, global_avgpool_task, &j, pool_tasks(&j, pool, row_work));
  return EDGE_OK;
}
