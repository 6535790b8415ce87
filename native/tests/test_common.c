/* Status strings, ISA selection, requantization parameters and the thread pool. */
#include <stdatomic.h>
#include <string.h>

#include "internal.h"
#include "test_util.h"

static void test_isa_selection(void) {
  EDGE_CHECK(edge_isa_supported(EDGE_ISA_SCALAR), "scalar always runs");
  EDGE_CHECK(edge_isa_supported(edge_isa_detect()), "detected ISA must be supported");
  for (int i = EDGE_ISA_SCALAR; i <= EDGE_ISA_NEONDOT; i++) {
    edge_status s = edge_isa_set((edge_isa) i);
    if (edge_isa_supported((edge_isa) i)) {
      EDGE_CHECK(s == EDGE_OK && edge_isa_get() == (edge_isa) i, "set %s", edge_isa_name((edge_isa) i));
    } else {
      EDGE_CHECK(s == EDGE_ERR_UNSUPPORTED_ISA, "unsupported %s refused", edge_isa_name((edge_isa) i));
      EDGE_CHECK(strstr(edge_last_error(), edge_isa_name((edge_isa) i)) != NULL, "detail names the ISA");
    }
  }
  EDGE_CHECK(edge_isa_set((edge_isa) 99) == EDGE_ERR_INVALID_ARGUMENT, "unknown ISA refused");
  edge_isa_set(edge_isa_detect());
}

static void test_requant_params(void) {
  const double scales[] = {0x1p-32, 1e-6, 0.00390625, 0.1, 0.5, 0.75, 0.999999999};
  for (size_t i = 0; i < sizeof(scales) / sizeof(scales[0]); i++) {
    int32_t m = 0, s = 0;
    EDGE_CHECK_OK(edge_requant_from_scale(scales[i], &m, &s));
    EDGE_CHECK(m >= (1 << 30) && s >= 31 && s <= 62, "scale %g -> m %d s %d", scales[i], m, s);
    const double back = (double) m / (double) (INT64_C(1) << s);
    EDGE_CHECK(back / scales[i] > 1 - 1e-9 && back / scales[i] < 1 + 1e-9, "scale %g round trip %g", scales[i], back);
  }
  int32_t m, s;
  EDGE_CHECK(edge_requant_from_scale(1.0, &m, &s) == EDGE_ERR_INVALID_ARGUMENT, "scale 1 refused");
  EDGE_CHECK(edge_requant_from_scale(0.0, &m, &s) == EDGE_ERR_INVALID_ARGUMENT, "scale 0 refused");
  /* Round half up, then clamp, then the zero point. */
  EDGE_CHECK(edge_requantize(3, 1 << 30, 31, 0, -128, 127) == 2, "1.5 rounds to 2");
  EDGE_CHECK(edge_requantize(-3, 1 << 30, 31, 0, -128, 127) == -1, "-1.5 rounds to -1");
  EDGE_CHECK(edge_requantize(1000, 1 << 30, 31, 10, 0, 255) == 255, "clamped high");
  EDGE_CHECK(edge_requantize(-1000, 1 << 30, 31, 10, 0, 255) == 0, "clamped low");
  EDGE_CHECK(edge_requantize(INT32_MIN, INT32_MAX, 31, 0, -128, 127) == -128, "extreme acc");
}

typedef struct {
  atomic_int hits[1000];
} count_context;

static void count_task(void* context, size_t i) { atomic_fetch_add(&((count_context*) context)->hits[i], 1); }

static edge_threadpool* nested_pool;

static void nested_task(void* context, size_t i) {
  /* A task that parallelizes on the pool it runs on: must run inline, not deadlock. */
  count_context* inner = (count_context*) context + 1 + i;
  edge_parallelize(nested_pool, count_task, inner, 10);
}

static void test_nested_parallelize(void) {
  EDGE_CHECK_OK(edge_threadpool_create(3, &nested_pool));
  static count_context contexts[1 + 4];
  memset(contexts, 0, sizeof(contexts));
  edge_parallelize(nested_pool, nested_task, contexts, 4);
  int ok = 1;
  for (int t = 1; t <= 4; t++) {
    for (size_t i = 0; i < 10; i++) ok &= atomic_load(&contexts[t].hits[i]) == 1;
  }
  EDGE_CHECK(ok, "nested parallelize ran every inner task once");
  edge_threadpool_destroy(nested_pool);
}

static void test_threadpool(void) {
  edge_threadpool* pool = NULL;
  EDGE_CHECK(edge_threadpool_create(0, &pool) == EDGE_ERR_INVALID_ARGUMENT, "zero threads refused");
  for (int threads = 1; threads <= 4; threads++) {
    EDGE_CHECK_OK(edge_threadpool_create(threads, &pool));
    EDGE_CHECK(edge_threadpool_size(pool) == threads, "size");
    for (int round = 0; round < 50; round++) {
      static count_context ctx;
      memset(&ctx, 0, sizeof(ctx));
      const size_t count = (size_t) (1 + round * 20);
      edge_parallelize(pool, count_task, &ctx, count);
      int ok = 1;
      for (size_t i = 0; i < 1000; i++) ok &= atomic_load(&ctx.hits[i]) == (i < count ? 1 : 0);
      EDGE_CHECK(ok, "every task ran exactly once (threads %d, count %zu)", threads, count);
    }
    edge_threadpool_destroy(pool);
  }
}

typedef struct {
  atomic_int hits[64];
  atomic_int sum;
} job_context;

static void job_task(void* context, size_t i) {
  job_context* job = (job_context*) context;
  atomic_fetch_add(&job->hits[i], 1);
  atomic_fetch_add(&job->sum, (int) i + 1);
}

static void test_threadpool_job_after_job(void) {
  /* Jobs posted back to back: the caller returns once every task has finished, so a worker
   * that arrives late must claim nothing of a finished job (a task run twice, or after the
   * check below, changes a count) and must run the next job's tasks with the next job's
   * function and context. */
  enum { JOBS = 4000 };
  static job_context jobs[JOBS];
  memset(jobs, 0, sizeof(jobs));
  for (int threads = 2; threads <= 4; threads += 2) {
    edge_threadpool* pool = NULL;
    EDGE_CHECK_OK(edge_threadpool_create(threads, &pool));
    int ok = 1;
    for (int j = 0; j < JOBS; j++) {
      const size_t count = (size_t) (2 + j % 63);
      memset(&jobs[j], 0, sizeof(jobs[j]));
      edge_parallelize(pool, job_task, &jobs[j], count);
      ok &= atomic_load(&jobs[j].sum) == (int) (count * (count + 1) / 2);
    }
    edge_threadpool_destroy(pool); /* joins the workers: no task runs after this */
    for (int j = 0; j < JOBS; j++) {
      const size_t count = (size_t) (2 + j % 63);
      ok &= atomic_load(&jobs[j].sum) == (int) (count * (count + 1) / 2);
      for (size_t i = 0; i < 64; i++) ok &= atomic_load(&jobs[j].hits[i]) == (i < count ? 1 : 0);
    }
    EDGE_CHECK(ok, "every task of %d back-to-back jobs ran exactly once (threads %d)", JOBS, threads);
  }
}

int main(void) {
  test_isa_selection();
  test_requant_params();
  test_threadpool();
  test_nested_parallelize();
  test_threadpool_job_after_job();
  return edge_test_summary("test_common");
}
