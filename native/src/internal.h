/* Internal helpers shared by the kernel families. Not part of the public API. */
#ifndef EDGE_INTERNAL_H
#define EDGE_INTERNAL_H

#include <stdint.h>
#include <stddef.h>

#include "edge_kernels.h"

#define EDGE_ALIGNMENT 64
#define EDGE_IS_ALIGNED(ptr) ((((uintptr_t) (ptr)) & (EDGE_ALIGNMENT - 1)) == 0)
#define EDGE_ROUND_UP(x, m) ((((x) + (m) - 1) / (m)) * (m))
#define EDGE_MIN(a, b) ((a) < (b) ? (a) : (b))
#define EDGE_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Records a printf-style detail for edge_last_error() and returns status. */
edge_status edge_fail(edge_status status, const char* format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Clears the detail: called by public entry points on success paths that
 * earlier failures on the same thread must not leak into. */
void edge_clear_error(void);

/* Packs dense GEMM weights (edge_q8_gemm's layout, zero bias) straight from u8/s8 codes:
 * W[c][i] = floor(((code - zero_point) * reciprocal + 2^15) / 2^16), code at
 * c * n_stride + i * k_stride. reciprocal = 2^16 keeps the codes' differences as they
 * are, which must then lie in [-127, 127]; otherwise round(127 * 2^16 / max|code -
 * zero_point|), which maps them into [-127, 127].
 * packed: 64-byte aligned, edge_q8_gemm_packed_size(n, k) bytes. No argument checks:
 * for drivers that pack activations per call (attention). */
void edge_q8_gemm_pack_codes(int32_t n, int32_t k, const uint8_t* codes, size_t n_stride, size_t k_stride,
                             int is_signed, int32_t zero_point, int32_t reciprocal, void* packed);

/* Run fn(context, i) for every i in [0, count) on the pool (or inline when
 * pool is NULL or count is 1). Returns when every call has finished. */
typedef void (*edge_task_fn)(void* context, size_t index);
void edge_parallelize(edge_threadpool* pool, edge_task_fn fn, void* context, size_t count);

/* Units of work per task when `n` units are split over the pool: at least
 * min_units (below that, waking a worker costs more than the work), a
 * multiple of align, and at most EDGE_TASKS_PER_THREAD tasks per thread (a
 * few per thread, so a thread slowed by another process does not hold up the
 * step). n itself (one task, on the calling thread) without a pool. */
#define EDGE_TASKS_PER_THREAD 4
size_t edge_task_units(const edge_threadpool* pool, size_t n, size_t min_units, size_t align);
/* The fewest elements of one task of an element-wise step (add, lut, quantize, a pool's outputs times
 * its window): a few microseconds of work, against about one to wake a spinning worker. */
#define EDGE_MIN_TASK_ELEMENTS 16384

/* The requantization rule of edge/common.h, scalar. The SIMD paths must give
 * the same bits. acc * multiplier needs 64 bits; shift is in [31, 62]. */
static inline int32_t edge_requantize(int32_t acc, int32_t multiplier, int32_t shift,
                                      int32_t zero_point, int32_t out_min, int32_t out_max) {
  const int64_t product = (int64_t) acc * (int64_t) multiplier;
  const int64_t rounding = INT64_C(1) << (shift - 1);
  /* Arithmetic right shift of a signed value: implementation-defined in C
   * but arithmetic on every compiler we build with (gcc, clang). */
  int64_t scaled = (product + rounding) >> shift;
  const int64_t lo = (int64_t) out_min - zero_point;
  const int64_t hi = (int64_t) out_max - zero_point;
  scaled = scaled < lo ? lo : scaled;
  scaled = scaled > hi ? hi : scaled;
  return (int32_t) scaled + zero_point;
}

/* Validation shared by the quantized entry points. */
edge_status edge_check_q8_dtype(edge_dtype dtype, const char* what);
edge_status edge_check_requant(const edge_q8_requant* rq, int32_t n, edge_dtype c_dtype);
int32_t edge_dtype_min(edge_dtype dtype);
int32_t edge_dtype_max(edge_dtype dtype);

#endif /* EDGE_INTERNAL_H */
