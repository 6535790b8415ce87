/* Per-ISA table of the dense INT8 GEMM micro-kernels. */
#include "q8-gemm.h"

static const edge_q8_gemm_config scalar_config = {
    .gemm = edge_q8_qc8w_gemm_ukernel_4x16c4__scalar, .mr = 4, .nr = 16,
    .gemv = edge_q8_qc8w_gemm_ukernel_4x16c4__scalar, .gemv_nr = 16,
    .requant = edge_q8_vrequant_rndnu_ukernel__scalar,
    .a_offset_u8 = 0, .a_offset_s8 = 0,
};

#if defined(__x86_64__) || defined(_M_X64)
/* AVX2 widens both operands to 16 bits (vpmaddwd is exact), A as it is.
 * 7-bit weights take vpmaddubsw (u8 x s8, exact for |w| <= 63): s8 A is
 * flipped to u8 by xor 0x80 (+128). */
static const edge_q8_gemm_config avx2_config = {
    .gemm = edge_q8_qc8w_gemm_ukernel_4x16c4__avx2, .mr = 4, .nr = 16,
    .gemv = edge_q8_qc8w_gemm_ukernel_4x16c4__avx2, .gemv_nr = 16,
    .requant = edge_q8_vrequant_rndnu_ukernel__avx2,
    .a_offset_u8 = 0, .a_offset_s8 = 0,
    .gemm_w7 = edge_q8_qc7w_gemm_ukernel_4x16c4__avx2,
    .gemv_w7 = edge_q8_qc7w_gemm_ukernel_4x16c4__avx2,
    .a_offset_w7_u8 = 0, .a_offset_w7_s8 = 128,
};
/* vpdpbusd multiplies u8 by s8: s8 A is flipped to u8 by xor 0x80 (+128).
 * The kernels requantize from registers (measured faster than a tile pass). */
static const edge_q8_gemm_config avx512vnni_config = {
    .gemm_fused = edge_q8_qc8w_gemm_rndnu_ukernel_8x32c4__avx512vnni, .mr = 8, .nr = 32,
    .gemv_fused = edge_q8_qc8w_gemm_rndnu_ukernel_1x64c4__avx512vnni, .gemv_nr = 64,
    .a_offset_u8 = 0, .a_offset_s8 = 128,
};
#endif

#if defined(__aarch64__)
/* NEON multiplies s8 by s8: u8 A is flipped to s8 by xor 0x80 (-128). */
static const edge_q8_gemm_config neon_config = {
    .gemm = edge_q8_qc8w_gemm_ukernel_2x16c4__neon, .mr = 2, .nr = 16,
    .gemv = edge_q8_qc8w_gemm_ukernel_2x16c4__neon, .gemv_nr = 16,
    .requant = edge_q8_vrequant_rndnu_ukernel__neon,
    .a_offset_u8 = -128, .a_offset_s8 = 0,
};
static const edge_q8_gemm_config neondot_config = {
    .gemm = edge_q8_qc8w_gemm_ukernel_4x16c4__neondot, .mr = 4, .nr = 16,
    .gemv = edge_q8_qc8w_gemm_ukernel_4x16c4__neondot, .gemv_nr = 16,
    .requant = edge_q8_vrequant_rndnu_ukernel__neon,
    .a_offset_u8 = -128, .a_offset_s8 = 0,
};
#endif

const edge_q8_gemm_config* edge_q8_gemm_get_config(edge_isa isa) {
  switch (isa) {
    case EDGE_ISA_SCALAR: return &scalar_config;
#if defined(__x86_64__) || defined(_M_X64)
    case EDGE_ISA_AVX2: return &avx2_config;
    case EDGE_ISA_AVX512VNNI: return &avx512vnni_config;
#endif
#if defined(__aarch64__)
    case EDGE_ISA_NEON: return &neon_config;
    case EDGE_ISA_NEONDOT: return &neondot_config;
#endif
    default: return NULL;
  }
}
