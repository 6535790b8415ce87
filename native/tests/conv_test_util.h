/* The random data of one conv2d test case, shared by test_q8_conv and
 * test_q8_conv24 (header-only: every test_*.c is its own executable). */
#ifndef EDGE_CONV_TEST_UTIL_H
#define EDGE_CONV_TEST_UTIL_H

#include <stdlib.h>

#include "test_util.h"

/* Shape of a conv2d case for failure messages: printf(CONV_TEST_FMT, CONV_TEST_ARGS(p)). */
#define CONV_TEST_FMT "in %dx%dx%d out_c %d k %dx%d s %dx%d d %dx%d pads %d,%d,%d,%d groups %d batch %d"
#define CONV_TEST_ARGS(p)                                                                                        \
  (p)->in_h, (p)->in_w, (p)->in_c, (p)->out_c, (p)->kernel_h, (p)->kernel_w, (p)->stride_h, (p)->stride_w,      \
      (p)->dilation_h, (p)->dilation_w, (p)->pad_top, (p)->pad_left, (p)->pad_bottom, (p)->pad_right,          \
      (p)->groups, (p)->batch

typedef struct {
  size_t y_size;  /* bytes of the output */
  size_t y_elem;  /* bytes of one output element */
  size_t n;       /* output channels */
  uint8_t* x;
  int8_t* w;      /* OIHW */
  int32_t* bias;
  int32_t* mult;  /* per-channel requantization */
  int32_t* shift;
  uint8_t* expected;  /* for the reference's output */
  uint8_t* y;
} conv_test_case;

/* Allocates the buffers of a case and fills, in this order (the random
 * stream the tests were written against): x, the weights (fill_weights, or
 * uniform in [-127, 127] when NULL), then bias, multiplier and shift per
 * output channel. */
static inline void conv_test_case_init(conv_test_case* c, const edge_conv2d_params* p, edge_dtype y_dtype,
                                       void (*fill_weights)(const edge_conv2d_params* p, int8_t* w)) {
  int32_t out_h = 0, out_w = 0;
  EDGE_CHECK_OK(edge_conv2d_output_size(p, &out_h, &out_w));
  const size_t x_size = (size_t) p->batch * p->in_h * p->in_w * p->in_c;
  const size_t w_size = (size_t) p->out_c * (p->in_c / p->groups) * p->kernel_h * p->kernel_w;
  c->y_elem = y_dtype == EDGE_DTYPE_S32 ? 4 : 1;
  c->y_size = (size_t) p->batch * out_h * out_w * p->out_c * c->y_elem;
  c->n = (size_t) p->out_c;
  c->x = edge_test_aligned_alloc(x_size);
  c->w = edge_test_aligned_alloc(w_size);
  c->bias = edge_test_aligned_alloc(c->n * sizeof(int32_t));
  c->mult = edge_test_aligned_alloc(c->n * sizeof(int32_t));
  c->shift = edge_test_aligned_alloc(c->n * sizeof(int32_t));
  c->expected = edge_test_aligned_alloc(c->y_size);
  c->y = edge_test_aligned_alloc(c->y_size);
  edge_test_fill_u8(c->x, x_size, 0, 255);
  if (fill_weights != NULL) {
    fill_weights(p, c->w);
  } else {
    edge_test_fill_s8(c->w, w_size, -127, 127);
  }
  for (size_t i = 0; i < c->n; i++) {
    c->bias[i] = edge_test_rand_range(-50000, 50000);
    c->mult[i] = (int32_t) ((1u << 30) + (uint32_t) (edge_test_rand() % (1u << 30)));
    c->shift[i] = edge_test_rand_range(38, 45);
  }
}

static inline void conv_test_case_free(conv_test_case* c) {
  free(c->x), free(c->w), free(c->bias), free(c->mult), free(c->shift), free(c->expected), free(c->y);
}

#endif /* EDGE_CONV_TEST_UTIL_H */
