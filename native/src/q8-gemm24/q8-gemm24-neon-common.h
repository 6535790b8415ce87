/* Shared by the NEON 2:4 micro-kernels: expands one step's position bytes
 * into vqtbl1q_u8 controls [i0, i1, 4 + i0', 4 + i1'] for channels 0-3, 4-7,
 * 8-11 and 12-15, with nibble look-up tables (NEON has no multishift). */
#ifndef EDGE_Q8_GEMM24_NEON_COMMON_H
#define EDGE_Q8_GEMM24_NEON_COMMON_H

#include <arm_neon.h>

#include "q8-gemm24/q8-gemm24.h"

static inline void edge_q8_gemm24_neon_controls(const uint8_t* step, uint8x16_t controls[4]) {
  /* Stored byte of channel c (see edge_q8_gemm24_position_index). */
  static const uint8_t natural[16] = {0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15};
  static const uint8_t first[16] = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};  /* n & 3 */
  static const uint8_t second[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3}; /* n >> 2 */
  const uint8x16_t positions = vqtbl1q_u8(vld1q_u8(step + 64), vld1q_u8(natural));
  const uint8x16_t lo = vandq_u8(positions, vdupq_n_u8(0x0F)), hi = vshrq_n_u8(positions, 4);
  const uint8x16_t t_first = vld1q_u8(first), t_second = vld1q_u8(second), four = vdupq_n_u8(4);
  const uint8x16_t b0 = vqtbl1q_u8(t_first, lo), b1 = vqtbl1q_u8(t_second, lo);
  const uint8x16_t b2 = vaddq_u8(vqtbl1q_u8(t_first, hi), four), b3 = vaddq_u8(vqtbl1q_u8(t_second, hi), four);
  const uint16x8_t p01_lo = vreinterpretq_u16_u8(vzip1q_u8(b0, b1)), p01_hi = vreinterpretq_u16_u8(vzip2q_u8(b0, b1));
  const uint16x8_t p23_lo = vreinterpretq_u16_u8(vzip1q_u8(b2, b3)), p23_hi = vreinterpretq_u16_u8(vzip2q_u8(b2, b3));
  controls[0] = vreinterpretq_u8_u16(vzip1q_u16(p01_lo, p23_lo));
  controls[1] = vreinterpretq_u8_u16(vzip2q_u16(p01_lo, p23_lo));
  controls[2] = vreinterpretq_u8_u16(vzip1q_u16(p01_hi, p23_hi));
  controls[3] = vreinterpretq_u8_u16(vzip2q_u16(p01_hi, p23_hi));
}

/* 8 activation bytes (a zero-padded copy for the last, partial step) as a
 * 16-byte table, xor flip so the kernel reads them as int8. */
static inline uint8x16_t edge_q8_gemm24_neon_activations(const uint8_t* a, size_t count, uint8_t flip) {
  uint8_t bytes[8] = {0};
  for (size_t i = 0; i < count; i++) bytes[i] = a[i];
  const uint8x8_t x = veor_u8(vld1_u8(bytes), vdup_n_u8(flip));
  return vcombine_u8(x, x);
}

#endif /* EDGE_Q8_GEMM24_NEON_COMMON_H */
