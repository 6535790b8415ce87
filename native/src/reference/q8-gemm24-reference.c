#include "reference/q8-gemm24-reference.h"

#include "internal.h"

void edge_q8_gemm24_reference(int32_t m, int32_t n, int32_t k, edge_dtype a_dtype, const void* a, size_t a_stride,
                              int32_t a_zero_point, const int8_t* weights, const int32_t* bias, edge_dtype c_dtype,
                              void* c, size_t c_stride, const edge_q8_requant* requant) {
  for (int32_t i = 0; i < m; i++) {
    for (int32_t j = 0; j < n; j++) {
      int64_t sum = bias != NULL ? bias[j] : 0;
      for (int32_t p = 0; p < k; p++) {
        const size_t at = (size_t) i * a_stride + (size_t) p;
        const int32_t x = a_dtype == EDGE_DTYPE_U8 ? ((const uint8_t*) a)[at] : ((const int8_t*) a)[at];
        sum += (int64_t) (x - a_zero_point) * weights[(size_t) j * (size_t) k + (size_t) p];
      }
      const int32_t acc = (int32_t) (uint32_t) (uint64_t) sum; /* wraps mod 2^32 like the kernels */
      const size_t out = (size_t) i * c_stride + (size_t) j;
      if (c_dtype == EDGE_DTYPE_S32) {
        ((int32_t*) c)[out] = acc;
        continue;
      }
      const int32_t v = edge_requantize(acc, requant->multiplier[j], requant->shift[j], requant->output_zero_point,
                                        requant->output_min, requant->output_max);
      if (c_dtype == EDGE_DTYPE_U8) {
        ((uint8_t*) c)[out] = (uint8_t) v;
      } else {
        ((int8_t*) c)[out] = (int8_t) v;
      }
    }
  }
}

int edge_q8_gemm24_reference_is_2_4(int32_t n, int32_t k, const int8_t* weights) {
  for (int32_t j = 0; j < n; j++) {
    for (int32_t g = 0; g < k; g += 4) {
      int nonzeros = 0;
      for (int32_t p = g; p < k && p < g + 4; p++) nonzeros += weights[(size_t) j * (size_t) k + (size_t) p] != 0;
      if (nonzeros > 2) return 0;
    }
  }
  return 1;
}
