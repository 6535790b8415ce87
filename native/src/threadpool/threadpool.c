/* A small pthread pool for splitting kernel work.
 *
 * A job is a range of task indices. Whoever comes takes the next one: the
 * calling thread and the workers claim indices from one atomic word that holds
 * the job's generation and its next index, and the caller returns as soon as
 * every task has finished, not when every worker has woken. On a loaded machine
 * a worker that has not been scheduled yet takes no part in the job (the caller
 * runs its share) instead of holding the caller until it wakes only to find
 * nothing left. A worker that arrives late finds the generation changed (or the
 * index past the count) and claims nothing; a claim is a compare-and-swap on
 * (generation, index), so it can only succeed while that job is still open,
 * and the job fields it read before it are that job's (the word is closed
 * before the next job's fields are written, see run_job). Callers from several
 * threads are serialized by a mutex.
 *
 * Idle workers spin for a short while (SPIN_NS, 50 us) before they sleep on a
 * condition variable: a model's layers post jobs microseconds apart, and waking
 * a sleeping thread costs tens of microseconds on a busy machine, as much as a
 * small layer's whole job (a 128 x 384 x 384 GEMM ran no faster on 2 threads
 * than on 1 with workers that always slept). Past the spin they sleep, so an
 * idle pool costs no CPU; a job is announced to sleepers (a system call) only
 * when some worker sleeps. The caller waits for tasks claimed by workers the
 * same way.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime under -std=c11 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

/* How long an idle worker (or a waiting caller) polls before it sleeps. */
#define SPIN_NS 50000u
/* Tasks of one posted job: the low 32 bits of the job word hold the next index; JOB_CLOSED
 * there marks a job being replaced (no claim can succeed while its fields are rewritten). */
#define JOB_CLOSED UINT32_MAX
#define JOB_MAX_TASKS ((size_t) UINT32_MAX - 1)
#define JOB_GENERATION(word) ((uint32_t) ((word) >> 32))
#define JOB_INDEX(word) ((uint32_t) (word))

struct edge_threadpool {
  int32_t num_threads; /* including the calling thread */
  pthread_t* workers;
  pthread_mutex_t call_mutex; /* one job at a time */
  pthread_mutex_t mutex;      /* guards the sleeps: work_ready, work_done */
  pthread_cond_t work_ready;
  pthread_cond_t work_done;
  /* (generation << 32) | next task index; a new job bumps the generation and
   * resets the index. The fields below are set while the word says JOB_CLOSED,
   * before the new job is published. */
  atomic_uint_fast64_t job;
  _Atomic(edge_task_fn) fn;
  _Atomic(void*) context;
  atomic_size_t count; /* tasks of the posted job, <= JOB_MAX_TASKS */
  atomic_size_t base;  /* index of its first task in the caller's range */
  atomic_size_t done;  /* tasks of the posted job that have finished */
  atomic_int sleeping_workers;
  atomic_int caller_sleeping;
  atomic_int shutdown;
};

/* Set while a thread runs a task: a kernel that calls edge_parallelize from
 * inside a task (a conv tile calling the GEMM) runs inline instead of waiting
 * for the pool it is part of, which would deadlock. */
static _Thread_local int inside_task = 0;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  __asm__ __volatile__("yield");
#endif
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* Polls until done(pool, arg) or SPIN_NS have passed; returns whether done. */
static int spin_until(int (*done)(edge_threadpool*, uint64_t), edge_threadpool* pool, uint64_t arg) {
  const uint64_t start = now_ns();
  for (uint32_t i = 1;; i++) {
    if (done(pool, arg)) return 1;
    cpu_relax();
    if ((i & 63) == 0) {
      if (now_ns() - start > SPIN_NS) return 0;
      /* Let a thread waiting for this core run: when the caller and a spinning
       * worker share one core, the job would otherwise wait for a time slice. */
      sched_yield();
    }
  }
}

static int job_posted(edge_threadpool* pool, uint64_t seen_generation) {
  return JOB_GENERATION(atomic_load(&pool->job)) != (uint32_t) seen_generation ||
         atomic_load_explicit(&pool->shutdown, memory_order_relaxed);
}

static int job_finished(edge_threadpool* pool, uint64_t count) {
  return atomic_load(&pool->done) == (size_t) count;
}

/* Claims and runs tasks of the job in `word` (a value of pool->job) until none
 * is left or another job was posted. Returns the generation it last saw. */
static uint32_t run_tasks(edge_threadpool* pool, uint64_t word) {
  inside_task = 1;
  for (;;) {
    /* The fields of the job `word` names (the acquire load of the word that
     * published it orders them), or of a later job, in which case the claim
     * below fails because the word changed. */
    const edge_task_fn fn = atomic_load_explicit(&pool->fn, memory_order_relaxed);
    void* const context = atomic_load_explicit(&pool->context, memory_order_relaxed);
    const size_t count = atomic_load_explicit(&pool->count, memory_order_relaxed);
    const size_t base = atomic_load_explicit(&pool->base, memory_order_relaxed);
    if (JOB_INDEX(word) >= count) break; /* also a closed word: JOB_CLOSED > JOB_MAX_TASKS */
    if (!atomic_compare_exchange_weak(&pool->job, &word, word + 1)) continue; /* word reloaded */
    fn(context, base + JOB_INDEX(word));
    if (atomic_fetch_add(&pool->done, 1) + 1 == count && atomic_load(&pool->caller_sleeping)) {
      /* The last task of the job: wake the caller if it went to sleep (under
       * the mutex, so that the wake-up cannot fall between its check and its
       * wait). A caller already on its next job takes it for a spurious wake. */
      pthread_mutex_lock(&pool->mutex);
      pthread_cond_signal(&pool->work_done);
      pthread_mutex_unlock(&pool->mutex);
    }
    word = atomic_load(&pool->job);
  }
  inside_task = 0;
  return JOB_GENERATION(word);
}

static void* worker_main(void* arg) {
  edge_threadpool* pool = (edge_threadpool*) arg;
  uint32_t seen = 0;
  for (;;) {
    if (!spin_until(job_posted, pool, seen)) {
      pthread_mutex_lock(&pool->mutex);
      /* Counted before the check: a caller that posts after it sees a sleeper
       * and broadcasts (under the mutex, so after this thread waits). */
      atomic_fetch_add(&pool->sleeping_workers, 1);
      while (!job_posted(pool, seen)) pthread_cond_wait(&pool->work_ready, &pool->mutex);
      atomic_fetch_sub(&pool->sleeping_workers, 1);
      pthread_mutex_unlock(&pool->mutex);
    }
    if (atomic_load(&pool->shutdown)) break;
    seen = run_tasks(pool, atomic_load(&pool->job));
  }
  return NULL;
}

edge_status edge_threadpool_create(int32_t num_threads, edge_threadpool** out_pool) {
  if (out_pool == NULL) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "out_pool must not be NULL");
  *out_pool = NULL;
  if (num_threads < 1 || num_threads > 256) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "thread count %d outside [1, 256]", (int) num_threads);
  }
  edge_threadpool* pool = calloc(1, sizeof(*pool));
  if (pool == NULL) return edge_fail(EDGE_ERR_OUT_OF_MEMORY, "thread pool");
  pool->num_threads = num_threads;
  pthread_mutex_init(&pool->call_mutex, NULL);
  pthread_mutex_init(&pool->mutex, NULL);
  pthread_cond_init(&pool->work_ready, NULL);
  pthread_cond_init(&pool->work_done, NULL);
  atomic_init(&pool->job, 0);
  atomic_init(&pool->fn, NULL);
  atomic_init(&pool->context, NULL);
  atomic_init(&pool->count, 0);
  atomic_init(&pool->base, 0);
  atomic_init(&pool->done, 0);
  atomic_init(&pool->sleeping_workers, 0);
  atomic_init(&pool->caller_sleeping, 0);
  atomic_init(&pool->shutdown, 0);
  if (num_threads > 1) {
    pool->workers = calloc((size_t) num_threads - 1, sizeof(pthread_t));
    if (pool->workers == NULL) {
      free(pool);
      return edge_fail(EDGE_ERR_OUT_OF_MEMORY, "thread pool workers");
    }
    for (int32_t i = 0; i < num_threads - 1; i++) {
      if (pthread_create(&pool->workers[i], NULL, worker_main, pool) != 0) {
        pool->num_threads = i + 1; /* destroy joins only the started ones */
        edge_threadpool_destroy(pool);
        return edge_fail(EDGE_ERR_OUT_OF_MEMORY, "could not start worker thread %d", (int) i);
      }
    }
  }
  *out_pool = pool;
  return EDGE_OK;
}

void edge_threadpool_destroy(edge_threadpool* pool) {
  if (pool == NULL) return;
  pthread_mutex_lock(&pool->mutex);
  atomic_store(&pool->shutdown, 1);
  pthread_cond_broadcast(&pool->work_ready);
  pthread_mutex_unlock(&pool->mutex);
  for (int32_t i = 0; i < pool->num_threads - 1; i++) pthread_join(pool->workers[i], NULL);
  free(pool->workers);
  pthread_cond_destroy(&pool->work_ready);
  pthread_cond_destroy(&pool->work_done);
  pthread_mutex_destroy(&pool->mutex);
  pthread_mutex_destroy(&pool->call_mutex);
  free(pool);
}

int32_t edge_threadpool_size(const edge_threadpool* pool) { return pool == NULL ? 1 : pool->num_threads; }

/* Posts tasks [base, base + count) of fn (count <= JOB_MAX_TASKS), works on
 * them, and returns when all have finished. Under call_mutex. */
static void run_job(edge_threadpool* pool, edge_task_fn fn, void* context, size_t base, size_t count) {
  /* Every task of the previous job has finished (done == its count), so no
   * thread is inside it, but a late worker may still hold that job's last word
   * (generation, count) and read fields of the new job: with the new count it
   * would claim a task that does not exist. So the word is closed first (an
   * exchange: every claim of the old job happens before it, and so before the
   * field writes below), and claims of a closed word fail. */
  const uint64_t old = atomic_exchange(&pool->job, (atomic_load(&pool->job) & ~(uint64_t) UINT32_MAX) | JOB_CLOSED);
  atomic_store_explicit(&pool->fn, fn, memory_order_relaxed);
  atomic_store_explicit(&pool->context, context, memory_order_relaxed);
  atomic_store_explicit(&pool->count, count, memory_order_relaxed);
  atomic_store_explicit(&pool->base, base, memory_order_relaxed);
  atomic_store_explicit(&pool->done, 0, memory_order_relaxed);
  /* Publish: the new generation with index 0 (sequentially consistent, which
   * also orders it against the sleepers' count read below). */
  const uint64_t word = (uint64_t) (JOB_GENERATION(old) + 1u) << 32;
  atomic_store(&pool->job, word);
  if (atomic_load(&pool->sleeping_workers) > 0) {
    pthread_mutex_lock(&pool->mutex);
    pthread_cond_broadcast(&pool->work_ready);
    pthread_mutex_unlock(&pool->mutex);
  }

  run_tasks(pool, word);

  /* Only tasks a worker claimed can still be running. */
  if (!spin_until(job_finished, pool, count)) {
    pthread_mutex_lock(&pool->mutex);
    atomic_store(&pool->caller_sleeping, 1);
    while (!job_finished(pool, count)) pthread_cond_wait(&pool->work_done, &pool->mutex);
    atomic_store(&pool->caller_sleeping, 0);
    pthread_mutex_unlock(&pool->mutex);
  }
}

void edge_parallelize(edge_threadpool* pool, edge_task_fn fn, void* context, size_t count) {
  if (count == 0) return;
  if (pool == NULL || pool->num_threads == 1 || count == 1 || inside_task) {
    for (size_t i = 0; i < count; i++) fn(context, i);
    return;
  }
  pthread_mutex_lock(&pool->call_mutex);
  for (size_t base = 0; base < count; base += JOB_MAX_TASKS) {
    const size_t left = count - base;
    run_job(pool, fn, context, base, left < JOB_MAX_TASKS ? left : JOB_MAX_TASKS);
  }
  pthread_mutex_unlock(&pool->call_mutex);
}

size_t edge_task_units(const edge_threadpool* pool, size_t n, size_t min_units, size_t align) {
  const size_t threads = (size_t) edge_threadpool_size(pool);
  if (threads <= 1 || n <= min_units) return n;
  const size_t tasks = threads * EDGE_TASKS_PER_THREAD;
  size_t units = (n + tasks - 1) / tasks;
  units = units < min_units ? min_units : units;
  units = align > 1 ? (units + align - 1) / align * align : units;
  return units < n ? units : n;
}
