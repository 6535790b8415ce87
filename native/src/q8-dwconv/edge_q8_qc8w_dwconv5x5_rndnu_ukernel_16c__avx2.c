/* Depthwise 5x5 micro-kernel, AVX2: the block and pixel loops are in
 * q8-dwconv-avx2.h. */
#include "q8-dwconv-avx2.h"

void edge_q8_qc8w_dwconv5x5_rndnu_ukernel_16c__avx2(size_t pixels, size_t channels, const uint8_t* const* input,
    const uint8_t* zero, const void* packed, uint8_t* output, size_t output_stride,
    const edge_q8_dwconv_params* params) {
  dwconv_pixels(25, pixels, channels, input, zero, packed, output, output_stride, params);
}
