/* Requantization of a row of accumulators: edge_requantize, one at a time. */
#include "q8-gemm.h"

void edge_q8_vrequant_rndnu_ukernel__scalar(size_t n, const int32_t* acc, const int32_t* multiplier,
                                            const int32_t* shift, int32_t zero_point, int32_t out_min,
                                            int32_t out_max, int out_signed, void* out) {
  if (out_signed) {
    int8_t* o = out;
    for (size_t i = 0; i < n; i++) {
      o[i] = (int8_t) edge_requantize(acc[i], multiplier[i], shift[i], zero_point, out_min, out_max);
    }
  } else {
    uint8_t* o = out;
    for (size_t i = 0; i < n; i++) {
      o[i] = (uint8_t) edge_requantize(acc[i], multiplier[i], shift[i], zero_point, out_min, out_max);
    }
  }
}
