/* The depthwise block of the micro-kernels, portable C (the production fallback):
 * edge_q8_qc8w_dwconv{3x3,5x5}_rndnu_ukernel_16c__scalar; included by
 * their two files.
 * Accumulation wraps mod 2^32 like the SIMD paths (unsigned arithmetic, no UB). */
#ifndef EDGE_Q8_DWCONV_SCALAR_H
#define EDGE_Q8_DWCONV_SCALAR_H

#include <string.h>

#include "q8-dwconv.h"

/* The requantization parameters of a 16-channel block. */
typedef struct dwconv_constants {
  const int32_t* multiplier;
  const int32_t* shift;
} dwconv_constants;

static inline void dwconv_constants_init(dwconv_constants* k, const int32_t* multiplier, const int32_t* shift) {
  k->multiplier = multiplier;
  k->shift = shift;
}

EDGE_Q8_DWCONV_INLINE void dwconv_block(size_t taps, const uint8_t* const* in, const uint8_t* block,
                                        const dwconv_constants* k, uint8_t* out,
                                        const edge_q8_dwconv_params* params) {
  int32_t bias[EDGE_Q8_DWCONV_CB];
  memcpy(bias, block, sizeof(bias));
  const int8_t* w = (const int8_t*) (block + sizeof(bias));
  for (size_t c = 0; c < EDGE_Q8_DWCONV_CB; c++) {
    uint32_t acc = (uint32_t) bias[c];
    for (size_t t = 0; t < taps; t++) {
      const int32_t x = params->x_signed ? (int32_t) (int8_t) in[t][c] : (int32_t) in[t][c];
      const int32_t wt = w[(t / 2) * (2 * EDGE_Q8_DWCONV_CB) + c * 2 + t % 2];
      acc += (uint32_t) ((x - params->x_zero_point) * wt);
    }
    out[c] = (uint8_t) edge_requantize((int32_t) acc, k->multiplier[c], k->shift[c], params->y_zero_point, params->y_min,
                                       params->y_max);
  }
}

#include "q8-dwconv-pixels.h"

#endif /* EDGE_Q8_DWCONV_SCALAR_H */
