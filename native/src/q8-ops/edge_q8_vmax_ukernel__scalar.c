/* One max-pool window tap over the channels, scalar. */
#include "q8-ops/q8-ops.h"

void edge_q8_vmax_ukernel__scalar(size_t n, const uint8_t* x, uint8_t flip, uint8_t* y) {
  for (size_t i = 0; i < n; i++) {
    const uint8_t a = x[i] ^ flip, b = y[i] ^ flip;
    y[i] = (a > b ? a : b) ^ flip;
  }
}
