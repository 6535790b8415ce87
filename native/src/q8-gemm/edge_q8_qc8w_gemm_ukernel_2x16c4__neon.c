/* NEON without dot product (Cortex-A72, A57): A is flipped to s8 (u8 A by
 * xor 0x80, corrected by the driver with -128 * colsum), then vmull_s8 of two
 * channels x 4 k, vmlal_s8 of the next k group and vpadalq_s16 into int32.
 * Exact: an int16 lane holds two products of at most 128 * 127 (32512).
 * Up to 2 rows x 16 channels per block. */
#include <arm_neon.h>

#include "q8-gemm.h"

static inline int8x8_t dup_a4(uint32_t a4, uint32_t flip) { return vreinterpret_s8_u32(vdup_n_u32(a4 ^ flip)); }

static inline uint32_t load_group(const uint8_t* row, size_t k0, size_t k) {
  if (k - k0 >= 4) {
    uint32_t a4;
    memcpy(&a4, row + k0, 4);
    return a4;
  }
  return edge_q8_load_a4(row + k0, k - k0); /* never read past the row */
}

static inline __attribute__((always_inline)) void tile(size_t MR, size_t k, const uint8_t* a, size_t a_stride,
                                                       uint32_t flip, const int8_t* w, const int32_t* init,
                                                       int32_t* acc, size_t acc_stride) {
  /* vacc[r][j]: channels 2j and 2j+1, two partial sums each. */
  int32x4_t vacc[2][8];
  for (size_t r = 0; r < MR; r++) {
    for (size_t j = 0; j < 8; j++) vacc[r][j] = vdupq_n_s32(0);
  }
  const size_t groups = (k + 3) / 4;
  size_t g = 0;
  for (; g + 2 <= groups; g += 2) {
    const int8_t* w0 = w + g * 64;
    int8x8_t va0[2], va1[2];
    for (size_t r = 0; r < MR; r++) {
      va0[r] = dup_a4(load_group(a + r * a_stride, g * 4, k), flip);
      va1[r] = dup_a4(load_group(a + r * a_stride, g * 4 + 4, k), flip);
    }
    for (size_t j = 0; j < 8; j++) {
      const int8x8_t vw0 = vld1_s8(w0 + 8 * j);
      const int8x8_t vw1 = vld1_s8(w0 + 64 + 8 * j);
      for (size_t r = 0; r < MR; r++) {
        const int16x8_t prod = vmlal_s8(vmull_s8(vw0, va0[r]), vw1, va1[r]);
        vacc[r][j] = vpadalq_s16(vacc[r][j], prod);
      }
    }
  }
  if (g < groups) { /* an odd group count: the last group alone */
    const int8_t* w0 = w + g * 64;
    int8x8_t va0[2];
    for (size_t r = 0; r < MR; r++) va0[r] = dup_a4(load_group(a + r * a_stride, g * 4, k), flip);
    for (size_t j = 0; j < 8; j++) {
      const int8x8_t vw0 = vld1_s8(w0 + 8 * j);
      for (size_t r = 0; r < MR; r++) vacc[r][j] = vpadalq_s16(vacc[r][j], vmull_s8(vw0, va0[r]));
    }
  }
  for (size_t r = 0; r < MR; r++) {
    for (size_t q = 0; q < 4; q++) {
      /* pairwise add: channels 4q..4q+3 */
      const int32x4_t sum = vpaddq_s32(vacc[r][2 * q], vacc[r][2 * q + 1]);
      vst1q_s32(acc + r * acc_stride + 4 * q, vaddq_s32(sum, vld1q_s32(init + 4 * q)));
    }
  }
}

void edge_q8_qc8w_gemm_ukernel_2x16c4__neon(size_t mr, size_t nb, size_t k, const uint8_t* a, size_t a_stride,
                                            int a_signed, const int8_t* w, size_t panel_stride,
                                            const int32_t* init, int32_t* acc, size_t acc_stride) {
  const uint32_t flip = a_signed ? 0 : UINT32_C(0x80808080);
  for (size_t b = 0; b < nb; b++) {
    if (mr == 2) {
      tile(2, k, a, a_stride, flip, w + b * panel_stride, init + b * 16, acc + b * 16, acc_stride);
    } else {
      tile(1, k, a, a_stride, flip, w + b * panel_stride, init + b * 16, acc + b * 16, acc_stride);
    }
  }
}
