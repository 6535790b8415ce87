/* Per-channel lookup tables: y[o][c][i] = tables[c][x[o][c][i]] over
 * outer x channels x inner bytes: NHWC pixels or a [batch, features] matrix
 * (inner = 1), or an NCHW map (inner = H * W).
 *
 * The plan runs a per-channel PRelu, and an element-wise op of a map and a
 * per-channel constant, this way (one 256-entry table per channel, built from
 * the float op on every input code, so the int8 step gives the bits of
 * dequantize -> op -> quantize exactly). inner = 1 is a portable loop (a byte
 * gather has no faster SIMD form on AVX2 than scalar loads, and gives the same
 * bits on every ISA by construction); inner > 1 runs each channel's run of
 * bytes through the active ISA's 256-entry table kernel. Split over the pool
 * by outer rows (inner = 1) or by (row, channel) runs. */
#include "q8-ops/q8-ops.h"

typedef struct lut_channels_job {
  size_t outer, channels, inner, per_task;
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

/* inner = 1: per_task rows of `channels` bytes. */
static void rows_task(void* context, size_t index) {
  const lut_channels_job* j = (const lut_channels_job*) context;
  const size_t r0 = index * j->per_task;
  const size_t rows = EDGE_MIN(j->per_task, j->outer - r0);
  lut_channels_rows(rows, j->channels, j->tables, j->x + r0 * j->channels, j->y + r0 * j->channels);
}

/* inner > 1: per_task runs of `inner` bytes, run k of channel k % channels. */
static void runs_task(void* context, size_t index) {
  const lut_channels_job* j = (const lut_channels_job*) context;
  const edge_q8_lut_ukernel_fn lut = edge_q8_ops_config_get()->lut;
  const size_t runs = j->outer * j->channels;
  const size_t k0 = index * j->per_task, k1 = EDGE_MIN(k0 + j->per_task, runs);
  for (size_t k = k0; k < k1; k++) {
    lut(j->inner, j->x + k * j->inner, j->tables + (k % j->channels) * 256, j->y + k * j->inner);
  }
}

edge_status edge_q8_lut_channels(size_t outer, size_t channels, size_t inner, const uint8_t* tables, const void* x,
                                 void* y, edge_threadpool* pool) {
  if (outer == 0 || channels == 0 || inner == 0) return EDGE_OK;
  if (tables == NULL || x == NULL || y == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_lut_channels: tables, x and y must not be NULL");
  }
  lut_channels_job j = {outer, channels, inner, 1, tables, (const uint8_t*) x, (uint8_t*) y};
  const size_t n = outer * channels * inner;
  if (inner == 1) {
    j.per_task = EDGE_MAX((size_t) 1, edge_task_units(pool, n, EDGE_MIN_TASK_ELEMENTS, channels) / channels);
    edge_parallelize(pool, rows_task, &j, (outer + j.per_task - 1) / j.per_task);
  } else {
    const size_t runs = outer * channels;
    j.per_task = EDGE_MAX((size_t) 1, edge_task_units(pool, n, EDGE_MIN_TASK_ELEMENTS, inner) / inner);
    edge_parallelize(pool, runs_task, &j, (runs + j.per_task - 1) / j.per_task);
  }
  return EDGE_OK;
}
