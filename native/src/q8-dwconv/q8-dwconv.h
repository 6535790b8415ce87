/* Internal contract of the depthwise conv family: the packed layout and the
 * micro-kernel signature shared by q8-dwconv.c, q8-dwconv-config.c and the
 * per-ISA kernel files. Not part of the public API.
 *
 * Packed layout (the same bytes for every ISA):
 *
 *   edge_q8_dwconv_header               64 bytes: the parameters it was packed for
 *   per block of 16 channels (the last one zero-padded):
 *     int32 bias[16]                    64 bytes
 *     int8  w[taps_pad / 2][16][2]      taps (ky, kx) in pairs; w[p][c][j] is tap 2p + j of channel c
 *
 * taps_pad = taps rounded up to even (the extra tap's weights are zero). The
 * pairs are the operand layout of vpmaddwd / vpdpwssd: two taps of one channel
 * multiplied and summed into one int32 lane; NEON de-interleaves them with vld2.
 */
#ifndef EDGE_Q8_DWCONV_INTERNAL_H
#define EDGE_Q8_DWCONV_INTERNAL_H

#include "internal.h"

#define EDGE_Q8_DWCONV_MAGIC UINT32_C(0x57445145) /* "EQDW" little-endian */
#define EDGE_Q8_DWCONV_VERSION 1
#define EDGE_Q8_DWCONV_CB 16       /* channels of one packed block */
#define EDGE_Q8_DWCONV_MAX_TAPS 25 /* 5x5 */
/* Bytes of the zero-point row that padding taps point at: the widest kernel step. */
#define EDGE_Q8_DWCONV_ZERO_BYTES 64

/* The kernels' loops are specialized per tap count by inlining. */
#if defined(__GNUC__)
#define EDGE_Q8_DWCONV_INLINE static inline __attribute__((always_inline))
#else
#define EDGE_Q8_DWCONV_INLINE static inline
#endif

/* Bytes of one packed 16-channel block. */
static inline size_t edge_q8_dwconv_block_bytes(size_t taps) {
  return EDGE_Q8_DWCONV_CB * sizeof(int32_t) + (taps + 1) / 2 * EDGE_Q8_DWCONV_CB * 2;
}

/* What a micro-kernel needs besides its pointers. */
typedef struct edge_q8_dwconv_params {
  const int32_t* multiplier; /* [channels] */
  const int32_t* shift;      /* [channels] */
  int32_t x_zero_point;
  int32_t y_zero_point;
  int32_t y_min;
  int32_t y_max;
  int x_signed; /* s8 input (else u8); the output's signedness only changes the clamp */
} edge_q8_dwconv_params;

/* Computes `pixels` output pixels of all `channels`:
 *
 *   y[px][c] = requantize(bias[c] + sum_t (x_t[c] - x_zero_point) * w[t][c])
 *
 * input holds taps pointers per pixel (row-major over (ky, kx)), each to the
 * first channel of an input pixel, or equal to `zero` for a padding tap.
 * `zero` is EDGE_Q8_DWCONV_ZERO_BYTES bytes of the input zero point; it is
 * never advanced.
 * output advances by output_stride bytes per pixel. */
typedef void (*edge_q8_dwconv_ukernel_fn)(size_t pixels, size_t channels, const uint8_t* const* input,
                                          const uint8_t* zero, const void* packed, uint8_t* output,
                                          size_t output_stride, const edge_q8_dwconv_params* params);

typedef struct edge_q8_dwconv_config {
  edge_q8_dwconv_ukernel_fn dwconv3x3;
  edge_q8_dwconv_ukernel_fn dwconv5x5;
} edge_q8_dwconv_config;

/* The table entry of an ISA, or NULL when this build lacks it. */
const edge_q8_dwconv_config* edge_q8_dwconv_get_config(edge_isa isa);

/* Kernels (src/q8-dwconv/<name>.c), their shared code in q8-dwconv-<isa>.h. */
void edge_q8_qc8w_dwconv3x3_rndnu_ukernel_16c__scalar(size_t pixels, size_t channels, const uint8_t* const* input,
    const uint8_t* zero, const void* packed, uint8_t* output, size_t output_stride,
    const edge_q8_dwconv_params* params);
void edge_q8_qc8w_dwconv5x5_rndnu_ukernel_16c__scalar(size_t pixels, size_t channels, const uint8_t* const* input,
    const uint8_t* zero, const void* packed, uint8_t* output, size_t output_stride,
    const edge_q8_dwconv_params* params);

void edge_q8_qc8w_dwconv3x3_rndnu_ukernel_16c__avx2(size_t pixels, size_t channels, const uint8_t* const* input,
    const uint8_t* zero, const void* packed, uint8_t* output, size_t output_stride,
    const edge_q8_dwconv_params* params);
void edge_q8_qc8w_dwconv5x5_rndnu_ukernel_16c__avx2(size_t pixels, size_t channels, const uint8_t* const* input,
    const uint8_t* zero, const void* packed, uint8_t* output, size_t output_stride,
    const edge_q8_dwconv_params* params);

void edge_q8_qc8w_dwconv3x3_rndnu_ukernel_16c__neon(size_t pixels, size_t channels, const uint8_t* const* input,
    const uint8_t* zero, const void* packed, uint8_t* output, size_t output_stride,
    const edge_q8_dwconv_params* params);
void edge_q8_qc8w_dwconv5x5_rndnu_ukernel_16c__neon(size_t pixels, size_t channels, const uint8_t* const* input,
    const uint8_t* zero, const void* packed, uint8_t* output, size_t output_stride,
    const edge_q8_dwconv_params* params);

/* AVX-512 VNNI: 64 channels and 4 taps per step (see q8-dwconv-avx512vnni.h). */
void edge_q8_qc8w_dwconv3x3_rndnu_ukernel_64c4__avx512vnni(size_t pixels, size_t channels, const uint8_t* const* input,
    const uint8_t* zero, const void* packed, uint8_t* output, size_t output_stride,
    const edge_q8_dwconv_params* params);
void edge_q8_qc8w_dwconv5x5_rndnu_ukernel_64c4__avx512vnni(size_t pixels, size_t channels, const uint8_t* const* input,
    const uint8_t* zero, const void* packed, uint8_t* output, size_t output_stride,
    const edge_q8_dwconv_params* params);

#endif /* EDGE_Q8_DWCONV_INTERNAL_H */
