/* The pixel and channel loops every depthwise micro-kernel shares, around the
 * ISA's 16-channel block. Included by each ISA header (q8-dwconv-<isa>.h)
 * after it defines
 *
 *   EDGE_Q8_DWCONV_INLINE void dwconv_block(size_t taps, const uint8_t* const* in, const uint8_t* block,
 *                                   const int32_t* multiplier, const int32_t* shift,
 *                                   uint8_t* out, const edge_q8_dwconv_params* params);
 *
 * which computes 16 output channels from 16 bytes at each of in[0..taps) and
 * the packed block (bias, weight pairs); multiplier/shift point at 16 values.
 * The channel tail is staged through 16-byte buffers, so blocks always read
 * and write 16 whole bytes and never past the caller's tensors; the staging
 * copies are inline moves, and the tail's parameters are set up once a call.
 */
#ifndef EDGE_Q8_DWCONV_PIXELS_H
#define EDGE_Q8_DWCONV_PIXELS_H

#include <string.h>

#include "q8-dwconv.h"

/* Copies the n < 16 bytes of a channel tail without a call: overlapping
 * 8-byte (or 4-byte) moves that read and write only [0, n). */
static inline void copy_tail(uint8_t* dst, const uint8_t* src, size_t n) {
  if (n >= 8) {
    uint64_t head, tail;
    memcpy(&head, src, 8);
    memcpy(&tail, src + n - 8, 8);
    memcpy(dst, &head, 8);
    memcpy(dst + n - 8, &tail, 8);
  } else if (n >= 4) {
    uint32_t head, tail;
    memcpy(&head, src, 4);
    memcpy(&tail, src + n - 4, 4);
    memcpy(dst, &head, 4);
    memcpy(dst + n - 4, &tail, 4);
  } else {
    for (size_t i = 0; i < n; i++) dst[i] = src[i];
  }
}

EDGE_Q8_DWCONV_INLINE void dwconv_pixels(size_t taps, size_t pixels, size_t channels, const uint8_t* const* input,
                                 const uint8_t* zero, const void* packed, uint8_t* output, size_t output_stride,
                                 const edge_q8_dwconv_params* params) {
  const size_t block_bytes = edge_q8_dwconv_block_bytes(taps);
  const size_t full = channels - channels % EDGE_Q8_DWCONV_CB;
  const size_t rest = channels - full;
  const uint8_t* in[EDGE_Q8_DWCONV_MAX_TAPS];
  /* The tail's staging, set up once per call: its padded channels (zero
   * weights) keep whatever bytes, and any valid requantization parameters. */
  uint8_t staged[EDGE_Q8_DWCONV_MAX_TAPS][EDGE_Q8_DWCONV_CB];
  uint8_t out[EDGE_Q8_DWCONV_CB];
  int32_t multiplier[EDGE_Q8_DWCONV_CB], shift[EDGE_Q8_DWCONV_CB];
  if (rest != 0) {
    memset(staged, 0, taps * EDGE_Q8_DWCONV_CB);
    for (size_t c = 0; c < EDGE_Q8_DWCONV_CB; c++) {
      multiplier[c] = c < rest ? params->multiplier[full + c] : INT32_C(1) << 30;
      shift[c] = c < rest ? params->shift[full + c] : 31;
    }
  }
  for (size_t px = 0; px < pixels; px++, input += taps, output += output_stride) {
    const uint8_t* block = (const uint8_t*) packed;
    for (size_t c0 = 0; c0 < full; c0 += EDGE_Q8_DWCONV_CB, block += block_bytes) {
      for (size_t t = 0; t < taps; t++) in[t] = input[t] == zero ? zero : input[t] + c0;
      dwconv_block(taps, in, block, params->multiplier + c0, params->shift + c0, output + c0, params);
    }
    if (rest != 0) {
      for (size_t t = 0; t < taps; t++) {
        copy_tail(staged[t], input[t] == zero ? zero : input[t] + full, rest);
        in[t] = staged[t];
      }
      dwconv_block(taps, in, block, multiplier, shift, out, params);
      copy_tail(output + full, out, rest);
    }
  }
}

#endif /* EDGE_Q8_DWCONV_PIXELS_H */
