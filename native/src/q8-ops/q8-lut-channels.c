/* Per-channel lookup tables: y[r][c] = tables[c][x[r][c]] over rows x channels
 * bytes (NHWC pixels, or the rows of a [batch, features] matrix).
 *
 * The plan runs a per-channel PRelu this way (one 256-entry table per channel,
 * built from the float op on every input code, so the int8 step gives the bits
 * of dequantize -> PRelu -> quantize exactly). The loop is portable C: a byte
 * gather has no faster SIMD form on AVX2 than the scalar loads (and the same
 * bits on every ISA by construction). Split over the pool by rows. */
#include "q8-ops/q8-ops.h"

typedef struct lut_channels_job {
  size_t rows, channels, rows_per_task;
  const uint8_t* tables;
  const uint8_t* x;
  uint8_t* y;
} lut_channels_job;

static void lut_channels_rows(size_t rows, size_t channels, const uint8_t* tables, const uint8_t* x, uint8_t* y) {
  for (size_t r = 0; r < rows; r++) {
    const uint8_t* xr = x + r * channels;
    uint8_t* yr = y + r * channels;
    const uint8_t* t = tables;
    size_t c = 0;
    for (; c + 4 <= channels; c += 4, t += 4 * 256) {
      const uint8_t v0 = t[xr[c]], v1 = t[256 + xr[c + 1]], v2 = t[512 + xr[c + 2]], v3 = t[768 + xr[c + 3]];
      yr[c] = v0;
      yr[c + 1] = v1;
      yr[c + 2] = v2;
      yr[c + 3] = v3;
    }
    for (; c < channels; c++, t += 256) yr[c] = t[xr[c]];
  }
}

static void lut_channels_task(void* context, size_t index) {
  const lut_channels_job* j = (const lut_channels_job*) context;
  const size_t r0 = index * j->rows_per_task;
  const size_t rows = EDGE_MIN(j->rows_per_task, j->rows - r0);
  lut_channels_rows(rows, j->channels, j->tables, j->x + r0 * j->channels, j->y + r0 * j->channels);
}

edge_status edge_q8_lut_channels(size_t rows, size_t channels, const uint8_t* tables, const void* x, void* y,
                                 edge_threadpool* pool) {
  if (rows == 0 || channels == 0) return EDGE_OK;
  if (tables == NULL || x == NULL || y == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_lut_channels: tables, x and y must not be NULL");
  }
  lut_channels_job j = {rows, channels, rows, tables, (const uint8_t*) x, (uint8_t*) y};
  const size_t units = edge_task_units(pool, rows * channels, EDGE_MIN_TASK_ELEMENTS, channels);
  j.rows_per_task = EDGE_MAX((size_t) 1, units / channels);
  edge_parallelize(pool, lut_channels_task, &j, (rows + j.rows_per_task - 1) / j.rows_per_task);
  return EDGE_OK;
}
