/* Naive reference of the q8-ops and f32-ops families: the formulas of
 * edge/ops.h written as directly as possible, in int64 and double. */
#include "reference/q8-ops-reference.h"

#include <math.h>

static int32_t load(edge_dtype dtype, const void* p, size_t i) {
  return dtype == EDGE_DTYPE_S8 ? (int32_t) ((const int8_t*) p)[i] : (int32_t) ((const uint8_t*) p)[i];
}

static void store(edge_dtype dtype, void* p, size_t i, int64_t v) {
  if (dtype == EDGE_DTYPE_S8) {
    ((int8_t*) p)[i] = (int8_t) v;
  } else {
    ((uint8_t*) p)[i] = (uint8_t) v;
  }
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* (v + 2^(shift-1)) >> shift as floor division, without relying on >> of negatives. */
static int64_t round_shift(int64_t v, int32_t shift) {
  const int64_t d = INT64_C(1) << shift;
  const int64_t t = v + d / 2;
  return t >= 0 ? t / d : -((-t + d - 1) / d);
}

void edge_ref_q8_add(int32_t rows, int32_t cols, edge_dtype dtype, const void* a, size_t a_row_stride,
                     size_t a_col_stride, const void* b, size_t b_row_stride, size_t b_col_stride, void* y,
                     const edge_q8_add_params* p) {
  for (int32_t r = 0; r < rows; r++) {
    for (int32_t i = 0; i < cols; i++) {
      const int64_t da = load(dtype, a, r * a_row_stride + i * a_col_stride) - p->a_zero_point;
      const int64_t db = load(dtype, b, r * b_row_stride + i * b_col_stride) - p->b_zero_point;
      const int64_t v = round_shift(da * p->a_multiplier + db * p->b_multiplier, p->shift);
      store(dtype, y, (size_t) r * cols + i,
            clamp64(v, p->y_min - p->y_zero_point, p->y_max - p->y_zero_point) + p->y_zero_point);
    }
  }
}

void edge_ref_q8_mul(int32_t rows, int32_t cols, edge_dtype dtype, const void* a, size_t a_row_stride,
                     size_t a_col_stride, const void* b, size_t b_row_stride, size_t b_col_stride, void* y,
                     const edge_q8_mul_params* p) {
  for (int32_t r = 0; r < rows; r++) {
    for (int32_t i = 0; i < cols; i++) {
      const int64_t da = load(dtype, a, r * a_row_stride + i * a_col_stride) - p->a_zero_point;
      const int64_t db = load(dtype, b, r * b_row_stride + i * b_col_stride) - p->b_zero_point;
      const int64_t v = round_shift(da * db * p->multiplier, p->shift);
      store(dtype, y, (size_t) r * cols + i,
            clamp64(v, p->y_min - p->y_zero_point, p->y_max - p->y_zero_point) + p->y_zero_point);
    }
  }
}

/* Visits the valid taps of one output pixel and channel: returns the count,
 * the max and the sum of (x - x_zero_point). */
static int32_t window(const edge_pool2d_params* p, edge_dtype dtype, const void* x, int32_t n, int32_t oy,
                      int32_t ox, int32_t c, int32_t x_zero_point, int32_t* max, int64_t* sum) {
  int32_t count = 0;
  *max = INT32_MIN;
  *sum = 0;
  for (int32_t ky = 0; ky < p->kernel_h; ky++) {
    for (int32_t kx = 0; kx < p->kernel_w; kx++) {
      const int64_t iy = (int64_t) oy * p->stride_h - p->pad_top + (int64_t) ky * p->dilation_h;
      const int64_t ix = (int64_t) ox * p->stride_w - p->pad_left + (int64_t) kx * p->dilation_w;
      if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) continue;
      const int32_t v = load(dtype, x, (((size_t) n * p->in_h + iy) * p->in_w + ix) * p->channels + c);
      *max = v > *max ? v : *max;
      *sum += v - x_zero_point;
      count++;
    }
  }
  return count;
}

void edge_ref_q8_maxpool2d(const edge_pool2d_params* p, int32_t out_h, int32_t out_w, edge_dtype dtype,
                           const void* x, void* y) {
  for (int32_t n = 0; n < p->batch; n++)
    for (int32_t oy = 0; oy < out_h; oy++)
      for (int32_t ox = 0; ox < out_w; ox++)
        for (int32_t c = 0; c < p->channels; c++) {
          int32_t max;
          int64_t sum;
          window(p, dtype, x, n, oy, ox, c, 0, &max, &sum);
          store(dtype, y, (((size_t) n * out_h + oy) * out_w + ox) * p->channels + c, max);
        }
}

edge_status edge_ref_q8_avgpool2d(const edge_pool2d_params* p, int32_t out_h, int32_t out_w, edge_dtype dtype,
                                  const void* x, double x_scale, int32_t x_zero_point, void* y, double y_scale,
                                  int32_t y_zero_point, int32_t y_min, int32_t y_max) {
  for (int32_t n = 0; n < p->batch; n++)
    for (int32_t oy = 0; oy < out_h; oy++)
      for (int32_t ox = 0; ox < out_w; ox++)
        for (int32_t c = 0; c < p->channels; c++) {
          int32_t max;
          int64_t sum;
          const int32_t count = window(p, dtype, x, n, oy, ox, c, x_zero_point, &max, &sum);
          const int32_t divisor = p->count_include_pad ? p->kernel_h * p->kernel_w : count;
          /* edge/ops.h: scale = x_scale / (y_scale * divisor); a scale >= 1 is
           * split into 2^pre_shift times a scale in [0.5, 1). */
          double scale = x_scale / (y_scale * (double) divisor);
          int pre_shift = 0;
          if (scale >= 1.0) {
            frexp(scale, &pre_shift);
            if (pre_shift > 30 || ((int64_t) divisor * 255 << pre_shift) > INT32_MAX) return EDGE_ERR_INVALID_ARGUMENT;
            scale = ldexp(scale, -pre_shift);
          }
          int32_t mult, shift;
          if (edge_requant_from_scale(scale, &mult, &shift) != EDGE_OK) return EDGE_ERR_INVALID_ARGUMENT;
          const int64_t v = round_shift(sum * ((int64_t) 1 << pre_shift) * mult, shift);
          store(dtype, y, (((size_t) n * out_h + oy) * out_w + ox) * p->channels + c,
                clamp64(v, y_min - y_zero_point, y_max - y_zero_point) + y_zero_point);
        }
  return EDGE_OK;
}

void edge_ref_q8_lut_table(edge_lut_kind kind, double alpha, double beta, edge_dtype dtype, double x_scale,
                           int32_t x_zero_point, double y_scale, int32_t y_zero_point, uint8_t* table) {
  const double lo = dtype == EDGE_DTYPE_S8 ? -128 : 0, hi = dtype == EDGE_DTYPE_S8 ? 127 : 255;
  for (int i = 0; i < 256; i++) {
    const int32_t q = dtype == EDGE_DTYPE_S8 ? (int8_t) (uint8_t) i : i;
    const double x = x_scale * (double) (q - x_zero_point);
    double f = 0.0;
    switch (kind) {
      case EDGE_LUT_SIGMOID: f = 1.0 / (1.0 + exp(-x)); break;
      case EDGE_LUT_HARDSIGMOID: { const volatile double ax = alpha * x; f = fmax(0.0, fmin(1.0, ax + beta)); break; }
      case EDGE_LUT_HARDSWISH: f = x * fmax(0.0, fmin(1.0, x / 6.0 + 0.5)); break;
      case EDGE_LUT_GELU: f = 0.5 * x * (1.0 + erf(x / sqrt(2.0))); break;
      case EDGE_LUT_TANH: f = tanh(x); break;
    }
    const double v = fmin(hi, fmax(lo, nearbyint(f / y_scale) + y_zero_point));
    table[i] = (uint8_t) (int32_t) v;
  }
}

void edge_ref_f32_q8_quantize(size_t n, const float* x, float scale, int32_t zero_point, edge_dtype dtype, void* y) {
  const int32_t lo = dtype == EDGE_DTYPE_S8 ? -128 : 0, hi = dtype == EDGE_DTYPE_S8 ? 127 : 255;
  for (size_t i = 0; i < n; i++) {
    const float q = nearbyintf(x[i] / scale);
    int64_t v = zero_point;
    if (isnan(q)) {
      v = zero_point;
    } else if (q >= 1e6f) {
      v = hi;
    } else if (q <= -1e6f) {
      v = lo;
    } else {
      v = clamp64((int64_t) q + zero_point, lo, hi);
    }
    store(dtype, y, i, v);
  }
}

void edge_ref_q8_f32_dequantize(size_t n, edge_dtype dtype, const void* x, float scale, int32_t zero_point,
                                float* y) {
  for (size_t i = 0; i < n; i++) y[i] = (float) (load(dtype, x, i) - zero_point) * scale;
}

void edge_ref_f32_softmax(int32_t rows, int32_t cols, const float* x, double* y) {
  for (int32_t r = 0; r < rows; r++) {
    const float* xr = x + (size_t) r * cols;
    double max = xr[0], sum = 0.0;
    for (int32_t i = 1; i < cols; i++) max = xr[i] > max ? xr[i] : max;
    for (int32_t i = 0; i < cols; i++) sum += exp(xr[i] - max);
    for (int32_t i = 0; i < cols; i++) y[(size_t) r * cols + i] = exp(xr[i] - max) / sum;
  }
}

void edge_ref_f32_layernorm(int32_t rows, int32_t cols, const float* x, const float* gamma, const float* beta,
                            float epsilon, double* y) {
  for (int32_t r = 0; r < rows; r++) {
    const float* xr = x + (size_t) r * cols;
    double mean = 0.0, var = 0.0;
    for (int32_t i = 0; i < cols; i++) mean += xr[i];
    mean /= cols;
    for (int32_t i = 0; i < cols; i++) var += (xr[i] - mean) * (xr[i] - mean);
    var /= cols;
    for (int32_t i = 0; i < cols; i++) {
      double v = (xr[i] - mean) / sqrt(var + epsilon);
      if (gamma != NULL) v *= gamma[i];
      if (beta != NULL) v += beta[i];
      y[(size_t) r * cols + i] = v;
    }
  }
}
