/* f32-ops: softmax and layer norm on every ISA against double-precision loops.
 *
 * Tolerances (the contract of edge/ops.h):
 *   softmax:    |y - y_double| <= 1e-6 (outputs are in [0, 1])
 *   layer norm: |y - y_double| <= 1e-5 * max(1, |y_double|)
 */
#include <math.h>
#include <string.h>

#include "reference/q8-ops-reference.h"
#include "test_util.h"

#define SOFTMAX_ABS_TOL 1e-6
#define LAYERNORM_REL_TOL 1e-5

static const int32_t kSizes[] = {1, 2, 15, 16, 17, 63, 64, 65, 1000};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static float rand_float(float lo, float hi) {
  return lo + (hi - lo) * (float) ((double) (edge_test_rand() >> 11) * 0x1p-53);
}

static void test_softmax(void) {
  for (size_t s = 0; s < COUNT(kSizes); s++) {
    const int32_t cols = kSizes[s], rows = 3;
    const size_t n = (size_t) rows * cols;
    float* x = malloc(n * sizeof(float));
    float* y = malloc(n * sizeof(float));
    double* ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) x[i] = rand_float(-20.0f, 20.0f);
    x[0] = -1e30f; /* far below the max: exp underflows */
    if (n > 2) x[n / 2] = 80.0f; /* one dominant entry */
    edge_ref_f32_softmax(rows, cols, x, ref);
    edge_isa isa;
    EDGE_FOR_EACH_ISA(isa) {
      EDGE_CHECK_OK(edge_f32_softmax(rows, cols, x, y));
      double worst = 0.0;
      for (size_t i = 0; i < n; i++) { /* no fmax reduction: it crashes aarch64 gcc 12's vectorizer */
        const double e = fabs(y[i] - ref[i]);
        worst = e > worst ? e : worst;
      }
      EDGE_CHECK(worst <= SOFTMAX_ABS_TOL, "softmax cols %d: max abs error %g", (int) cols, worst);
    }
    free(x);
    free(y);
    free(ref);
  }
  float x[4] = {0};
  EDGE_CHECK(edge_f32_softmax(-1, 4, x, x) == EDGE_ERR_SHAPE, "negative rows");
  EDGE_CHECK(edge_f32_softmax(1, 4, NULL, x) == EDGE_ERR_INVALID_ARGUMENT, "NULL x");
  EDGE_CHECK_OK(edge_f32_softmax(1, 0, NULL, NULL));
}

static void test_layernorm(void) {
  for (size_t s = 0; s < COUNT(kSizes); s++) {
    const int32_t cols = kSizes[s], rows = 3;
    const size_t n = (size_t) rows * cols;
    float* x = malloc(n * sizeof(float));
    float* y = malloc(n * sizeof(float));
    float* gamma = malloc((size_t) cols * sizeof(float));
    float* beta = malloc((size_t) cols * sizeof(float));
    double* ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) x[i] = rand_float(-3.0f, 5.0f);
    for (int32_t i = 0; i < cols; i++) {
      gamma[i] = rand_float(0.5f, 2.0f);
      beta[i] = rand_float(-1.0f, 1.0f);
    }
    for (int affine = 0; affine < 4; affine++) {
      const float* g = affine & 1 ? gamma : NULL;
      const float* b = affine & 2 ? beta : NULL;
      edge_ref_f32_layernorm(rows, cols, x, g, b, 1e-5f, ref);
      edge_isa isa;
      EDGE_FOR_EACH_ISA(isa) {
        EDGE_CHECK_OK(edge_f32_layernorm(rows, cols, x, g, b, 1e-5f, y));
        double worst = 0.0;
        for (size_t i = 0; i < n; i++) {
          const double e = fabs(y[i] - ref[i]) / fmax(1.0, fabs(ref[i]));
          worst = e > worst ? e : worst;
        }
        EDGE_CHECK(worst <= LAYERNORM_REL_TOL, "layernorm cols %d affine %d: max rel error %g", (int) cols, affine,
                   worst);
      }
    }
    free(x);
    free(y);
    free(gamma);
    free(beta);
    free(ref);
  }
  float x[4] = {0};
  EDGE_CHECK(edge_f32_layernorm(1, 4, x, NULL, NULL, NAN, x) == EDGE_ERR_INVALID_ARGUMENT, "NaN epsilon");
  EDGE_CHECK(edge_f32_layernorm(1, 4, x, NULL, NULL, -1.0f, x) == EDGE_ERR_INVALID_ARGUMENT, "negative epsilon");
  EDGE_CHECK(edge_f32_layernorm(1, -4, x, NULL, NULL, 1e-5f, x) == EDGE_ERR_SHAPE, "negative cols");
  EDGE_CHECK(edge_f32_layernorm(1, 4, x, NULL, NULL, 1e-5f, NULL) == EDGE_ERR_INVALID_ARGUMENT, "NULL y");
}

int main(void) {
  test_softmax();
  test_layernorm();
  return edge_test_summary("test_f32_ops");
}
