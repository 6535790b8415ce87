/* edge_q8_lut_channels (per-channel lookup tables: a per-channel PRelu, an op
 * with a per-channel constant): every ISA the machine runs, on the calling
 * thread and on a pool of 3 threads, channels last (inner = 1) and channels
 * first (inner > 1), bit-exact against the naive loop; argument errors. */
#include <stdlib.h>
#include <string.h>

#include "edge/ops.h"
#include "test_util.h"

static void check_shapes(edge_threadpool* pool) {
  static const size_t kOuter[] = {0, 1, 3, 17, 2116, 20000};
  static const size_t kChannels[] = {1, 3, 4, 5, 32, 131, 256};
  static const size_t kInner[] = {1, 2, 15, 64, 100, 6400};
  edge_isa isa;
  EDGE_FOR_EACH_ISA(isa) {
    for (size_t oi = 0; oi < EDGE_TEST_COUNT(kOuter); oi++) {
      for (size_t ci = 0; ci < EDGE_TEST_COUNT(kChannels); ci++) {
        for (size_t ii = 0; ii < EDGE_TEST_COUNT(kInner); ii++) {
          const size_t outer = kOuter[oi], channels = kChannels[ci], inner = kInner[ii];
          const size_t n = outer * channels * inner;
          if (n > 700000) continue;
          uint8_t* tables = (uint8_t*) malloc(channels * 256);
          uint8_t* x = (uint8_t*) malloc(n + 1);
          uint8_t* y = (uint8_t*) malloc(n + 1);
          edge_test_fill_u8(tables, channels * 256, 0, 255);
          edge_test_fill_u8(x, n + 1, 0, 255);
          y[n] = 0xA5; /* a guard byte after the output */
          EDGE_CHECK_OK(edge_q8_lut_channels(outer, channels, inner, tables, x, y, pool));
          int ok = y[n] == 0xA5;
          for (size_t i = 0; i < n && ok; i++) ok = y[i] == tables[(i / inner % channels) * 256 + x[i]];
          EDGE_CHECK(ok, "outer %zu channels %zu inner %zu pool %d", outer, channels, inner, pool != NULL);
          free(tables);
          free(x);
          free(y);
        }
      }
    }
  }
}

static void check_errors(void) {
  uint8_t table[256] = {0}, x[4] = {0}, y[4];
  EDGE_CHECK(edge_q8_lut_channels(1, 1, 1, NULL, x, y, NULL) == EDGE_ERR_INVALID_ARGUMENT, "NULL tables");
  EDGE_CHECK(edge_q8_lut_channels(1, 1, 1, table, NULL, y, NULL) == EDGE_ERR_INVALID_ARGUMENT, "NULL x");
  EDGE_CHECK(edge_q8_lut_channels(1, 1, 1, table, x, NULL, NULL) == EDGE_ERR_INVALID_ARGUMENT, "NULL y");
  EDGE_CHECK_OK(edge_q8_lut_channels(0, 4, 1, NULL, NULL, NULL, NULL)); /* nothing to do */
  EDGE_CHECK_OK(edge_q8_lut_channels(1, 4, 0, NULL, NULL, NULL, NULL));
}

int main(void) {
  edge_threadpool* pool = NULL;
  check_shapes(NULL);
  EDGE_CHECK_OK(edge_threadpool_create(3, &pool));
  check_shapes(pool);
  edge_threadpool_destroy(pool);
  check_errors();
  return edge_test_summary("test_q8_lut_channels");
}
