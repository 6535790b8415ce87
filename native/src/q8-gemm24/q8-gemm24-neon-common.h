/* Shared by the NEON 2:4 micro-kernels: expands one step's position bytes
 * into vqtbl1q_u8 controls [i0, i1, 4 + i0', 4 + i1'] for channels 0-3, 4-7,
 * 8-11 and 12-15, with nibble look-up tables (NEON has no multishift), and
 * stores rows of 16 accumulators through the vector epilogue. */
#ifndef EDGE_Q8_GEMM24_NEON_COMMON_H
#define EDGE_Q8_GEMM24_NEON_COMMON_H

#include <arm_neon.h>
#include <string.h>

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

/* The per-channel requantization vectors of a 16-channel block, set up once
 * per tile and reused for each of its rows. */
typedef struct edge_q8_gemm24_neon_requant {
  int32x4_t multiplier[4];
  int64x2_t neg_shift_lo[4], neg_shift_hi[4]; /* -shift of channels 4i, 4i+1 and 4i+2, 4i+3 */
  int32x4_t lo, hi, zero_point;               /* clamp bounds relative to the zero point */
} edge_q8_gemm24_neon_requant;

static inline void edge_q8_gemm24_neon_requant_init(const edge_q8_gemm24_tile_params* p,
                                                    edge_q8_gemm24_neon_requant* rq) {
  if (p->c_dtype == EDGE_DTYPE_S32) { /* unused: stored raw */
    memset(rq, 0, sizeof(*rq));
    return;
  }
  for (int i = 0; i < 4; i++) { /* the parameter arrays have 16 readable entries */
    rq->multiplier[i] = vld1q_s32(p->multiplier + 4 * i);
    const int32x4_t neg = vnegq_s32(vld1q_s32(p->shift + 4 * i));
    rq->neg_shift_lo[i] = vmovl_s32(vget_low_s32(neg));
    rq->neg_shift_hi[i] = vmovl_high_s32(neg);
  }
  rq->lo = vdupq_n_s32(p->out_min - p->zero_point);
  rq->hi = vdupq_n_s32(p->out_max - p->zero_point);
  rq->zero_point = vdupq_n_s32(p->zero_point);
}

/* edge_requantize on 4 lanes: vmull_s32 forms the exact 64-bit product and
 * vrshlq_s64 by -shift adds 2^(shift-1) before the arithmetic shift (round
 * half up). The shifted value fits in int32 (multiplier < 2^31 <= 2^shift),
 * so narrowing is exact and the clamp can be done in int32. */
static inline int32x4_t edge_q8_gemm24_neon_requant4(int32x4_t acc, const edge_q8_gemm24_neon_requant* rq, int i) {
  const int64x2_t lo = vrshlq_s64(vmull_s32(vget_low_s32(acc), vget_low_s32(rq->multiplier[i])), rq->neg_shift_lo[i]);
  const int64x2_t hi = vrshlq_s64(vmull_high_s32(acc, rq->multiplier[i]), rq->neg_shift_hi[i]);
  const int32x4_t scaled = vcombine_s32(vmovn_s64(lo), vmovn_s64(hi));
  return vaddq_s32(vminq_s32(vmaxq_s32(scaled, rq->lo), rq->hi), rq->zero_point);
}

/* Vector counterpart of edge_q8_gemm24_store_row, bit-identical to it: the
 * 16 accumulators of one row (channels 4i..4i+3 in acc[i]), nc of them stored. */
static inline void edge_q8_gemm24_neon_store_row(const int32x4_t acc[4], size_t nc, void* c_row,
                                                 const edge_q8_gemm24_tile_params* p,
                                                 const edge_q8_gemm24_neon_requant* rq) {
  if (p->c_dtype == EDGE_DTYPE_S32) {
    int32_t row[EDGE_Q8_GEMM24_NR];
    int32_t* out = nc == EDGE_Q8_GEMM24_NR ? (int32_t*) c_row : row;
    for (int i = 0; i < 4; i++) vst1q_s32(out + 4 * i, acc[i]);
    if (out == row) memcpy(c_row, row, nc * sizeof(int32_t));
    return;
  }
  /* Clamped to the u8 or s8 range: truncating to bytes is exact for both. */
  const int16x8_t lo = vcombine_s16(vmovn_s32(edge_q8_gemm24_neon_requant4(acc[0], rq, 0)),
                                    vmovn_s32(edge_q8_gemm24_neon_requant4(acc[1], rq, 1)));
  const int16x8_t hi = vcombine_s16(vmovn_s32(edge_q8_gemm24_neon_requant4(acc[2], rq, 2)),
                                    vmovn_s32(edge_q8_gemm24_neon_requant4(acc[3], rq, 3)));
  const int8x16_t bytes = vcombine_s8(vmovn_s16(lo), vmovn_s16(hi));
  if (nc == EDGE_Q8_GEMM24_NR) {
    vst1q_s8((int8_t*) c_row, bytes);
  } else {
    int8_t row[EDGE_Q8_GEMM24_NR];
    vst1q_s8(row, bytes);
    memcpy(c_row, row, nc);
  }
}

#endif /* EDGE_Q8_GEMM24_NEON_COMMON_H */
