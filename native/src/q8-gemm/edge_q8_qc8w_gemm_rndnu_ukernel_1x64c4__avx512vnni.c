/* AVX-512 VNNI for one row (M = 1): a matrix-vector product, bound by the
 * memory bandwidth of the weights. Four 16-channel panels are streamed side by
 * side so four independent accumulators hide the vpdpbusd latency; the result
 * is requantized and stored to C straight from them. */
#include <immintrin.h>

#include "q8-gemm-avx512vnni.h"

void edge_q8_qc8w_gemm_rndnu_ukernel_1x64c4__avx512vnni(size_t mr, size_t nb, size_t k, const uint8_t* a,
                                                        size_t a_stride, int a_signed, const int8_t* w,
                                                        size_t panel_stride, const int32_t* init,
                                                        const edge_q8_gemm_store* store) {
#define EDGE_VNNI_CASE(NB)                                                                          \
  case NB: {                                                                                        \
    edge_q8_vnni_output out;                                                                        \
    edge_q8_vnni_output_load(NB, store, &out);                                                      \
    if (a_signed) edge_q8_vnni_tile(1, NB, 1, k, a, a_stride, w, panel_stride, init, store, &out, store->c); \
    else edge_q8_vnni_tile(1, NB, 0, k, a, a_stride, w, panel_stride, init, store, &out, store->c);          \
    break;                                                                                          \
  }
  (void) mr; /* always 1 */
  switch (nb) {
    EDGE_VNNI_CASE(1)
    EDGE_VNNI_CASE(2)
    EDGE_VNNI_CASE(3)
    EDGE_VNNI_CASE(4)
    default: break;
  }
#undef EDGE_VNNI_CASE
}
