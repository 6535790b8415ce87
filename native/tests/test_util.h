/* Helpers for the C kernel tests: a deterministic RNG, aligned buffers, a loop
 * over every ISA this machine (or qemu CPU) can run, and failure counting.
 *
 * A test file defines tests as functions and calls them from main() through
 * EDGE_RUN_ON_ALL_ISAS, then returns edge_test_summary(). */
#ifndef EDGE_TEST_UTIL_H
#define EDGE_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "edge_kernels.h"

extern int edge_test_failures;
extern int edge_test_checks;

/* xorshift64*: same sequence on every platform. */
uint64_t edge_test_rand(void);
void edge_test_seed(uint64_t seed);
int32_t edge_test_rand_range(int32_t lo, int32_t hi); /* inclusive */
void edge_test_fill_u8(uint8_t* p, size_t n, int32_t lo, int32_t hi);
void edge_test_fill_s8(int8_t* p, size_t n, int32_t lo, int32_t hi);
void* edge_test_aligned_alloc(size_t size); /* 64-byte aligned, zeroed; free with free() */

/* The rows of the generated shape tables (generated/<family>-shapes.h, from
 * native/kernels.json by gen_kernel_tests.py); tile names the kernel tile
 * whose edges the shape tests. */
typedef struct edge_test_gemm_shape {
  int32_t m, n, k;
  const char* tile;
} edge_test_gemm_shape;

typedef struct edge_test_dwconv_shape {
  int32_t kernel, channels; /* kernel x kernel taps */
  const char* tile;
} edge_test_dwconv_shape;

#define EDGE_TEST_COUNT(x) (sizeof(x) / sizeof((x)[0]))

/* Every ISA the machine runs, scalar first. Returns the count. */
int edge_test_isas(edge_isa* out, int capacity);
int edge_test_summary(const char* name);

#define EDGE_CHECK(cond, ...)                                       \
  do {                                                              \
    edge_test_checks++;                                             \
    if (!(cond)) {                                                  \
      edge_test_failures++;                                         \
      if (edge_test_failures <= 20) {                               \
        fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
        fprintf(stderr, __VA_ARGS__);                               \
        fprintf(stderr, " [isa %s]\n", edge_isa_name(edge_isa_get())); \
      }                                                             \
    }                                                               \
  } while (0)

#define EDGE_CHECK_OK(expr)                                                       \
  do {                                                                            \
    edge_status _s = (expr);                                                      \
    EDGE_CHECK(_s == EDGE_OK, "%s -> %s (%s)", #expr, edge_status_string(_s), edge_last_error()); \
  } while (0)

/* Runs body once per supported ISA with that ISA active. */
#define EDGE_FOR_EACH_ISA(isa_var)                                          \
  edge_isa _isas[8];                                                        \
  int _n_isas = edge_test_isas(_isas, 8);                                   \
  for (int _i = 0; _i < _n_isas && (edge_isa_set(isa_var = _isas[_i]) == EDGE_OK); _i++)

#endif /* EDGE_TEST_UTIL_H */
