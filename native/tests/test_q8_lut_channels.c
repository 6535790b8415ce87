/* edge_q8_lut_channels (per-channel lookup tables, a per-channel PRelu): every
 * ISA the machine runs, on the calling thread and on a pool of 3 threads,
 * bit-exact against the naive loop; argument errors. */
#include <stdlib.h>
#include <string.h>

#include "edge/ops.h"
#include "test_util.h"

static void check_shapes(edge_threadpool* pool) {
  static const size_t kRows[] = {0, 1, 3, 17, 2116, 20000};
  static const size_t kChannels[] = {1, 3, 4, 5, 32, 131, 256};
  edge_isa isa;
  EDGE_FOR_EACH_ISA(isa) {
    for (size_t ri = 0; ri < EDGE_TEST_COUNT(kRows); ri++) {
      for (size_t ci = 0; ci < EDGE_TEST_COUNT(kChannels); ci++) {
        const size_t rows = kRows[ri], channels = kChannels[ci];
        if (rows * channels > 600000) continue;
        const size_t n = rows * channels;
        uint8_t* tables = (uint8_t*) malloc(channels * 256);
        uint8_t* x = (uint8_t*) malloc(n + 1);
        uint8_t* y = (uint8_t*) malloc(n + 1);
        edge_test_fill_u8(tables, channels * 256, 0, 255);
        edge_test_fill_u8(x, n + 1, 0, 255);
        y[n] = 0xA5; /* a guard byte after the output */
        EDGE_CHECK_OK(edge_q8_lut_channels(rows, channels, tables, x, y, pool));
        int ok = y[n] == 0xA5;
        for (size_t i = 0; i < n && ok; i++) ok = y[i] == tables[(i % channels) * 256 + x[i]];
        EDGE_CHECK(ok, "rows %zu channels %zu pool %d", rows, channels, pool != NULL);
        free(tables);
        free(x);
        free(y);
      }
    }
  }
}

static void check_errors(void) {
  uint8_t table[256] = {0}, x[4] = {0}, y[4];
  EDGE_CHECK(edge_q8_lut_channels(1, 1, NULL, x, y, NULL) == EDGE_ERR_INVALID_ARGUMENT, "NULL tables");
  EDGE_CHECK(edge_q8_lut_channels(1, 1, table, NULL, y, NULL) == EDGE_ERR_INVALID_ARGUMENT, "NULL x");
  EDGE_CHECK(edge_q8_lut_channels(1, 1, table, x, NULL, NULL) == EDGE_ERR_INVALID_ARGUMENT, "NULL y");
  EDGE_CHECK_OK(edge_q8_lut_channels(0, 4, NULL, NULL, NULL, NULL)); /* nothing to do */
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
