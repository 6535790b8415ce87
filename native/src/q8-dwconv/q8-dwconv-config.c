/* Per-ISA table of depthwise micro-kernels. neondot has no depthwise benefit
 * from the dot product (one channel per lane), so it runs the NEON kernels. */
#include "q8-dwconv.h"

static const edge_q8_dwconv_config scalar_config = {
    edge_q8_qc8w_dwconv3x3_rndnu_ukernel_16c__scalar,
    edge_q8_qc8w_dwconv5x5_rndnu_ukernel_16c__scalar,
};

#if defined(__x86_64__) || defined(_M_X64)
static const edge_q8_dwconv_config avx2_config = {
    edge_q8_qc8w_dwconv3x3_rndnu_ukernel_16c__avx2,
    edge_q8_qc8w_dwconv5x5_rndnu_ukernel_16c__avx2,
};
static const edge_q8_dwconv_config avx512vnni_config = {
    edge_q8_qc8w_dwconv3x3_rndnu_ukernel_64c4__avx512vnni,
    edge_q8_qc8w_dwconv5x5_rndnu_ukernel_64c4__avx512vnni,
};
#endif

#if defined(__aarch64__)
static const edge_q8_dwconv_config neon_config = {
    edge_q8_qc8w_dwconv3x3_rndnu_ukernel_16c__neon,
    edge_q8_qc8w_dwconv5x5_rndnu_ukernel_16c__neon,
};
#endif

const edge_q8_dwconv_config* edge_q8_dwconv_get_config(edge_isa isa) {
  switch (isa) {
    case EDGE_ISA_SCALAR: return &scalar_config;
#if defined(__x86_64__) || defined(_M_X64)
    case EDGE_ISA_AVX2: return &avx2_config;
    case EDGE_ISA_AVX512VNNI: return &avx512vnni_config;
#endif
#if defined(__aarch64__)
    case EDGE_ISA_NEON:
    case EDGE_ISA_NEONDOT: return &neon_config;
#endif
    default: return NULL;
  }
}
