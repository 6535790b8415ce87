/* One average-pool window tap over the channels, NEON: 16 bytes per step. */
#include <arm_neon.h>

#include "q8-ops/q8-ops.h"

void edge_q8_vsum_ukernel__neon(size_t n, const uint8_t* x, uint8_t flip, int32_t* acc) {
  const uint8x16_t vflip = vdupq_n_u8(flip);
  for (; n >= 16; n -= 16, x += 16, acc += 16) {
    const uint8x16_t vx = veorq_u8(vld1q_u8(x), vflip);
    const uint16x8_t lo = vmovl_u8(vget_low_u8(vx)), hi = vmovl_high_u8(vx);
    /* Sums of bytes are never negative: add them as unsigned lanes. */
    vst1q_s32(acc, vreinterpretq_s32_u32(vaddw_u16(vreinterpretq_u32_s32(vld1q_s32(acc)), vget_low_u16(lo))));
    vst1q_s32(acc + 4, vreinterpretq_s32_u32(vaddw_high_u16(vreinterpretq_u32_s32(vld1q_s32(acc + 4)), lo)));
    vst1q_s32(acc + 8, vreinterpretq_s32_u32(vaddw_u16(vreinterpretq_u32_s32(vld1q_s32(acc + 8)), vget_low_u16(hi))));
    vst1q_s32(acc + 12, vreinterpretq_s32_u32(vaddw_high_u16(vreinterpretq_u32_s32(vld1q_s32(acc + 12)), hi)));
  }
  for (size_t i = 0; i < n; i++) acc[i] += (int32_t) (x[i] ^ flip);
}
