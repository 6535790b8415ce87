/* Per-ISA row micro-kernels of the f32-ops family (neondot runs the neon ones). */
#include "f32-ops/f32-ops.h"

static const edge_f32_ops_config scalar_config = {
    .softmax = edge_f32_softmax_ukernel__scalar,
    .layernorm = edge_f32_layernorm_ukernel__scalar,
};

#if defined(__x86_64__) || defined(_M_X64)
static const edge_f32_ops_config avx2_config = {
    .softmax = edge_f32_softmax_ukernel__avx2,
    .layernorm = edge_f32_layernorm_ukernel__avx2,
};
static const edge_f32_ops_config avx512vnni_config = {
    .softmax = edge_f32_softmax_ukernel__avx512vnni,
    .layernorm = edge_f32_layernorm_ukernel__avx512vnni,
};
#endif

#if defined(__aarch64__)
static const edge_f32_ops_config neon_config = {
    .softmax = edge_f32_softmax_ukernel__neon,
    .layernorm = edge_f32_layernorm_ukernel__neon,
};
#endif

const edge_f32_ops_config* edge_f32_ops_config_get(void) {
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
