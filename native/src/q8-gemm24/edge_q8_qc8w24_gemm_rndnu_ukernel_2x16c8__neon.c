/* NEON 2:4-sparse micro-kernel without dot product (Cortex-A72, A57): up to 2
 * rows x 16 channels, 8 k a step. Gathers the activations at the kept
 * positions (vqtbl1q_u8), multiplies exactly in int16 (vmull_s8) and adds
 * pairs into int32 (vpadalq_s16): two partial sums per channel, folded at
 * the end. A is read as int8 (u8 A flipped by 0x80). */
#include "q8-gemm24/q8-gemm24-neon-common.h"

#define MR 2

void edge_q8_qc8w24_gemm_rndnu_ukernel_2x16c8__neon(size_t mr, size_t nc, size_t k, const uint8_t* a,
                                                    size_t a_stride, const uint8_t* w, void* c, size_t c_stride,
                                                    const edge_q8_gemm24_tile_params* params) {
  int32x4_t acc[MR][8]; /* [2i]: channels 4i, 4i+1 and [2i+1]: 4i+2, 4i+3, two sums each */
  for (size_t r = 0; r < MR; r++) {
    for (int i = 0; i < 8; i++) acc[r][i] = vdupq_n_s32(0);
  }
  const size_t steps = (k + EDGE_Q8_GEMM24_STEP_K - 1) / EDGE_Q8_GEMM24_STEP_K;
  for (size_t s = 0; s < steps; s++) {
    const uint8_t* step = w + s * EDGE_Q8_GEMM24_STEP_BYTES;
    const size_t count = EDGE_MIN(k - s * EDGE_Q8_GEMM24_STEP_K, (size_t) EDGE_Q8_GEMM24_STEP_K);
    uint8x16_t controls[4];
    edge_q8_gemm24_neon_controls(step, controls);
    for (size_t r = 0; r < mr; r++) {
      const uint8x16_t t = edge_q8_gemm24_neon_activations(a + r * a_stride + s * EDGE_Q8_GEMM24_STEP_K, count,
                                                           params->a_flip);
      for (int i = 0; i < 4; i++) {
        const int8x16_t g = vreinterpretq_s8_u8(vqtbl1q_u8(t, controls[i]));
        const int8x16_t v = vld1q_s8((const int8_t*) step + 16 * i);
        acc[r][2 * i] = vpadalq_s16(acc[r][2 * i], vmull_s8(vget_low_s8(g), vget_low_s8(v)));
        acc[r][2 * i + 1] = vpadalq_s16(acc[r][2 * i + 1], vmull_high_s8(g, v));
      }
    }
  }
  edge_q8_gemm24_neon_requant rq;
  edge_q8_gemm24_neon_requant_init(params, &rq);
  const size_t elem = params->c_dtype == EDGE_DTYPE_S32 ? 4 : 1;
  for (size_t r = 0; r < mr; r++) {
    int32x4_t row[4];
    for (int i = 0; i < 4; i++) {
      const int32x4_t sums = vpaddq_s32(acc[r][2 * i], acc[r][2 * i + 1]);
      row[i] = vaddq_s32(sums, vld1q_s32(params->init + 4 * i));
    }
    edge_q8_gemm24_neon_store_row(row, nc, (uint8_t*) c + r * c_stride * elem, params, &rq);
  }
}
