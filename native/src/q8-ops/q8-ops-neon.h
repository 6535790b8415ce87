/* NEON helpers shared by the q8-ops add and mul kernels. Include only from
 * *__neon.c files. */
#ifndef EDGE_Q8_OPS_NEON_H
#define EDGE_Q8_OPS_NEON_H

#include <arm_neon.h>

#include "q8-ops/q8-ops.h"

/* The output stage of add and mul, broadcast once per call. */
typedef struct edge_q8_neon_output {
  int32x4_t neg_shift; /* vrshl by -shift: the round-half-up shift, exact at full precision */
  int32x4_t zero_point;
  uint8x16_t min, max, flip;
} edge_q8_neon_output;

static inline edge_q8_neon_output edge_q8_neon_output_init(const edge_q8_vbinary_params* p) {
  edge_q8_neon_output o;
  o.neg_shift = vdupq_n_s32(-p->shift);
  o.zero_point = vdupq_n_s32(p->y_zero_point);
  o.min = vdupq_n_u8((uint8_t) p->y_min);
  o.max = vdupq_n_u8((uint8_t) p->y_max);
  o.flip = vdupq_n_u8(p->flip);
  return o;
}

/* Loads 16 bytes, XORs them with flip and returns bytes 0-7 (lo) and 8-15
 * (hi) as int16 lanes minus zero_point. */
static inline void edge_q8_neon_load16(const uint8_t* x, uint8x16_t flip, int16x8_t zero_point, int16x8_t* lo,
                                       int16x8_t* hi) {
  const uint8x16_t v = veorq_u8(vld1q_u8(x), flip);
  *lo = vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(v))), zero_point);
  *hi = vsubq_s16(vreinterpretq_s16_u16(vmovl_high_u8(v)), zero_point);
}

/* Stores edge_q8_rounding_shift(acc) + zero point, clamped and flipped, for
 * the 16 lanes acc0 (bytes 0-3) .. acc3 (bytes 12-15). */
static inline void edge_q8_neon_store16(uint8_t* y, int32x4_t acc0, int32x4_t acc1, int32x4_t acc2,
                                        int32x4_t acc3, const edge_q8_neon_output* o) {
  acc0 = vaddq_s32(vrshlq_s32(acc0, o->neg_shift), o->zero_point);
  acc1 = vaddq_s32(vrshlq_s32(acc1, o->neg_shift), o->zero_point);
  acc2 = vaddq_s32(vrshlq_s32(acc2, o->neg_shift), o->zero_point);
  acc3 = vaddq_s32(vrshlq_s32(acc3, o->neg_shift), o->zero_point);
  /* Saturating narrows are monotone, so clamping after them is exact. */
  const int16x8_t s_lo = vcombine_s16(vqmovn_s32(acc0), vqmovn_s32(acc1));
  const int16x8_t s_hi = vcombine_s16(vqmovn_s32(acc2), vqmovn_s32(acc3));
  uint8x16_t out = vcombine_u8(vqmovun_s16(s_lo), vqmovun_s16(s_hi));
  out = vminq_u8(vmaxq_u8(out, o->min), o->max);
  vst1q_u8(y, veorq_u8(out, o->flip));
}

#endif /* EDGE_Q8_OPS_NEON_H */
