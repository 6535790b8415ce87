/* AVX-512 VNNI: vpdpbusd multiplies 4 u8 of A by 4 s8 weights and adds the
 * 4-way dot into each of 16 int32 lanes, which is exactly one 64-byte packed
 * group. s8 A is flipped to u8 with xor 0x80 (the driver corrects by 128 *
 * colsum). Tiles of up to 8 rows x 32 channels: 16 accumulators, 2 weight
 * vectors and one broadcast of A, out of 32 zmm registers; requantized and
 * stored to C straight from the accumulators.
 *
 * One call walks every row of its task down one 32-channel panel, so the
 * output stage's per-channel constants are set up once per panel: with the
 * small K of pointwise convolutions they would otherwise cost about as much
 * as the dot products. */
#include <immintrin.h>

#include "q8-gemm-avx512vnni.h"

/* All m rows of one panel; NB and SIGNED are constants at each call site. */
static inline __attribute__((always_inline)) void panel(size_t NB, int SIGNED, size_t m, size_t k,
                                                        const uint8_t* a, size_t a_stride, const int8_t* w,
                                                        size_t panel_stride, const int32_t* init,
                                                        const edge_q8_gemm_store* store) {
  edge_q8_vnni_output out;
  edge_q8_vnni_output_load(NB, store, &out);
  uint8_t* c = store->c;
  for (; m >= 8; m -= 8, a += 8 * a_stride, c += 8 * store->c_stride) {
    edge_q8_vnni_tile(8, NB, SIGNED, k, a, a_stride, w, panel_stride, init, store, &out, c);
  }
  switch (m) { /* the last 1-7 rows */
#define EDGE_VNNI_CASE(MR) \
  case MR: edge_q8_vnni_tile(MR, NB, SIGNED, k, a, a_stride, w, panel_stride, init, store, &out, c); break;
    EDGE_VNNI_CASE(1)
    EDGE_VNNI_CASE(2)
    EDGE_VNNI_CASE(3)
    EDGE_VNNI_CASE(4)
    EDGE_VNNI_CASE(5)
    EDGE_VNNI_CASE(6)
    EDGE_VNNI_CASE(7)
#undef EDGE_VNNI_CASE
    default: break;
  }
}

void edge_q8_qc8w_gemm_rndnu_ukernel_8x32c4__avx512vnni(size_t m, size_t nb, size_t k, const uint8_t* a,
                                                        size_t a_stride, int a_signed, const int8_t* w,
                                                        size_t panel_stride, const int32_t* init,
                                                        const edge_q8_gemm_store* store) {
  /* Specialized on the block count and signedness of A so every variant keeps
   * its accumulators in registers. */
  if (nb == 2) {
    if (a_signed) panel(2, 1, m, k, a, a_stride, w, panel_stride, init, store);
    else panel(2, 0, m, k, a, a_stride, w, panel_stride, init, store);
  } else {
    if (a_signed) panel(1, 1, m, k, a, a_stride, w, panel_stride, init, store);
    else panel(1, 0, m, k, a, a_stride, w, panel_stride, init, store);
  }
}
