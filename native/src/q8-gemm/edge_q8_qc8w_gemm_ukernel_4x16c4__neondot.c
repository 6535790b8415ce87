/* NEON with dot product (Cortex-A76, A78): sdot adds the 4-way dot of 4 s8 of
 * A and 4 s8 weights into each int32 lane, one 16-byte load per 4 channels.
 * u8 A is flipped to s8 by xor 0x80 (the driver corrects by -128 * colsum).
 * Up to 4 rows x 16 channels per block. */
#include <arm_neon.h>

#include "q8-gemm.h"

static inline __attribute__((always_inline)) void tile(size_t MR, size_t k, const uint8_t* a, size_t a_stride,
                                                       uint32_t flip, const int8_t* w, const int32_t* init,
                                                       int32_t* acc, size_t acc_stride) {
  int32x4_t vacc[4][4];
  for (size_t j = 0; j < 4; j++) {
    const int32x4_t vinit = vld1q_s32(init + 4 * j);
    for (size_t r = 0; r < MR; r++) vacc[r][j] = vinit;
  }
  for (size_t k0 = 0; k0 < k; k0 += 4) {
    int8x16_t va[4];
    for (size_t r = 0; r < MR; r++) {
      uint32_t a4;
      if (k - k0 >= 4) {
        memcpy(&a4, a + r * a_stride + k0, 4);
      } else {
        a4 = edge_q8_load_a4(a + r * a_stride + k0, k - k0); /* never read past the row */
      }
      va[r] = vreinterpretq_s8_u32(vdupq_n_u32(a4 ^ flip));
    }
    const int8_t* group = w + k0 * 16;
    for (size_t j = 0; j < 4; j++) {
      const int8x16_t vw = vld1q_s8(group + 16 * j);
      for (size_t r = 0; r < MR; r++) vacc[r][j] = vdotq_s32(vacc[r][j], vw, va[r]);
    }
  }
  for (size_t r = 0; r < MR; r++) {
    for (size_t j = 0; j < 4; j++) vst1q_s32(acc + r * acc_stride + 4 * j, vacc[r][j]);
  }
}

void edge_q8_qc8w_gemm_ukernel_4x16c4__neondot(size_t mr, size_t nb, size_t k, const uint8_t* a,
                                               size_t a_stride, int a_signed, const int8_t* w,
                                               size_t panel_stride, const int32_t* init, int32_t* acc,
                                               size_t acc_stride) {
  const uint32_t flip = a_signed ? 0 : UINT32_C(0x80808080);
  for (size_t b = 0; b < nb; b++) {
    const int8_t* panel = w + b * panel_stride;
    switch (mr) {
      case 1: tile(1, k, a, a_stride, flip, panel, init + b * 16, acc + b * 16, acc_stride); break;
      case 2: tile(2, k, a, a_stride, flip, panel, init + b * 16, acc + b * 16, acc_stride); break;
      case 3: tile(3, k, a, a_stride, flip, panel, init + b * 16, acc + b * 16, acc_stride); break;
      default: tile(4, k, a, a_stride, flip, panel, init + b * 16, acc + b * 16, acc_stride); break;
    }
  }
}
