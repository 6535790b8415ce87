#include "test_util.h"

#include <string.h>

int edge_test_failures = 0;
int edge_test_checks = 0;
static uint64_t state = 0x9E3779B97F4A7C15ull;

void edge_test_seed(uint64_t seed) { state = seed ? seed : 0x9E3779B97F4A7C15ull; }

uint64_t edge_test_rand(void) {
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return state * 0x2545F4914F6CDD1Dull;
}

int32_t edge_test_rand_range(int32_t lo, int32_t hi) {
  return lo + (int32_t) (edge_test_rand() % (uint64_t) (hi - lo + 1));
}

void edge_test_fill_u8(uint8_t* p, size_t n, int32_t lo, int32_t hi) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t) edge_test_rand_range(lo, hi);
}

void edge_test_fill_s8(int8_t* p, size_t n, int32_t lo, int32_t hi) {
  for (size_t i = 0; i < n; i++) p[i] = (int8_t) edge_test_rand_range(lo, hi);
}

void* edge_test_aligned_alloc(size_t size) {
  void* p = NULL;
  if (posix_memalign(&p, 64, size == 0 ? 64 : size) != 0) return NULL;
  memset(p, 0, size == 0 ? 64 : size);
  return p;
}

int edge_test_isas(edge_isa* out, int capacity) {
  int n = 0;
  for (int i = EDGE_ISA_SCALAR; i <= EDGE_ISA_NEONDOT && n < capacity; i++) {
    if (edge_isa_supported((edge_isa) i)) out[n++] = (edge_isa) i;
  }
  return n;
}

int edge_test_summary(const char* name) {
  edge_isa isas[8];
  int n = edge_test_isas(isas, 8);
  printf("%s: %d checks, %d failed; ISAs:", name, edge_test_checks, edge_test_failures);
  for (int i = 0; i < n; i++) printf(" %s", edge_isa_name(isas[i]));
  printf("\n");
  return edge_test_failures == 0 ? 0 : 1;
}
