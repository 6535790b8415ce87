/* Real scale -> (multiplier, shift) of the requantization rule. */
#include <math.h>

#include "internal.h"

edge_status edge_requant_from_scale(double scale, int32_t* multiplier, int32_t* shift) {
  if (multiplier == NULL || shift == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "multiplier and shift must not be NULL");
  }
  if (!(scale >= 0x1p-32 && scale < 1.0)) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT,
                     "requantization scale %g outside [2^-32, 1): rescale the output (a larger output scale)", scale);
  }
  int exponent;
  const double fraction = frexp(scale, &exponent); /* scale = fraction * 2^exponent, fraction in [0.5, 1) */
  int64_t q = (int64_t) llround(fraction * (double) (INT64_C(1) << 31));
  int32_t s = 31 - exponent;
  if (q == (INT64_C(1) << 31)) { /* rounding carried into the next power of two */
    q >>= 1;
    s -= 1;
  }
  if (s < 31) { /* a scale a hair below 1 that rounded up to 1: keep the largest multiplier */
    q = INT32_MAX;
    s = 31;
  }
  if (s > 62) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "requantization scale %g too small", scale);
  }
  *multiplier = (int32_t) q;
  *shift = s;
  return EDGE_OK;
}
