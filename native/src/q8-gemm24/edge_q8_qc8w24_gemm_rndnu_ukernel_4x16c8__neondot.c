/* NEON dot-product 2:4-sparse micro-kernel: up to 4 rows x 16 channels, 8 k a
 * step. Gathers each row's activations at the kept positions (vqtbl1q_u8),
 * then one sdot per 4 channels; A is read as int8 (u8 A flipped by 0x80, the
 * zero point corrected by the caller). */
#include "q8-gemm24/q8-gemm24-neon-common.h"

#define MR 4

void edge_q8_qc8w24_gemm_rndnu_ukernel_4x16c8__neondot(size_t mr, size_t nc, size_t k, const uint8_t* a,
                                                       size_t a_stride, const uint8_t* w, void* c, size_t c_stride,
                                                       const edge_q8_gemm24_tile_params* params) {
  int32x4_t acc[MR][4];
  for (size_t r = 0; r < MR; r++) {
    for (int i = 0; i < 4; i++) acc[r][i] = vld1q_s32(params->init + 4 * i);
  }
  const size_t steps = (k + EDGE_Q8_GEMM24_STEP_K - 1) / EDGE_Q8_GEMM24_STEP_K;
  for (size_t s = 0; s < steps; s++) {
    const uint8_t* step = w + s * EDGE_Q8_GEMM24_STEP_BYTES;
    const size_t count = EDGE_MIN(k - s * EDGE_Q8_GEMM24_STEP_K, (size_t) EDGE_Q8_GEMM24_STEP_K);
    uint8x16_t controls[4];
    edge_q8_gemm24_neon_controls(step, controls);
    const int8x16_t v0 = vld1q_s8((const int8_t*) step), v1 = vld1q_s8((const int8_t*) step + 16);
    const int8x16_t v2 = vld1q_s8((const int8_t*) step + 32), v3 = vld1q_s8((const int8_t*) step + 48);
    for (size_t r = 0; r < mr; r++) {
      const uint8x16_t t = edge_q8_gemm24_neon_activations(a + r * a_stride + s * EDGE_Q8_GEMM24_STEP_K, count,
                                                           params->a_flip);
      acc[r][0] = vdotq_s32(acc[r][0], vreinterpretq_s8_u8(vqtbl1q_u8(t, controls[0])), v0);
      acc[r][1] = vdotq_s32(acc[r][1], vreinterpretq_s8_u8(vqtbl1q_u8(t, controls[1])), v1);
      acc[r][2] = vdotq_s32(acc[r][2], vreinterpretq_s8_u8(vqtbl1q_u8(t, controls[2])), v2);
      acc[r][3] = vdotq_s32(acc[r][3], vreinterpretq_s8_u8(vqtbl1q_u8(t, controls[3])), v3);
    }
  }
  edge_q8_gemm24_neon_requant rq;
  edge_q8_gemm24_neon_requant_init(params, &rq);
  const size_t elem = params->c_dtype == EDGE_DTYPE_S32 ? 4 : 1;
  for (size_t r = 0; r < mr; r++) {
    edge_q8_gemm24_neon_store_row(acc[r], nc, (uint8_t*) c + r * c_stride * elem, params, &rq);
  }
}
