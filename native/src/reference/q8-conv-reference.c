/* Naive conv2d: one output element at a time, straight from the definition. */
#include "q8-conv-reference.h"

#include "internal.h"

int edge_ref_q8_conv2d(const edge_conv2d_params* p, edge_dtype x_dtype, const void* x, int32_t x_zero_point,
                       const int8_t* weights, const int32_t* bias, edge_dtype y_dtype, void* y,
                       const edge_q8_requant* requant) {
  int32_t out_h, out_w;
  if (edge_conv2d_output_size(p, &out_h, &out_w) != EDGE_OK) return -1;
  const int32_t cin_g = p->in_c / p->groups, cout_g = p->out_c / p->groups;
  for (int32_t n = 0; n < p->batch; n++) {
    for (int32_t oy = 0; oy < out_h; oy++) {
      for (int32_t ox = 0; ox < out_w; ox++) {
        for (int32_t oc = 0; oc < p->out_c; oc++) {
          const int32_t grp = oc / cout_g;
          int64_t acc = bias == NULL ? 0 : bias[oc];
          for (int32_t ic = 0; ic < cin_g; ic++) {
            for (int32_t ky = 0; ky < p->kernel_h; ky++) {
              for (int32_t kx = 0; kx < p->kernel_w; kx++) {
                const int32_t iy = oy * p->stride_h - p->pad_top + ky * p->dilation_h;
                const int32_t ix = ox * p->stride_w - p->pad_left + kx * p->dilation_w;
                if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) continue; /* padding: (zp - zp) * w */
                const size_t xi = (((size_t) n * p->in_h + iy) * p->in_w + ix) * p->in_c + (size_t) grp * cin_g + ic;
                const int32_t xv = x_dtype == EDGE_DTYPE_U8 ? ((const uint8_t*) x)[xi] : ((const int8_t*) x)[xi];
                const int8_t wv = weights[(((size_t) oc * cin_g + ic) * p->kernel_h + ky) * p->kernel_w + kx];
                acc += (int64_t) (xv - x_zero_point) * wv;
              }
            }
          }
          /* int32 accumulation wraps mod 2^32 (edge/gemm.h). */
          const int32_t acc32 = (int32_t) (uint32_t) (uint64_t) acc;
          const size_t yi = (((size_t) n * out_h + oy) * out_w + ox) * p->out_c + oc;
          if (y_dtype == EDGE_DTYPE_S32) {
            ((int32_t*) y)[yi] = acc32;
            continue;
          }
          const int32_t v = edge_requantize(acc32, requant->multiplier[oc], requant->shift[oc],
                                            requant->output_zero_point, requant->output_min, requant->output_max);
          if (y_dtype == EDGE_DTYPE_U8) {
            ((uint8_t*) y)[yi] = (uint8_t) v;
          } else {
            ((int8_t*) y)[yi] = (int8_t) v;
          }
        }
      }
    }
  }
  return 0;
}
