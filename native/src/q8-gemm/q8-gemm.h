/* Internal contract of the dense INT8 GEMM family: the packed layout and the
 * micro-kernel signatures shared by q8-gemm.c, q8-gemm-config.c and the
 * per-ISA kernel files. Not part of the public API.
 *
 * Packed layout (the same bytes for every ISA):
 *
 *   edge_q8_gemm_header                 64 bytes
 *   int32 bias[n_pad]                   zero-padded
 *   int32 colsum[n_pad]                 sum_k W[n][k]: folds the run-time zero point into the bias
 *   int8  weights[n_pad / 16][k_pad / 4][16][4]
 *
 * The weights of 16 consecutive output channels form a panel of k_pad * 16
 * bytes; inside it each 64-byte group holds 4 consecutive k for 16 channels,
 * the operand layout of vpdpbusd / sdot (4-way dot into 16 int32 lanes).
 * k_pad = round_up(k, 4) and n_pad = round_up(n, 16), padded with zeros.
 *
 * flags: EDGE_Q8_GEMM_FLAG_W7 when packing found every weight in [-63, 63]
 * (7-bit weights): then an ISA may run its w7 kernels (vpmaddubsw on AVX2,
 * exact for such weights). Buffers packed before the field existed hold 0
 * there (it was reserved and zeroed), so they take the exact 8-bit kernels.
 */
#ifndef EDGE_Q8_GEMM_INTERNAL_H
#define EDGE_Q8_GEMM_INTERNAL_H

#include <string.h>

#include "internal.h"

#define EDGE_Q8_GEMM_MAGIC UINT32_C(0x47385145) /* "EQ8G" little-endian */
#define EDGE_Q8_GEMM_VERSION 1
#define EDGE_Q8_GEMM_NR 16 /* output channels of one packed block */
#define EDGE_Q8_GEMM_KR 4  /* consecutive k of one packed group */
#define EDGE_Q8_GEMM_MAX_K 65536
/* Largest micro-kernel tile of any ISA: sizes the driver's stack tile. */
#define EDGE_Q8_GEMM_MAX_MR 8
#define EDGE_Q8_GEMM_MAX_NR 64

typedef struct edge_q8_gemm_header {
  uint32_t magic;
  uint32_t version;
  int32_t n;
  int32_t k;
  int32_t n_pad;
  int32_t k_pad;
  uint32_t flags; /* EDGE_Q8_GEMM_FLAG_* */
  uint32_t reserved[9];
} edge_q8_gemm_header;

#define EDGE_Q8_GEMM_FLAG_W7 UINT32_C(1) /* every weight in [-63, 63] */
#define EDGE_Q8_GEMM_W7_MAX 63

_Static_assert(sizeof(edge_q8_gemm_header) == 64, "the packed header is one cache line");

/* Accumulates one tile over the whole of K:
 *
 *   acc[r][c] = init[c] + sum_k x(a[r][k]) * w[c][k]    for r < mr, c < nb * 16
 *
 * where x() is the kernel's view of A: the byte itself, or the byte xor 0x80
 * (see edge_q8_gemm_config.a_offset). a_stride is in bytes, w points at the
 * panel of the tile's first 16-channel block and panel_stride (bytes) leads
 * to the next block's panel. Reads exactly k bytes of each row of A. */
typedef void (*edge_q8_gemm_ukernel_fn)(size_t mr, size_t nb, size_t k, const uint8_t* a, size_t a_stride,
                                        int a_signed, const int8_t* w, size_t panel_stride,
                                        const int32_t* init, int32_t* acc, size_t acc_stride);

/* Requantizes a tile of rows x n accumulators (acc_stride int32 between rows)
 * to u8 (out_signed = 0) or s8 (edge_requantize), out_stride bytes between
 * rows of out. The per-channel parameters are loaded once per tile. */
typedef void (*edge_q8_requant_fn)(size_t rows, size_t n, const int32_t* acc, size_t acc_stride,
                                   const int32_t* multiplier, const int32_t* shift, int32_t zero_point,
                                   int32_t out_min, int32_t out_max, int out_signed, void* out,
                                   size_t out_stride);

/* Where a fused kernel stores its tile: c points at the tile's first element
 * of C, nc <= nb * 16 columns are written. With multiplier == NULL the int32
 * accumulators are stored as they are (s32 C); otherwise they are
 * requantized to u8/s8 (the same bytes: the clamp keeps values in range). */
typedef struct edge_q8_gemm_store {
  void* c;
  size_t c_stride; /* bytes */
  size_t nc;
  const int32_t* multiplier; /* of the tile's first channel, or NULL */
  const int32_t* shift;
  int32_t zero_point;
  int32_t out_min;
  int32_t out_max;
} edge_q8_gemm_store;

/* A micro-kernel with the output stage fused: the accumulation of
 * edge_q8_gemm_ukernel_fn, then straight from registers into C. It takes any
 * number of rows m (1 for the gemv kernel) and walks them in tiles of its
 * own, setting up the output stage once. */
typedef void (*edge_q8_gemm_fused_fn)(size_t m, size_t nb, size_t k, const uint8_t* a, size_t a_stride,
                                      int a_signed, const int8_t* w, size_t panel_stride, const int32_t* init,
                                      const edge_q8_gemm_store* store);

typedef struct edge_q8_gemm_config {
  /* Either fused kernels (gemm_fused and gemv_fused set), or accumulating
   * kernels plus the tile requantization pass (gemm, gemv, requant). */
  edge_q8_gemm_ukernel_fn gemm; /* mr <= mr_max rows, nb <= nr_max / 16 blocks */
  edge_q8_gemm_fused_fn gemm_fused;
  size_t mr;
  size_t nr;
  edge_q8_gemm_ukernel_fn gemv; /* the kernel for m == 1 (memory-bound) */
  edge_q8_gemm_fused_fn gemv_fused;
  size_t gemv_nr;
  edge_q8_requant_fn requant;
  /* x(a) - a of the kernel's view of A, for u8 and s8 A: the driver folds
   * -(a_zero_point + a_offset) * colsum into init. */
  int32_t a_offset_u8;
  int32_t a_offset_s8;
  /* Accumulating kernels for weights flagged EDGE_Q8_GEMM_FLAG_W7, or NULL
   * (the kernels above then run them: the same results), with their own
   * offsets of A. Same tile (mr, nr, gemv_nr) and requant as above. */
  edge_q8_gemm_ukernel_fn gemm_w7;
  edge_q8_gemm_ukernel_fn gemv_w7;
  int32_t a_offset_w7_u8;
  int32_t a_offset_w7_s8;
} edge_q8_gemm_config;

/* The table entry of an ISA, or NULL when this build lacks it. */
const edge_q8_gemm_config* edge_q8_gemm_get_config(edge_isa isa);

/* Loads the 4 bytes of A of one k group, zero-filling past k (the matching
 * packed weights are zero, so the fill value never reaches the result). */
static inline uint32_t edge_q8_load_a4(const uint8_t* a, size_t remaining) {
  uint32_t v = 0;
  memcpy(&v, a, remaining < 4 ? remaining : 4);
  return v;
}

/* Kernels (src/q8-gemm/<name>.c). */
void edge_q8_qc8w_gemm_ukernel_4x16c4__scalar(size_t mr, size_t nb, size_t k, const uint8_t* a, size_t a_stride,
                                              int a_signed, const int8_t* w, size_t panel_stride,
                                              const int32_t* init, int32_t* acc, size_t acc_stride);
void edge_q8_vrequant_rndnu_ukernel__scalar(size_t rows, size_t n, const int32_t* acc, size_t acc_stride,
    const int32_t* multiplier, const int32_t* shift, int32_t zero_point, int32_t out_min, int32_t out_max,
    int out_signed, void* out, size_t out_stride);

void edge_q8_qc8w_gemm_ukernel_4x16c4__avx2(size_t mr, size_t nb, size_t k, const uint8_t* a, size_t a_stride,
                                            int a_signed, const int8_t* w, size_t panel_stride,
                                            const int32_t* init, int32_t* acc, size_t acc_stride);
void edge_q8_qc7w_gemm_ukernel_4x16c4__avx2(size_t mr, size_t nb, size_t k, const uint8_t* a, size_t a_stride,
                                            int a_signed, const int8_t* w, size_t panel_stride,
                                            const int32_t* init, int32_t* acc, size_t acc_stride);
void edge_q8_vrequant_rndnu_ukernel__avx2(size_t rows, size_t n, const int32_t* acc, size_t acc_stride,
    const int32_t* multiplier, const int32_t* shift, int32_t zero_point, int32_t out_min, int32_t out_max,
    int out_signed, void* out, size_t out_stride);

void edge_q8_qc8w_gemm_rndnu_ukernel_8x32c4__avx512vnni(size_t m, size_t nb, size_t k, const uint8_t* a,
                                                        size_t a_stride, int a_signed, const int8_t* w,
                                                        size_t panel_stride, const int32_t* init,
                                                        const edge_q8_gemm_store* store);
void edge_q8_qc8w_gemm_rndnu_ukernel_1x64c4__avx512vnni(size_t mr, size_t nb, size_t k, const uint8_t* a,
                                                        size_t a_stride, int a_signed, const int8_t* w,
                                                        size_t panel_stride, const int32_t* init,
                                                        const edge_q8_gemm_store* store);

void edge_q8_qc8w_gemm_ukernel_2x16c4__neon(size_t mr, size_t nb, size_t k, const uint8_t* a, size_t a_stride,
                                            int a_signed, const int8_t* w, size_t panel_stride,
                                            const int32_t* init, int32_t* acc, size_t acc_stride);
void edge_q8_vrequant_rndnu_ukernel__neon(size_t rows, size_t n, const int32_t* acc, size_t acc_stride,
    const int32_t* multiplier, const int32_t* shift, int32_t zero_point, int32_t out_min, int32_t out_max,
    int out_signed, void* out, size_t out_stride);

void edge_q8_qc8w_gemm_ukernel_4x16c4__neondot(size_t mr, size_t nb, size_t k, const uint8_t* a,
                                               size_t a_stride, int a_signed, const int8_t* w,
                                               size_t panel_stride, const int32_t* init, int32_t* acc,
                                               size_t acc_stride);

#endif /* EDGE_Q8_GEMM_INTERNAL_H */
