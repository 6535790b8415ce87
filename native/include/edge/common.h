/* Common types of the edge kernels: status codes, ISA selection, thread pool.
 *
 * Every public function returns an edge_status and never aborts. On failure a
 * human-readable detail (which argument, which channel, ...) is kept per
 * thread and read with edge_last_error().
 *
 * This header is parsed by cffi as well as by C compilers: declarations only,
 * no macros or inline code between the guards.
 */
#ifndef EDGE_COMMON_H
#define EDGE_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum edge_status {
  EDGE_OK = 0,
  EDGE_ERR_INVALID_ARGUMENT = 1, /* null pointer, bad enum value, bad parameter range */
  EDGE_ERR_SHAPE = 2,            /* dimensions that do not fit together */
  EDGE_ERR_ALIGNMENT = 3,        /* a buffer that must be 64-byte aligned is not */
  EDGE_ERR_NOT_2_4_SPARSE = 4,   /* weights with more than 2 non-zeros in a group of 4 */
  EDGE_ERR_UNSUPPORTED_ISA = 5,  /* an ISA this CPU (or this build) cannot run */
  EDGE_ERR_OUT_OF_MEMORY = 6,
  EDGE_ERR_PACKED_FORMAT = 7     /* packed weights of another layout, version or ISA */
} edge_status;

/* Instruction-set paths. Order matters only within one architecture. */
typedef enum edge_isa {
  EDGE_ISA_SCALAR = 0,     /* portable C, the production fallback */
  EDGE_ISA_AVX2 = 1,       /* x86-64 AVX2 + FMA */
  EDGE_ISA_AVX512VNNI = 2, /* x86-64 AVX-512 F/BW/VL/VNNI/VBMI (Ice Lake, Zen 4 and later) */
  EDGE_ISA_NEON = 3,       /* arm64 Advanced SIMD without dot product (Cortex-A72, A57) */
  EDGE_ISA_NEONDOT = 4     /* arm64 with SDOT/UDOT (Cortex-A76, A78) */
} edge_isa;

/* Element types of quantized tensors. */
typedef enum edge_dtype {
  EDGE_DTYPE_U8 = 0,
  EDGE_DTYPE_S8 = 1,
  EDGE_DTYPE_S32 = 2,
  EDGE_DTYPE_F32 = 3
} edge_dtype;

const char* edge_status_string(edge_status status);
/* Detail of the last failure on the calling thread ("" when none). */
const char* edge_last_error(void);
/* Version of the compiled library, checked by the Python binding at import. */
const char* edge_version(void);

/* ISA selection. The active ISA starts as the best one detected, unless the
 * EDGE_ISA environment variable names another (scalar, avx2, avx512vnni, neon,
 * neondot). edge_isa_set refuses an ISA the CPU or the build cannot run. */
int edge_isa_supported(edge_isa isa);
edge_isa edge_isa_detect(void);
edge_isa edge_isa_get(void);
edge_status edge_isa_set(edge_isa isa);
const char* edge_isa_name(edge_isa isa);

/* A pthread pool whose idle workers spin for up to 50 us, then sleep (no CPU
 * use when idle). Kernels take a pool argument; NULL
 * runs on the calling thread. One pool serves one caller at a time: calls
 * from several threads into the same pool are serialized by the pool. */
typedef struct edge_threadpool edge_threadpool;
edge_status edge_threadpool_create(int32_t num_threads, edge_threadpool** out_pool);
void edge_threadpool_destroy(edge_threadpool* pool);
int32_t edge_threadpool_size(const edge_threadpool* pool);

/* Integer requantization shared by every quantized kernel (DESIGN section 4):
 *   out = clamp((acc * multiplier + 2^(shift-1)) >> shift, min - zp, max - zp) + zp
 * computed with a 64-bit product and an arithmetic shift, so every ISA gives
 * the same bits. multiplier is in [2^30, 2^31) and shift in [31, 62]: real
 * scales in [2^-32, 1). edge_requant_from_scale converts a real scale. */
edge_status edge_requant_from_scale(double scale, int32_t* multiplier, int32_t* shift);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_COMMON_H */
