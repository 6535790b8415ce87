/* 256-entry table lookup, scalar. */
#include "q8-ops/q8-ops.h"

void edge_q8_lut_ukernel__scalar(size_t n, const uint8_t* x, const uint8_t* table, uint8_t* y) {
  for (size_t i = 0; i < n; i++) y[i] = table[x[i]];
}
