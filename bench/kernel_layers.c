/* MobileNetV2's convolution shapes (and ResNet-18's first) through the public C API: the median time
 * of each layer over 200 calls, and a checksum of its output (two builds must
 * print the same checksums: the kernels are bit-exact).
 *
 *   cmake -S . -B build/host -DCMAKE_BUILD_TYPE=Release && cmake --build build/host --target edge_kernels
 *   cc -O2 -std=c11 -Inative/include bench/kernel_layers.c build/host/libedge_kernels.a -lpthread -lm \
 *      -o build/kernel_layers
 *   build/kernel_layers [THREADS]             # the active ISA; EDGE_ISA=avx2 forces the AVX2 path
 *
 * For an A/B of a kernel change, build the library at both commits (git
 * archive into two folders), link this file against each, and run the two
 * binaries alternately several times, keeping each layer's lowest median: on
 * a shared machine that is the least disturbed figure. BENCHMARKS.md
 * ("Kernel steps of MobileNetV2") reports such runs. Random u8 input, weights
 * in [-127, 127], per-channel multipliers in [2^30, 2^31), input zero point 5,
 * output zero point 3, no bias.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edge_kernels.h"

#define ITERS 200
#define WARMUP 20

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double) t.tv_sec + (double) t.tv_nsec * 1e-9;
}

static int compare(const void* a, const void* b) {
  const double x = *(const double*) a, y = *(const double*) b;
  return (x > y) - (x < y);
}

static void* aligned(size_t n) {
  void* p = NULL;
  if (posix_memalign(&p, 64, n + 64) != 0) abort();
  memset(p, 7, n + 64);
  return p;
}

static uint64_t state = 88172645463325252ull;
static uint32_t rnd(void) {
  state ^= state << 13, state ^= state >> 7, state ^= state << 17;
  return (uint32_t) state;
}

typedef enum { DENSE, DEPTHWISE } kind;
typedef struct layer {
  const char* name;
  kind kind;
  int32_t size, in_c, out_c, kernel, stride;
} layer;

static const layer kLayers[] = {
    {"conv 3x3 s2 224x224x3->32", DENSE, 224, 3, 32, 3, 2},
    {"dw3x3 s1 112x112x32", DEPTHWISE, 112, 32, 32, 3, 1},
    {"dw3x3 s2 112x112x96", DEPTHWISE, 112, 96, 96, 3, 2},
    {"dw3x3 s1 56x56x144", DEPTHWISE, 56, 144, 144, 3, 1},
    {"dw3x3 s2 56x56x144", DEPTHWISE, 56, 144, 144, 3, 2},
    {"dw3x3 s1 28x28x192", DEPTHWISE, 28, 192, 192, 3, 1},
    {"dw3x3 s1 14x14x576", DEPTHWISE, 14, 576, 576, 3, 1},
    {"dw3x3 s1 7x7x960", DEPTHWISE, 7, 960, 960, 3, 1},
    {"dw3x3 s1 56x56x24", DEPTHWISE, 56, 24, 24, 3, 1},
    {"dw5x5 s1 28x28x40", DEPTHWISE, 28, 40, 40, 5, 1},
    {"dw3x3 s1 28x28x48", DEPTHWISE, 28, 48, 48, 3, 1},
    {"dw5x5 s2 56x56x72", DEPTHWISE, 56, 72, 72, 5, 2},
    {"pw 112x112x16->96", DENSE, 112, 16, 96, 1, 1},
    {"pw 56x56x24->144", DENSE, 56, 24, 144, 1, 1},
    {"pw 56x56x144->24", DENSE, 56, 144, 24, 1, 1},
    {"pw 28x28x32->192", DENSE, 28, 32, 192, 1, 1},
    {"pw 28x28x192->32", DENSE, 28, 192, 32, 1, 1},
    {"pw 14x14x96->576", DENSE, 14, 96, 576, 1, 1},
    {"pw 14x14x576->96", DENSE, 14, 576, 96, 1, 1},
    {"pw 7x7x160->960", DENSE, 7, 160, 960, 1, 1},
    {"pw 7x7x960->320", DENSE, 7, 960, 320, 1, 1},
    {"pw 7x7x320->1280", DENSE, 7, 320, 1280, 1, 1},
    {"conv 7x7 s2 224x224x3->64", DENSE, 224, 3, 64, 7, 2}, /* ResNet-18's first */
};

static int run_layer(const layer* L, int32_t threads, edge_threadpool* pool) {
  const int32_t pad = L->kernel / 2;
  const edge_conv2d_params p = {1, L->size, L->size, L->in_c, L->out_c, L->kernel, L->kernel, L->stride,
                                L->stride, 1, 1, pad, pad, pad, pad, L->kind == DEPTHWISE ? L->in_c : 1};
  int32_t oh, ow;
  if (edge_conv2d_output_size(&p, &oh, &ow) != EDGE_OK) return 1;
  const size_t x_size = (size_t) L->size * L->size * L->in_c, y_size = (size_t) oh * ow * L->out_c;
  const size_t w_size = (size_t) L->out_c * (L->kind == DEPTHWISE ? 1 : L->in_c) * L->kernel * L->kernel;
  uint8_t* x = aligned(x_size);
  int8_t* w = aligned(w_size);
  int32_t* multiplier = aligned((size_t) L->out_c * sizeof(int32_t));
  int32_t* shift = aligned((size_t) L->out_c * sizeof(int32_t));
  uint8_t* y = aligned(y_size);
  for (size_t i = 0; i < x_size; i++) x[i] = (uint8_t) rnd();
  for (size_t i = 0; i < w_size; i++) w[i] = (int8_t) (rnd() % 255 - 127);
  for (int32_t i = 0; i < L->out_c; i++) {
    multiplier[i] = (1 << 30) + (int32_t) (rnd() % (1u << 30));
    shift[i] = 40 + i % 4;
  }
  const edge_q8_requant rq = {multiplier, shift, 3, 0, 255};
  const size_t packed_size =
      L->kind == DEPTHWISE ? edge_q8_dwconv2d_packed_size(&p) : edge_q8_conv2d_packed_size(&p);
  void* packed = aligned(packed_size);
  edge_status status = L->kind == DEPTHWISE ? edge_q8_dwconv2d_pack(&p, w, NULL, packed, packed_size)
                                            : edge_q8_conv2d_pack(&p, w, NULL, packed, packed_size);
  const size_t workspace_size = L->kind == DEPTHWISE ? 0 : edge_q8_conv2d_workspace_size(&p, threads);
  void* workspace = workspace_size ? aligned(workspace_size) : NULL;
  double times[ITERS];
  for (int i = -WARMUP; i < ITERS && status == EDGE_OK; i++) {
    const double t0 = now();
    status = L->kind == DEPTHWISE
                 ? edge_q8_dwconv2d(&p, EDGE_DTYPE_U8, x, 5, packed, EDGE_DTYPE_U8, y, &rq, pool)
                 : edge_q8_conv2d(&p, EDGE_DTYPE_U8, x, 5, packed, EDGE_DTYPE_U8, y, &rq, workspace,
                                  workspace_size, pool);
    if (i >= 0) times[i] = now() - t0;
  }
  if (status != EDGE_OK) {
    fprintf(stderr, "%s: %s\n", L->name, edge_last_error());
    return 1;
  }
  uint64_t checksum = 0;
  for (size_t i = 0; i < y_size; i++) checksum = checksum * 31 + y[i];
  qsort(times, ITERS, sizeof(double), compare);
  printf("%-28s %8.4f ms  (checksum %016llx)\n", L->name, times[ITERS / 2] * 1e3, (unsigned long long) checksum);
  free(x), free(w), free(multiplier), free(shift), free(y), free(packed), free(workspace);
  return 0;
}

int main(int argc, char** argv) {
  const int32_t threads = argc > 1 ? (int32_t) atoi(argv[1]) : 1;
  edge_threadpool* pool = NULL;
  if (threads > 1 && edge_threadpool_create(threads, &pool) != EDGE_OK) return 1;
  printf("ISA %s, %d thread(s)\n", edge_isa_name(edge_isa_get()), (int) threads);
  int failed = 0;
  for (size_t i = 0; i < sizeof(kLayers) / sizeof(kLayers[0]); i++) failed |= run_layer(&kLayers[i], threads, pool);
  edge_threadpool_destroy(pool);
  return failed;
}
