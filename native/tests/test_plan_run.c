/* The plan interpreter (edge/plan.h): a program gives the bytes of the same
 * kernel calls made one by one, its byte moves match naive loops, a failing op
 * is reported by index (after the ops before it ran), and the rendezvous hook
 * fails a run that waits alone. On every ISA the machine runs. */
#include <stdint.h>
#include <string.h>

#include "internal.h"
#include "test_util.h"

static void test_gemm_program_matches_the_direct_call(void) {
  const int32_t m = 5, n = 24, k = 40;
  int8_t* w = edge_test_aligned_alloc((size_t) n * k);
  int32_t bias[24];
  int32_t mult[24], shift[24];
  uint8_t* a = edge_test_aligned_alloc((size_t) m * k);
  edge_test_fill_s8(w, (size_t) n * k, -127, 127);
  edge_test_fill_u8(a, (size_t) m * k, 0, 255);
  for (int i = 0; i < n; i++) {
    bias[i] = edge_test_rand_range(-5000, 5000);
    edge_requant_from_scale(0.001 + 0.0001 * i, &mult[i], &shift[i]);
  }
  const size_t size = edge_q8_gemm_packed_size(n, k);
  void* packed = edge_test_aligned_alloc(size);
  EDGE_CHECK_OK(edge_q8_gemm_pack(n, k, w, bias, packed, size));
  const edge_q8_requant rq = {mult, shift, 3, 0, 255};
  uint8_t* want = edge_test_aligned_alloc((size_t) m * n);
  uint8_t* got = edge_test_aligned_alloc((size_t) m * n);
  edge_isa isa;
  EDGE_FOR_EACH_ISA(isa) {
    EDGE_CHECK_OK(edge_q8_gemm(m, n, k, EDGE_DTYPE_U8, a, k, 7, packed, EDGE_DTYPE_U8, want, n, &rq, NULL));
    edge_plan_op op;
    memset(&op, 0, sizeof(op));
    op.kind = EDGE_PLAN_GEMM;
    op.args.gemm = (edge_plan_gemm_args){m, n, k, EDGE_DTYPE_U8, a, k, 7, packed, EDGE_DTYPE_U8, got, n, &rq};
    memset(got, 0, (size_t) m * n);
    size_t failed = 99;
    EDGE_CHECK_OK(edge_plan_run(&op, 1, NULL, &failed));
    EDGE_CHECK(memcmp(got, want, (size_t) m * n) == 0, "program and direct call differ");
  }
  edge_isa_set(edge_isa_detect());
  free(w);
  free(a);
  free(packed);
  free(want);
  free(got);
}

/* quantize an NCHW float image, permute it to NHWC, clamp it, copy it. */
static void test_moves_and_a_failing_op(void) {
  enum { N = 2, C = 3, H = 5, W = 7, SIZE = N * C * H * W };
  float x[SIZE];
  uint8_t q[SIZE], nhwc[SIZE], clamped[SIZE], copied[SIZE];
  for (int i = 0; i < SIZE; i++) x[i] = (float) edge_test_rand_range(-300, 300) * 0.37f;
  edge_plan_op ops[5];
  memset(ops, 0, sizeof(ops));
  ops[0].kind = EDGE_PLAN_QUANTIZE;
  ops[0].args.quantize = (edge_plan_quantize_args){SIZE, x, 0.5f, 128, EDGE_DTYPE_U8, q};
  ops[1].kind = EDGE_PLAN_PERMUTE;
  ops[1].args.permute = (edge_plan_permute_args){
      4, 1, {N, H, W, C, 0, 0}, {C * H * W, W, 1, H * W, 0, 0}, q, nhwc};
  ops[2].kind = EDGE_PLAN_CLAMP;
  ops[2].args.clamp = (edge_plan_clamp_args){SIZE, EDGE_DTYPE_U8, nhwc, clamped, 100, 150};
  ops[3].kind = EDGE_PLAN_COPY;
  ops[3].args.copy = (edge_plan_copy_args){SIZE, clamped, copied};
  size_t failed = 99;
  EDGE_CHECK_OK(edge_plan_run(ops, 4, NULL, &failed));
  uint8_t want_q[SIZE];
  EDGE_CHECK_OK(edge_f32_q8_quantize(SIZE, x, 0.5f, 128, EDGE_DTYPE_U8, want_q, NULL));
  EDGE_CHECK(memcmp(q, want_q, SIZE) == 0, "quantize op");
  for (int n = 0; n < N; n++)
    for (int c = 0; c < C; c++)
      for (int h = 0; h < H; h++)
        for (int w = 0; w < W; w++) {
          const uint8_t v = q[((n * C + c) * H + h) * W + w];
          const int at = ((n * H + h) * W + w) * C + c;
          EDGE_CHECK(nhwc[at] == v, "permute at n%d c%d h%d w%d", n, c, h, w);
          const uint8_t cl = v < 100 ? 100 : (v > 150 ? 150 : v);
          EDGE_CHECK(clamped[at] == cl && copied[at] == cl, "clamp/copy at %d", at);
        }
  /* A clamp of float data is refused: op 4 of 5 fails, the ops before it ran. */
  memset(copied, 0, SIZE);
  ops[4] = ops[3];
  ops[3].kind = EDGE_PLAN_CLAMP;
  ops[3].args.clamp = (edge_plan_clamp_args){SIZE, EDGE_DTYPE_F32, nhwc, clamped, 0, 1};
  memset(q, 0, SIZE);
  EDGE_CHECK(edge_plan_run(ops, 5, NULL, &failed) == EDGE_ERR_INVALID_ARGUMENT, "bad clamp refused");
  EDGE_CHECK(failed == 3, "failed op %zu, expected 3", failed);
  EDGE_CHECK(strstr(edge_last_error(), "clamp") != NULL, "detail names the op: %s", edge_last_error());
  EDGE_CHECK(memcmp(q, want_q, SIZE) == 0, "the ops before the failure ran");
  EDGE_CHECK(copied[0] == 0, "the ops after the failure did not");
  ops[0].kind = (edge_plan_kind) 99;
  EDGE_CHECK(edge_plan_run(ops, 1, NULL, &failed) == EDGE_ERR_INVALID_ARGUMENT && failed == 0, "unknown kind");
}

static void test_im2col_matches_a_naive_loop(void) {
  enum { B = 2, IH = 9, IW = 8, CH = 3, KH = 7, KW = 7, S = 2, PT = 3, PL = 3, PB = 3, PR = 3 };
  enum { PH = IH + PT + PB, PW = IW + PL + PR, OH = (PH - KH) / S + 1, OW = (PW - KW) / S + 1 };
  enum { K = KH * KW * CH };
  static uint8_t x[B * IH * IW * CH], padded[B * PH * PW * CH], a[B * OH * OW * K];
  edge_test_fill_u8(x, sizeof(x), 0, 255);
  memset(padded, 11, sizeof(padded)); /* the zero point */
  edge_threadpool* pool = NULL;
  EDGE_CHECK_OK(edge_threadpool_create(2, &pool));
  edge_plan_op op;
  memset(&op, 0, sizeof(op));
  op.kind = EDGE_PLAN_IM2COL;
  op.args.im2col = (edge_plan_im2col_args){B, IH, IW, CH, PH, PW, PT, PL, OH, OW, KH, KW, S, S, x, padded, a};
  EDGE_CHECK_OK(edge_plan_run(&op, 1, pool, NULL));
  for (int n = 0; n < B; n++)
    for (int oy = 0; oy < OH; oy++)
      for (int ox = 0; ox < OW; ox++)
        for (int ky = 0; ky < KH; ky++)
          for (int kx = 0; kx < KW; kx++)
            for (int c = 0; c < CH; c++) {
              const int y = oy * S + ky - PT, xx = ox * S + kx - PL;
              const uint8_t want = (y < 0 || y >= IH || xx < 0 || xx >= IW) ? 11 : x[((n * IH + y) * IW + xx) * CH + c];
              const uint8_t got = a[((n * OH + oy) * OW + ox) * K + (ky * KW + kx) * CH + c];
              EDGE_CHECK(got == want, "im2col n%d oy%d ox%d ky%d kx%d c%d", n, oy, ox, ky, kx, c);
            }
  edge_threadpool_destroy(pool);
}

static void test_rendezvous_fails_a_run_alone(void) {
  size_t failed = 0;
  edge_plan_rendezvous(2, 20);
  EDGE_CHECK(edge_plan_run(NULL, 0, NULL, &failed) == EDGE_ERR_INVALID_ARGUMENT, "a lone run times out");
  EDGE_CHECK(failed == SIZE_MAX, "not an op's failure");
  edge_plan_rendezvous(0, 0);
  EDGE_CHECK_OK(edge_plan_run(NULL, 0, NULL, &failed));
  EDGE_CHECK(edge_plan_runs_active() == 0, "no run in flight");
  EDGE_CHECK(edge_plan_runs_peak() >= 1, "a run was seen");
}

int main(void) {
  edge_test_seed(14);
  test_gemm_program_matches_the_direct_call();
  test_moves_and_a_failing_op();
  test_im2col_matches_a_naive_loop();
  test_rendezvous_fails_a_run_alone();
  return edge_test_summary("plan_run");
}
