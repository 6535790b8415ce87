/* Portable 2:4-sparse micro-kernel: up to 4 rows x 16 channels, 8 k a step.
 * The production fallback and the model the SIMD kernels follow: for each
 * kept weight, fetch the activation at its position. uint32 arithmetic keeps
 * the int32 wrap-around defined. */
#include <string.h>

#include "q8-gemm24/q8-gemm24.h"

#define MR 4

/* acc[j] += sum over the 4 kept weights of channel j of a'[position] * value. */
static void accumulate_step(uint32_t* acc, size_t nc, const uint8_t* a8, uint8_t flip, const uint8_t* step) {
  const int8_t* values = (const int8_t*) step;
  const uint8_t* positions = step + 64;
  for (size_t j = 0; j < nc; j++) {
    const uint8_t p = positions[edge_q8_gemm24_position_index((int) j)];
    const int8_t* v = values + 4 * j;
    const int32_t dot = (int32_t) (uint8_t) (a8[p & 3] ^ flip) * v[0] +
                        (int32_t) (uint8_t) (a8[(p >> 2) & 3] ^ flip) * v[1] +
                        (int32_t) (uint8_t) (a8[4 + ((p >> 4) & 3)] ^ flip) * v[2] +
                        (int32_t) (uint8_t) (a8[4 + (p >> 6)] ^ flip) * v[3];
    acc[j] += (uint32_t) dot;
  }
}

void edge_q8_qc8w24_gemm_rndnu_ukernel_4x16c8__scalar(size_t mr, size_t nc, size_t k, const uint8_t* a,
                                                      size_t a_stride, const uint8_t* w, void* c, size_t c_stride,
                                                      const edge_q8_gemm24_tile_params* params) {
  uint32_t acc[MR][EDGE_Q8_GEMM24_NR];
  for (size_t r = 0; r < mr; r++) {
    for (size_t j = 0; j < nc; j++) acc[r][j] = (uint32_t) params->init[j];
  }
  const size_t full_steps = k / EDGE_Q8_GEMM24_STEP_K, tail = k % EDGE_Q8_GEMM24_STEP_K;
  for (size_t s = 0; s < full_steps; s++) {
    const uint8_t* step = w + s * EDGE_Q8_GEMM24_STEP_BYTES;
    for (size_t r = 0; r < mr; r++) {
      accumulate_step(acc[r], nc, a + r * a_stride + s * EDGE_Q8_GEMM24_STEP_K, params->a_flip, step);
    }
  }
  if (tail != 0) {
    /* The last step reads a zero-padded copy: never past the end of A. */
    const uint8_t* step = w + full_steps * EDGE_Q8_GEMM24_STEP_BYTES;
    for (size_t r = 0; r < mr; r++) {
      uint8_t a8[EDGE_Q8_GEMM24_STEP_K] = {0};
      memcpy(a8, a + r * a_stride + full_steps * EDGE_Q8_GEMM24_STEP_K, tail);
      accumulate_step(acc[r], nc, a8, params->a_flip, step);
    }
  }
  const size_t elem = params->c_dtype == EDGE_DTYPE_S32 ? 4 : 1;
  for (size_t r = 0; r < mr; r++) {
    int32_t row[EDGE_Q8_GEMM24_NR];
    for (size_t j = 0; j < nc; j++) row[j] = (int32_t) acc[r][j];
    edge_q8_gemm24_store_row(row, nc, (uint8_t*) c + r * c_stride * elem, params);
  }
}
