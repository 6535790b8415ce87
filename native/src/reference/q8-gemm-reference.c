/* Naive dense INT8 GEMM, one output at a time. */
#include "reference/q8-gemm-reference.h"

#include "internal.h"

void edge_q8_gemm_reference(int32_t m, int32_t n, int32_t k, edge_dtype a_dtype, const void* a, size_t a_stride,
                            int32_t a_zero_point, const int8_t* weights, const int32_t* bias, edge_dtype c_dtype,
                            void* c, size_t c_stride, const edge_q8_requant* requant) {
  for (int32_t i = 0; i < m; i++) {
    for (int32_t j = 0; j < n; j++) {
      /* int32 wrapping, computed in uint32 to stay clear of signed overflow. */
      uint32_t acc = bias != NULL ? (uint32_t) bias[j] : 0;
      for (int32_t p = 0; p < k; p++) {
        const size_t index = (size_t) i * a_stride + (size_t) p;
        const int32_t x = a_dtype == EDGE_DTYPE_S8 ? ((const int8_t*) a)[index] : ((const uint8_t*) a)[index];
        acc += (uint32_t) (x - a_zero_point) * (uint32_t) weights[(size_t) j * k + p];
      }
      const size_t out = (size_t) i * c_stride + (size_t) j;
      if (c_dtype == EDGE_DTYPE_S32) {
        ((int32_t*) c)[out] = (int32_t) acc;
      } else {
        const int32_t q = edge_requantize((int32_t) acc, requant->multiplier[j], requant->shift[j],
                                          requant->output_zero_point, requant->output_min, requant->output_max);
        if (c_dtype == EDGE_DTYPE_S8) {
          ((int8_t*) c)[out] = (int8_t) q;
        } else {
          ((uint8_t*) c)[out] = (uint8_t) q;
        }
      }
    }
  }
}
