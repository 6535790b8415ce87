/* One average-pool window tap over the channels, scalar. */
#include "q8-ops/q8-ops.h"

void edge_q8_vsum_ukernel__scalar(size_t n, const uint8_t* x, uint8_t flip, int32_t* acc) {
  for (size_t i = 0; i < n; i++) acc[i] += (int32_t) (x[i] ^ flip);
}
