/* Depthwise 3x3 micro-kernel, portable C (the production fallback): the block and pixel loops are in
 * q8-dwconv-scalar.h. */
#include "q8-dwconv-scalar.h"

void edge_q8_qc8w_dwconv3x3_rndnu_ukernel_16c__scalar(size_t pixels, size_t channels, const uint8_t* const* input,
    const uint8_t* zero, const void* packed, uint8_t* output, size_t output_stride,
    const edge_q8_dwconv_params* params) {
  dwconv_pixels(9, pixels, channels, input, zero, packed, output, output_stride, params);
}
