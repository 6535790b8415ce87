/* AVX-512 VNNI: vpdpbusd multiplies 4 u8 of A by 4 s8 weights and adds the
 * 4-way dot into each of 16 int32 lanes, which is exactly one 64-byte packed
 * group. s8 A is flipped to u8 with xor 0x80 (the driver corrects by 128 *
 * colsum). Up to 8 rows x 32 channels: 16 accumulators, 2 weight vectors and
 * one broadcast of A, out of 32 zmm registers; requantized and stored to C
 * straight from the accumulators. */
#include <immintrin.h>

#include "q8-gemm-avx512vnni.h"

void edge_q8_qc8w_gemm_rndnu_ukernel_8x32c4__avx512vnni(size_t mr, size_t nb, size_t k, const uint8_t* a,
                                                        size_t a_stride, int a_signed, const int8_t* w,
                                                        size_t panel_stride, const int32_t* init,
                                                        const edge_q8_gemm_store* store) {
  /* Specialize on the row count, block count and signedness of A so every
   * variant keeps its accumulators in registers. */
#define EDGE_VNNI_CASE(MR)                                                                               \
  case MR:                                                                                               \
    if (nb == 2) {                                                                                       \
      if (a_signed) edge_q8_vnni_tile(MR, 2, 1, k, a, a_stride, w, panel_stride, init, store);           \
      else edge_q8_vnni_tile(MR, 2, 0, k, a, a_stride, w, panel_stride, init, store);                    \
    } else {                                                                                             \
      if (a_signed) edge_q8_vnni_tile(MR, 1, 1, k, a, a_stride, w, panel_stride, init, store);           \
      else edge_q8_vnni_tile(MR, 1, 0, k, a, a_stride, w, panel_stride, init, store);                    \
    }                                                                                                    \
    break;
  switch (mr) {
    EDGE_VNNI_CASE(1)
    EDGE_VNNI_CASE(2)
    EDGE_VNNI_CASE(3)
    EDGE_VNNI_CASE(4)
    EDGE_VNNI_CASE(5)
    EDGE_VNNI_CASE(6)
    EDGE_VNNI_CASE(7)
    EDGE_VNNI_CASE(8)
    default: break;
  }
#undef EDGE_VNNI_CASE
}
