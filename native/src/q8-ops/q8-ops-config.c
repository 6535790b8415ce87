/* Per-ISA micro-kernel tables of the q8-ops family. neondot has nothing to
 * gain from SDOT here and runs the neon kernels; avx512vnni reuses the AVX2
 * max/sum/dequantize loops, which are bound by loads, not by vector width. */
#include "q8-ops/q8-ops.h"

static const edge_q8_ops_config scalar_config = {
    .vadd = edge_q8_vadd_rndnu_ukernel__scalar,
    .vmul = edge_q8_vmul_rndnu_ukernel__scalar,
    .lut = edge_q8_lut_ukernel__scalar,
    .vmax = edge_q8_vmax_ukernel__scalar,
    .vsum = edge_q8_vsum_ukernel__scalar,
    .quantize = edge_f32_q8_quantize_ukernel__scalar,
    .dequantize = edge_q8_f32_dequantize_ukernel__scalar,
};

#if defined(__x86_64__) || defined(_M_X64)
static const edge_q8_ops_config avx2_config = {
    .vadd = edge_q8_vadd_rndnu_ukernel__avx2,
    .vmul = edge_q8_vmul_rndnu_ukernel__avx2,
    .lut = edge_q8_lut_ukernel__avx2,
    .vmax = edge_q8_vmax_ukernel__avx2,
    .vsum = edge_q8_vsum_ukernel__avx2,
    .quantize = edge_f32_q8_quantize_ukernel__avx2,
    .dequantize = edge_q8_f32_dequantize_ukernel__avx2,
};

static const edge_q8_ops_config avx512vnni_config = {
    .vadd = edge_q8_vadd_rndnu_ukernel__avx512vnni,
    .vmul = edge_q8_vmul_rndnu_ukernel__avx512vnni,
    .lut = edge_q8_lut_ukernel__avx512vnni,
    .vmax = edge_q8_vmax_ukernel__avx2,
    .vsum = edge_q8_vsum_ukernel__avx2,
    .quantize = edge_f32_q8_quantize_ukernel__avx512vnni,
    .dequantize = edge_q8_f32_dequantize_ukernel__avx2,
};
#endif

#if defined(__aarch64__)
static const edge_q8_ops_config neon_config = {
    .vadd = edge_q8_vadd_rndnu_ukernel__neon,
    .vmul = edge_q8_vmul_rndnu_ukernel__neon,
    .lut = edge_q8_lut_ukernel__neon,
    .vmax = edge_q8_vmax_ukernel__neon,
    .vsum = edge_q8_vsum_ukernel__neon,
    .quantize = edge_f32_q8_quantize_ukernel__neon,
    .dequantize = edge_q8_f32_dequantize_ukernel__neon,
};
#endif

const edge_q8_ops_config* edge_q8_ops_config_get(void) {
  switch (edge_isa_get()) {
#if defined(__x86_64__) || defined(_M_X64)
    case EDGE_ISA_AVX2: return &avx2_config;
    case EDGE_ISA_AVX512VNNI: return &avx512vnni_config;
#endif
#if defined(__aarch64__)
    case EDGE_ISA_NEON:
    case EDGE_ISA_NEONDOT: return &neon_config;
#endif
    default: return &scalar_config;
  }
}
