/* Requantization of a tile of accumulators: edge_requantize, one at a time. */
#include "q8-gemm.h"

void edge_q8_vrequant_rndnu_ukernel__scalar(size_t rows, size_t n, const int32_t* acc, size_t acc_stride,
                                            const int32_t* multiplier, const int32_t* shift, int32_t zero_point,
                                            int32_t out_min, int32_t out_max, int out_signed, void* out,
                                            size_t out_stride) {
  for (size_t r = 0; r < rows; r++) {
    const int32_t* row = acc + r * acc_stride;
    if (out_signed) {
      int8_t* o = (int8_t*) out + r * out_stride;
      for (size_t i = 0; i < n; i++) {
        o[i] = (int8_t) edge_requantize(row[i], multiplier[i], shift[i], zero_point, out_min, out_max);
      }
    } else {
      uint8_t* o = (uint8_t*) out + r * out_stride;
      for (size_t i = 0; i < n; i++) {
        o[i] = (uint8_t) edge_requantize(row[i], multiplier[i], shift[i], zero_point, out_min, out_max);
      }
    }
  }
}
