/* Per-ISA micro-kernel table of the 2:4-sparse GEMM. */
#include "q8-gemm24/q8-gemm24.h"

static const edge_q8_gemm24_config scalar_config = {edge_q8_qc8w24_gemm_rndnu_ukernel_4x16c8__scalar, 4, 0};
#if defined(__x86_64__) || defined(_M_X64)
static const edge_q8_gemm24_config avx2_config = {edge_q8_qc8w24_gemm_rndnu_ukernel_4x16c8__avx2, 4, 0};
static const edge_q8_gemm24_config avx512vnni_config = {edge_q8_qc8w24_gemm_rndnu_ukernel_8x16c8__avx512vnni, 8, 0};
#endif
#if defined(__aarch64__)
static const edge_q8_gemm24_config neon_config = {edge_q8_qc8w24_gemm_rndnu_ukernel_2x16c8__neon, 2, 1};
static const edge_q8_gemm24_config neondot_config = {edge_q8_qc8w24_gemm_rndnu_ukernel_4x16c8__neondot, 4, 1};
#endif

const edge_q8_gemm24_config* edge_q8_gemm24_get_config(edge_isa isa) {
  switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case EDGE_ISA_AVX2: return &avx2_config;
    case EDGE_ISA_AVX512VNNI: return &avx512vnni_config;
#endif
#if defined(__aarch64__)
    case EDGE_ISA_NEON: return &neon_config;
    case EDGE_ISA_NEONDOT: return &neondot_config;
#endif
    default: return &scalar_config;
  }
}
