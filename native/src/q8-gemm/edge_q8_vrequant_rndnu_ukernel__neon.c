/* Requantization of a tile, 8 channels at a time, bit-identical to
 * edge_requantize: vmull_s32 for the 64-bit product, then vrshlq_s64 by
 * -shift, a rounding shift right that adds 2^(shift-1) first (round half up),
 * as the rule does. The result fits in int32 because
 * multiplier < 2^31 <= 2^shift. The per-channel vectors are loaded once per 8
 * channels, then reused for every row of the tile. */
#include <arm_neon.h>

#include "q8-gemm.h"

static inline int32x4_t requant4(int32x4_t vacc, int32x4_t vmul, int64x2_t neg_lo, int64x2_t neg_hi) {
  const int64x2_t lo = vrshlq_s64(vmull_s32(vget_low_s32(vacc), vget_low_s32(vmul)), neg_lo);
  const int64x2_t hi = vrshlq_s64(vmull_high_s32(vacc, vmul), neg_hi);
  return vcombine_s32(vmovn_s64(lo), vmovn_s64(hi));
}

void edge_q8_vrequant_rndnu_ukernel__neon(size_t rows, size_t n, const int32_t* acc, size_t acc_stride,
                                          const int32_t* multiplier, const int32_t* shift, int32_t zero_point,
                                          int32_t out_min, int32_t out_max, int out_signed, void* out,
                                          size_t out_stride) {
  (void) out_signed; /* the clamp already holds the value in the output range: truncation is exact */
  const int32x4_t vlo = vdupq_n_s32(out_min - zero_point);
  const int32x4_t vhi = vdupq_n_s32(out_max - zero_point);
  const int32x4_t vzp = vdupq_n_s32(zero_point);
  for (size_t i = 0; i < n; i += 8) {
    const size_t count = EDGE_MIN(n - i, (size_t) 8);
    int32_t m8[8], s8[8];
    for (size_t j = 0; j < 8; j++) { /* tail: valid parameters in the unused lanes */
      m8[j] = j < count ? multiplier[i + j] : (1 << 30);
      s8[j] = j < count ? shift[i + j] : 31;
    }
    const int32x4_t vmul0 = vld1q_s32(m8), vmul1 = vld1q_s32(m8 + 4);
    const int32x4_t neg0 = vnegq_s32(vld1q_s32(s8)), neg1 = vnegq_s32(vld1q_s32(s8 + 4));
    const int64x2_t neg0_lo = vmovl_s32(vget_low_s32(neg0)), neg0_hi = vmovl_high_s32(neg0);
    const int64x2_t neg1_lo = vmovl_s32(vget_low_s32(neg1)), neg1_hi = vmovl_high_s32(neg1);
    for (size_t r = 0; r < rows; r++) {
      const int32_t* pa = acc + r * acc_stride + i;
      int32_t a8[8] = {0};
      if (count < 8) {
        memcpy(a8, pa, count * sizeof(int32_t));
        pa = a8;
      }
      int32x4_t v0 = requant4(vld1q_s32(pa), vmul0, neg0_lo, neg0_hi);
      int32x4_t v1 = requant4(vld1q_s32(pa + 4), vmul1, neg1_lo, neg1_hi);
      v0 = vaddq_s32(vminq_s32(vmaxq_s32(v0, vlo), vhi), vzp);
      v1 = vaddq_s32(vminq_s32(vmaxq_s32(v1, vlo), vhi), vzp);
      const int8x8_t bytes = vmovn_s16(vcombine_s16(vmovn_s32(v0), vmovn_s32(v1)));
      int8_t* o = (int8_t*) out + r * out_stride + i;
      if (count == 8) {
        vst1_s8(o, bytes);
      } else {
        int8_t tmp[8];
        vst1_s8(tmp, bytes);
        memcpy(o, tmp, count);
      }
    }
  }
}
