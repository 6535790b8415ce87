/* Status strings and the per-thread error detail. */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

#ifndef EDGE_VERSION
#define EDGE_VERSION "0.0.0+unknown"
#endif

static _Thread_local char last_error[512];

const char* edge_version(void) { return EDGE_VERSION; }

const char* edge_status_string(edge_status status) {
  switch (status) {
    case EDGE_OK: return "ok";
    case EDGE_ERR_INVALID_ARGUMENT: return "invalid argument";
    case EDGE_ERR_SHAPE: return "shape mismatch";
    case EDGE_ERR_ALIGNMENT: return "misaligned buffer";
    case EDGE_ERR_NOT_2_4_SPARSE: return "weights are not 2:4 sparse";
    case EDGE_ERR_UNSUPPORTED_ISA: return "unsupported instruction set";
    case EDGE_ERR_OUT_OF_MEMORY: return "out of memory";
    case EDGE_ERR_PACKED_FORMAT: return "packed weights of an unknown format";
  }
  return "unknown status";
}

const char* edge_last_error(void) { return last_error; }

void edge_clear_error(void) { last_error[0] = '\0'; }

edge_status edge_fail(edge_status status, const char* format, ...) {
  va_list args;
  va_start(args, format);
  vsnprintf(last_error, sizeof(last_error), format, args);
  va_end(args);
  return status;
}

int32_t edge_dtype_min(edge_dtype dtype) { return dtype == EDGE_DTYPE_U8 ? 0 : -128; }
int32_t edge_dtype_max(edge_dtype dtype) { return dtype == EDGE_DTYPE_U8 ? 255 : 127; }

edge_status edge_check_q8_dtype(edge_dtype dtype, const char* what) {
  if (dtype != EDGE_DTYPE_U8 && dtype != EDGE_DTYPE_S8) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s must be u8 or s8 (got dtype %d)", what, (int) dtype);
  }
  return EDGE_OK;
}

edge_status edge_check_requant(const edge_q8_requant* rq, int32_t n, edge_dtype c_dtype) {
  if (c_dtype == EDGE_DTYPE_S32) return EDGE_OK;
  edge_status status = edge_check_q8_dtype(c_dtype, "output dtype");
  if (status != EDGE_OK) return status;
  if (rq == NULL || rq->multiplier == NULL || rq->shift == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "u8/s8 output needs requantization parameters");
  }
  const int32_t lo = edge_dtype_min(c_dtype), hi = edge_dtype_max(c_dtype);
  if (rq->output_zero_point < lo || rq->output_zero_point > hi) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "output zero point %d outside [%d, %d]",
                     (int) rq->output_zero_point, (int) lo, (int) hi);
  }
  if (rq->output_min < lo || rq->output_max > hi || rq->output_min > rq->output_max) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "output clamp [%d, %d] not inside [%d, %d]",
                     (int) rq->output_min, (int) rq->output_max, (int) lo, (int) hi);
  }
  /* One branch-free pass (it vectorizes: a model's convolutions check thousands of channels
   * per run), then the first bad channel only when there is one. */
  int32_t bad = 0;
  for (int32_t i = 0; i < n; i++) {
    bad |= (rq->multiplier[i] < (INT32_C(1) << 30)) | (rq->shift[i] < 31) | (rq->shift[i] > 62);
  }
  for (int32_t i = 0; bad && i < n; i++) {
    if (rq->multiplier[i] < (INT32_C(1) << 30) || rq->shift[i] < 31 || rq->shift[i] > 62) {
      return edge_fail(EDGE_ERR_INVALID_ARGUMENT,
                       "requantization of channel %d: multiplier %d must be in [2^30, 2^31) and shift %d in [31, 62]",
                       (int) i, (int) rq->multiplier[i], (int) rq->shift[i]);
    }
  }
  return EDGE_OK;
}
