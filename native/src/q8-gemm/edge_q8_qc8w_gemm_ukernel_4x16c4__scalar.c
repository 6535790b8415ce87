/* Portable micro-kernel: up to 4 rows x 16 channels per block, any number of
 * blocks. The production fallback and the model for the SIMD kernels. */
#include "q8-gemm.h"

void edge_q8_qc8w_gemm_ukernel_4x16c4__scalar(size_t mr, size_t nb, size_t k, const uint8_t* a, size_t a_stride,
                                              int a_signed, const int8_t* w, size_t panel_stride,
                                              const int32_t* init, int32_t* acc, size_t acc_stride) {
  for (size_t b = 0; b < nb; b++) {
    const int8_t* panel = w + b * panel_stride;
    /* |sum_k a * w| <= 65536 * 255 * 127 < 2^31: the dot product itself cannot
     * overflow; adding init wraps, so that sum is done in uint32. */
    int32_t sum[4][EDGE_Q8_GEMM_NR] = {{0}};
    for (size_t k0 = 0; k0 < k; k0 += EDGE_Q8_GEMM_KR) {
      const int8_t* group = panel + (k0 / EDGE_Q8_GEMM_KR) * (EDGE_Q8_GEMM_NR * EDGE_Q8_GEMM_KR);
      const size_t kc = EDGE_MIN(k - k0, (size_t) EDGE_Q8_GEMM_KR);
      for (size_t r = 0; r < mr; r++) {
        const uint8_t* row = a + r * a_stride + k0;
        int32_t x[EDGE_Q8_GEMM_KR] = {0, 0, 0, 0};
        for (size_t j = 0; j < kc; j++) x[j] = a_signed ? (int32_t) (int8_t) row[j] : (int32_t) row[j];
        for (size_t c = 0; c < EDGE_Q8_GEMM_NR; c++) {
          const int8_t* wc = group + c * EDGE_Q8_GEMM_KR;
          sum[r][c] += x[0] * wc[0] + x[1] * wc[1] + x[2] * wc[2] + x[3] * wc[3];
        }
      }
    }
    for (size_t r = 0; r < mr; r++) {
      for (size_t c = 0; c < EDGE_Q8_GEMM_NR; c++) {
        acc[r * acc_stride + b * EDGE_Q8_GEMM_NR + c] =
            (int32_t) ((uint32_t) init[b * EDGE_Q8_GEMM_NR + c] + (uint32_t) sum[r][c]);
      }
    }
  }
}
