/* Private layout and micro-kernel contract of the 2:4-sparse INT8 GEMM.
 *
 * Packed buffer (64-byte aligned, the same for every ISA):
 *
 *   header     64 bytes (edge_q8_gemm24_header)
 *   bias       int32[n_pad]
 *   colsum     int32[n_pad]   sum_k W[n][k], folds the activation zero point:
 *                             sum_k (a - zp) * w = sum_k a * w - zp * colsum
 *   blocks     n_pad / 16 blocks of 16 output channels, each k_pad / 8 steps
 *              of EDGE_Q8_GEMM24_STEP_BYTES (80) bytes:
 *
 *     values     64 bytes: channel c at 4c: v0, v1 of group 2s, v0, v1 of group 2s+1
 *     positions  16 bytes: one byte per channel, low nibble i0 | i1 << 2 of
 *                group 2s, high nibble the same for group 2s+1 (i0 < i1,
 *                always two distinct positions; a kept value may be 0)
 *
 * k is padded with zero weights to k_pad = round_up(k, 8): a step covers two
 * groups of 4. 80 bytes stand for 128 dense bytes (0.625).
 *
 * The position bytes are stored in the order that lets AVX-512 expand them
 * with one 128-bit broadcast and one vpmultishiftqb: channel 4L + 2h + c
 * (L = 0..3, h = 0..1, c = 0..1) lives at byte 8h + 2L + c, so that every
 * 64-bit lane of the broadcast holds the two channels of that lane.
 * edge_q8_gemm24_position_index() maps a channel to its byte.
 */
#ifndef EDGE_Q8_GEMM24_H
#define EDGE_Q8_GEMM24_H

#include "internal.h"

#define EDGE_Q8_GEMM24_MAGIC 0x34325145u /* "EQ24" little-endian */
#define EDGE_Q8_GEMM24_VERSION 1u
#define EDGE_Q8_GEMM24_NR 16
#define EDGE_Q8_GEMM24_STEP_K 8
#define EDGE_Q8_GEMM24_STEP_BYTES 80
#define EDGE_Q8_GEMM24_MAX_K 65536

typedef struct edge_q8_gemm24_header {
  uint32_t magic;
  uint32_t version;
  int32_t n;
  int32_t k;
  int32_t n_pad;       /* round_up(n, 16) */
  int32_t k_pad;       /* round_up(k, 8) */
  uint32_t block_bytes; /* (k_pad / 8) * 80 */
  uint32_t reserved[9];
} edge_q8_gemm24_header;

_Static_assert(sizeof(edge_q8_gemm24_header) == 64, "the header fills one cache line");

static inline int edge_q8_gemm24_position_index(int channel) {
  const int lane = channel >> 2, half = (channel >> 1) & 1, c = channel & 1;
  return 8 * half + 2 * lane + c;
}

/* What a micro-kernel needs besides A, the weights and C, for one block of
 * 16 channels (every array has 16 entries so SIMD loads never read past them). */
typedef struct edge_q8_gemm24_tile_params {
  int32_t init[EDGE_Q8_GEMM24_NR]; /* bias - zp_eff * colsum (wrapping) */
  /* 16 readable entries each (the caller's arrays, or a padded copy for the
   * last block); NULL for s32 output. */
  const int32_t* multiplier;
  const int32_t* shift;
  int32_t zero_point;
  int32_t out_min; /* output clamp, in the output domain */
  int32_t out_max;
  edge_dtype c_dtype; /* u8, s8 or s32 */
  uint8_t a_flip;     /* xor applied to A bytes before the kernel's multiply */
} edge_q8_gemm24_tile_params;

/* C[0..mr)[0..nc) = epilogue(init + sum_k a'[m][k] * W[n][k]) where a' is
 * A xor a_flip read in the kernel's signedness (see edge_q8_gemm24_config).
 * mr <= the kernel's MR, nc <= 16; k is the real depth (kernels never read A
 * past it); w points at the block's first step. c_stride is in elements. */
typedef void (*edge_q8_gemm24_ukernel_fn)(size_t mr, size_t nc, size_t k, const uint8_t* a, size_t a_stride,
                                          const uint8_t* w, void* c, size_t c_stride,
                                          const edge_q8_gemm24_tile_params* params);

typedef struct edge_q8_gemm24_config {
  edge_q8_gemm24_ukernel_fn ukernel;
  uint32_t mr;
  /* 1 when the kernel multiplies A as int8 (NEON), 0 when as uint8 (x86, scalar). */
  uint8_t a_signed;
} edge_q8_gemm24_config;

/* The micro-kernel table entry of the active ISA (scalar when an ISA has none). */
const edge_q8_gemm24_config* edge_q8_gemm24_get_config(edge_isa isa);

/* Per-ISA micro-kernels. */
void edge_q8_qc8w24_gemm_rndnu_ukernel_4x16c8__scalar(size_t mr, size_t nc, size_t k, const uint8_t* a,
                                                      size_t a_stride, const uint8_t* w, void* c, size_t c_stride,
                                                      const edge_q8_gemm24_tile_params* params);
void edge_q8_qc8w24_gemm_rndnu_ukernel_4x16c8__avx2(size_t mr, size_t nc, size_t k, const uint8_t* a,
                                                    size_t a_stride, const uint8_t* w, void* c, size_t c_stride,
                                                    const edge_q8_gemm24_tile_params* params);
void edge_q8_qc8w24_gemm_rndnu_ukernel_8x16c8__avx512vnni(size_t mr, size_t nc, size_t k, const uint8_t* a,
                                                          size_t a_stride, const uint8_t* w, void* c,
                                                          size_t c_stride, const edge_q8_gemm24_tile_params* params);
void edge_q8_qc8w24_gemm_rndnu_ukernel_2x16c8__neon(size_t mr, size_t nc, size_t k, const uint8_t* a,
                                                    size_t a_stride, const uint8_t* w, void* c, size_t c_stride,
                                                    const edge_q8_gemm24_tile_params* params);
void edge_q8_qc8w24_gemm_rndnu_ukernel_4x16c8__neondot(size_t mr, size_t nc, size_t k, const uint8_t* a,
                                                       size_t a_stride, const uint8_t* w, void* c, size_t c_stride,
                                                       const edge_q8_gemm24_tile_params* params);

/* Stores one row of int32 accumulators (acc[0..nc)) through the epilogue:
 * raw for s32, requantized by the shared rule for u8/s8. */
static inline void edge_q8_gemm24_store_row(const int32_t* acc, size_t nc, void* c_row,
                                            const edge_q8_gemm24_tile_params* p) {
  if (p->c_dtype == EDGE_DTYPE_S32) {
    int32_t* out = (int32_t*) c_row;
    for (size_t n = 0; n < nc; n++) out[n] = acc[n];
    return;
  }
  for (size_t n = 0; n < nc; n++) {
    const int32_t v = edge_requantize(acc[n], p->multiplier[n], p->shift[n], p->zero_point, p->out_min, p->out_max);
    if (p->c_dtype == EDGE_DTYPE_U8) {
      ((uint8_t*) c_row)[n] = (uint8_t) v;
    } else {
      ((int8_t*) c_row)[n] = (int8_t) v;
    }
  }
}

#endif /* EDGE_Q8_GEMM24_H */
