/* The pixel and channel loops every depthwise micro-kernel shares, around the
 * ISA's 16-channel block. Included by each ISA header (q8-dwconv-<isa>.h)
 * after it defines
 *
 *   typedef ... dwconv_constants;   the requantization constants of one block
 *   void dwconv_constants_init(dwconv_constants* k, const int32_t* multiplier, const int32_t* shift);
 *   EDGE_Q8_DWCONV_INLINE void dwconv_block(size_t taps, const uint8_t* const* in, const uint8_t* block,
 *                                   const dwconv_constants* k, uint8_t* out,
 *                                   const edge_q8_dwconv_params* params);
 *
 * dwconv_block computes 16 output channels from 16 bytes at each of
 * in[0..taps) and the packed block (bias, weight pairs); multiplier/shift of
 * the init point at 16 values. Blocks are the outer loop, so each block's
 * constants are set up once for all the pixels of the call.
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
  const uint8_t* block = (const uint8_t*) packed;
  dwconv_constants k;
  for (size_t c0 = 0; c0 < full; c0 += EDGE_Q8_DWCONV_CB, block += block_bytes) {
    dwconv_constants_init(&k, params->multiplier + c0, params->shift + c0);
    const uint8_t* const* taps_of = input;
    uint8_t* out = output + c0;
    for (size_t px = 0; px < pixels; px++, taps_of += taps, out += output_stride) {
      for (size_t t = 0; t < taps; t++) in[t] = taps_of[t] == zero ? zero : taps_of[t] + c0;
      dwconv_block(taps, in, block, &k, out, params);
    }
  }
  if (rest == 0) return;
  /* The tail, staged: its padded channels (zero weights) keep whatever
   * bytes, and get any valid requantization parameters. */
  uint8_t staged[EDGE_Q8_DWCONV_MAX_TAPS][EDGE_Q8_DWCONV_CB];
  uint8_t out[EDGE_Q8_DWCONV_CB];
  int32_t multiplier[EDGE_Q8_DWCONV_CB], shift[EDGE_Q8_DWCONV_CB];
  memset(staged, 0, taps * EDGE_Q8_DWCONV_CB);
  for (size_t c = 0; c < EDGE_Q8_DWCONV_CB; c++) {
    multiplier[c] = c < rest ? params->multiplier[full + c] : INT32_C(1) << 30;
    shift[c] = c < rest ? params->shift[full + c] : 31;
  }
  dwconv_constants_init(&k, multiplier, shift);
  for (size_t px = 0; px < pixels; px++, input += taps, output += output_stride) {
    for (size_t t = 0; t < taps; t++) {
      copy_tail(staged[t], input[t] == zero ? zero : input[t] + full, rest);
      in[t] = staged[t];
    }
    dwconv_block(taps, in, block, &k, out, params);
    copy_tail(output + full, out, rest);
  }
}

#endif /* EDGE_Q8_DWCONV_PIXELS_H */
