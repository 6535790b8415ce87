/* 256-entry table lookup, NEON: vqtbl4q_u8 covers 64 entries and returns 0
 * out of range; three vqtbx4q_u8 (which keep the destination out of range)
 * on index - 64, - 128, - 192 cover the rest. */
#include <arm_neon.h>
#include <string.h>

#include "q8-ops/q8-ops.h"

static uint8x16x4_t load_quarter(const uint8_t* t) {
  uint8x16x4_t q;
  q.val[0] = vld1q_u8(t);
  q.val[1] = vld1q_u8(t + 16);
  q.val[2] = vld1q_u8(t + 32);
  q.val[3] = vld1q_u8(t + 48);
  return q;
}

void edge_q8_lut_ukernel__neon(size_t n, const uint8_t* x, const uint8_t* table, uint8_t* y) {
  const uint8x16x4_t t0 = load_quarter(table), t1 = load_quarter(table + 64);
  const uint8x16x4_t t2 = load_quarter(table + 128), t3 = load_quarter(table + 192);
  const uint8x16_t v64 = vdupq_n_u8(64);
  uint8_t tail[16];
  while (n != 0) {
    const size_t chunk = n < 16 ? n : 16;
    const uint8_t* px = x;
    if (chunk < 16) {
      memset(tail, 0, sizeof(tail));
      memcpy(tail, x, chunk);
      px = tail;
    }
    uint8x16_t idx = vld1q_u8(px);
    uint8x16_t out = vqtbl4q_u8(t0, idx);
    idx = vsubq_u8(idx, v64);
    out = vqtbx4q_u8(out, t1, idx);
    idx = vsubq_u8(idx, v64);
    out = vqtbx4q_u8(out, t2, idx);
    idx = vsubq_u8(idx, v64);
    out = vqtbx4q_u8(out, t3, idx);
    if (chunk < 16) {
      vst1q_u8(tail, out);
      memcpy(y, tail, chunk);
    } else {
      vst1q_u8(y, out);
    }
    x += chunk;
    y += chunk;
    n -= chunk;
  }
}
