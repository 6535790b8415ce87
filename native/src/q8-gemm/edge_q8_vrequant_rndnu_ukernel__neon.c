/* Requantization, 8 channels at a time, bit-identical to edge_requantize:
 * vmull_s32 for the 64-bit product, then vrshlq_s64 by -shift, a rounding
 * shift right that adds 2^(shift-1) first (round half up), as the rule does.
 * The result fits in int32 because multiplier < 2^31 <= 2^shift. */
#include <arm_neon.h>

#include "q8-gemm.h"

static inline int32x4_t requant4(int32x4_t vacc, int32x4_t vmul, int32x4_t vshift) {
  const int32x4_t neg = vnegq_s32(vshift);
  const int64x2_t lo = vrshlq_s64(vmull_s32(vget_low_s32(vacc), vget_low_s32(vmul)), vmovl_s32(vget_low_s32(neg)));
  const int64x2_t hi = vrshlq_s64(vmull_high_s32(vacc, vmul), vmovl_high_s32(neg));
  return vcombine_s32(vmovn_s64(lo), vmovn_s64(hi));
}

void edge_q8_vrequant_rndnu_ukernel__neon(size_t n, const int32_t* acc, const int32_t* multiplier,
                                          const int32_t* shift, int32_t zero_point, int32_t out_min,
                                          int32_t out_max, int out_signed, void* out) {
  (void) out_signed; /* the clamp already holds the value in the output range: truncation is exact */
  const int32x4_t vlo = vdupq_n_s32(out_min - zero_point);
  const int32x4_t vhi = vdupq_n_s32(out_max - zero_point);
  const int32x4_t vzp = vdupq_n_s32(zero_point);
  uint8_t* o = out;
  size_t i = 0;
  for (; i < n; i += 8) {
    const size_t count = EDGE_MIN(n - i, (size_t) 8);
    int32_t a8[8] = {0}, m8[8], s8[8];
    const int32_t *pa = acc + i, *pm = multiplier + i, *ps = shift + i;
    if (count < 8) { /* tail: valid parameters in the unused lanes */
      for (size_t j = 0; j < 8; j++) {
        a8[j] = j < count ? acc[i + j] : 0;
        m8[j] = j < count ? multiplier[i + j] : (1 << 30);
        s8[j] = j < count ? shift[i + j] : 31;
      }
      pa = a8, pm = m8, ps = s8;
    }
    int32x4_t v0 = requant4(vld1q_s32(pa), vld1q_s32(pm), vld1q_s32(ps));
    int32x4_t v1 = requant4(vld1q_s32(pa + 4), vld1q_s32(pm + 4), vld1q_s32(ps + 4));
    v0 = vaddq_s32(vminq_s32(vmaxq_s32(v0, vlo), vhi), vzp);
    v1 = vaddq_s32(vminq_s32(vmaxq_s32(v1, vlo), vhi), vzp);
    const int8x8_t bytes = vmovn_s16(vcombine_s16(vmovn_s32(v0), vmovn_s32(v1)));
    if (count == 8) {
      vst1_s8((int8_t*) (o + i), bytes);
    } else {
      int8_t tmp[8];
      vst1_s8(tmp, bytes);
      memcpy(o + i, tmp, count);
    }
  }
}
