/* One max-pool window tap over the channels, NEON: 16 bytes per step. */
#include <arm_neon.h>

#include "q8-ops/q8-ops.h"

void edge_q8_vmax_ukernel__neon(size_t n, const uint8_t* x, uint8_t flip, uint8_t* y) {
  const uint8x16_t vflip = vdupq_n_u8(flip);
  for (; n >= 16; n -= 16, x += 16, y += 16) {
    const uint8x16_t vx = veorq_u8(vld1q_u8(x), vflip), vy = veorq_u8(vld1q_u8(y), vflip);
    vst1q_u8(y, veorq_u8(vmaxq_u8(vx, vy), vflip));
  }
  for (size_t i = 0; i < n; i++) {
    const uint8_t a = x[i] ^ flip, b = y[i] ^ flip;
    y[i] = (a > b ? a : b) ^ flip;
  }
}
