/* The depthwise block of the micro-kernels, NEON (also run on neondot: one channel
 * per lane leaves nothing for the dot product):
 * edge_q8_qc8w_dwconv{3x3,5x5}_rndnu_ukernel_16c__neon; included only by
 * their two files (it needs their compiler flags).
 * Input widened to int16 minus the zero point (exact: within [-255, 255]),
 * weights widened from the de-interleaved tap pairs (vld2), products
 * accumulated by vmlal_s16 (non-saturating). Requantization by vmull_s32 and
 * vrshlq_s64, whose rounding shift is the rule's "+ 2^(shift-1), >> shift". */
#ifndef EDGE_Q8_DWCONV_NEON_H
#define EDGE_Q8_DWCONV_NEON_H

#include <arm_neon.h>

#include "q8-dwconv.h"

/* The requantization parameters of a 16-channel block (NEON reads them per
 * pixel: two loads and a negation per 4 channels). */
typedef struct dwconv_constants {
  const int32_t* multiplier;
  const int32_t* shift;
} dwconv_constants;

static inline void dwconv_constants_init(dwconv_constants* k, const int32_t* multiplier, const int32_t* shift) {
  k->multiplier = multiplier;
  k->shift = shift;
}

/* edge_requantize of 4 lanes, up to the clamp (zero point not yet added). The
 * shifted product always fits int32 (|acc * multiplier| < 2^62, shift >= 31). */
static inline int32x4_t requant4(int32x4_t acc, const int32_t* multiplier, const int32_t* shift, int32x4_t lo,
                                 int32x4_t hi) {
  const int32x4_t mult = vld1q_s32(multiplier);
  const int32x4_t neg_shift = vnegq_s32(vld1q_s32(shift));
  const int64x2_t p0 = vrshlq_s64(vmull_s32(vget_low_s32(acc), vget_low_s32(mult)), vmovl_s32(vget_low_s32(neg_shift)));
  const int64x2_t p1 = vrshlq_s64(vmull_high_s32(acc, mult), vmovl_high_s32(neg_shift));
  const int32x4_t scaled = vcombine_s32(vmovn_s64(p0), vmovn_s64(p1));
  return vminq_s32(vmaxq_s32(scaled, lo), hi);
}

EDGE_Q8_DWCONV_INLINE void accumulate(int32x4_t acc[4], const uint8_t* in, int8x16_t w, int is_signed,
                                      int32_t zero_point) {
  const uint8x16_t x = vld1q_u8(in);
  int16x8_t x_lo, x_hi;
  if (is_signed) {
    const int8x8_t zp = vdup_n_s8((int8_t) zero_point);
    x_lo = vsubl_s8(vget_low_s8(vreinterpretq_s8_u8(x)), zp);
    x_hi = vsubl_s8(vget_high_s8(vreinterpretq_s8_u8(x)), zp);
  } else { /* u8 - zp wraps in 16 bits to the exact difference */
    const uint8x8_t zp = vdup_n_u8((uint8_t) zero_point);
    x_lo = vreinterpretq_s16_u16(vsubl_u8(vget_low_u8(x), zp));
    x_hi = vreinterpretq_s16_u16(vsubl_u8(vget_high_u8(x), zp));
  }
  const int16x8_t w_lo = vmovl_s8(vget_low_s8(w));
  const int16x8_t w_hi = vmovl_high_s8(w);
  acc[0] = vmlal_s16(acc[0], vget_low_s16(x_lo), vget_low_s16(w_lo));
  acc[1] = vmlal_high_s16(acc[1], x_lo, w_lo);
  acc[2] = vmlal_s16(acc[2], vget_low_s16(x_hi), vget_low_s16(w_hi));
  acc[3] = vmlal_high_s16(acc[3], x_hi, w_hi);
}

EDGE_Q8_DWCONV_INLINE void dwconv_block(size_t taps, const uint8_t* const* in, const uint8_t* block,
                                        const dwconv_constants* k, uint8_t* out,
                                        const edge_q8_dwconv_params* params) {
  const int32_t* bias = (const int32_t*) block; /* packed blocks are 32-byte aligned */
  int32x4_t acc[4] = {vld1q_s32(bias), vld1q_s32(bias + 4), vld1q_s32(bias + 8), vld1q_s32(bias + 12)};
  const int8_t* w = (const int8_t*) (block + EDGE_Q8_DWCONV_CB * sizeof(int32_t));
  for (size_t t = 0; t < taps; t += 2, w += 2 * EDGE_Q8_DWCONV_CB) {
    const int8x16x2_t pair = vld2q_s8(w); /* val[0]: tap t, val[1]: tap t + 1, 16 channels each */
    accumulate(acc, in[t], pair.val[0], params->x_signed, params->x_zero_point);
    if (t + 1 < taps) accumulate(acc, in[t + 1], pair.val[1], params->x_signed, params->x_zero_point);
  }
  const int32x4_t lo = vdupq_n_s32(params->y_min - params->y_zero_point);
  const int32x4_t hi = vdupq_n_s32(params->y_max - params->y_zero_point);
  const int32x4_t zp = vdupq_n_s32(params->y_zero_point);
  int16x4_t y16[4];
  for (int i = 0; i < 4; i++) {
    y16[i] = vmovn_s32(vaddq_s32(requant4(acc[i], k->multiplier + 4 * i, k->shift + 4 * i, lo, hi), zp));
  }
  /* Values are inside the output range: keep their low bytes (u8 or s8 alike). */
  const int8x16_t y8 = vcombine_s8(vmovn_s16(vcombine_s16(y16[0], y16[1])), vmovn_s16(vcombine_s16(y16[2], y16[3])));
  vst1q_s8((int8_t*) out, y8);
}

#include "q8-dwconv-pixels.h"

#endif /* EDGE_Q8_DWCONV_NEON_H */
