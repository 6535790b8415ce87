/* A small pthread pool for splitting kernel work.
 *
 * A job is a range of task indices claimed one at a time with an atomic
 * counter; the calling thread works on the job too, then waits until every
 * claimed task has finished. Callers from several threads are serialized by a
 * mutex.
 *
 * Idle workers spin for a short while (SPIN_NS, 50 us) before they sleep on a
 * condition variable: a model's layers post jobs microseconds apart, and waking
 * a sleeping thread costs tens of microseconds on a busy machine, as much as a
 * small layer's whole job (a 128 x 384 x 384 GEMM ran no faster on 2 threads
 * than on 1 with workers that always slept). Past the spin they sleep, so an
 * idle pool costs no CPU. The caller waits for the workers the same way.
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

struct edge_threadpool {
  int32_t num_threads; /* including the calling thread */
  pthread_t* workers;
  pthread_mutex_t call_mutex; /* one job at a time */
  pthread_mutex_t mutex;      /* guards the sleeps: work_ready, work_done */
  pthread_cond_t work_ready;
  pthread_cond_t work_done;
  atomic_uint_fast64_t generation; /* bumped for each job; workers wait for a change */
  atomic_int shutdown;
  atomic_int active_workers; /* workers still inside the current job */
  edge_task_fn fn;
  void* context;
  size_t count;
  atomic_size_t next;
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

static int job_posted(edge_threadpool* pool, uint64_t seen) {
  return atomic_load_explicit(&pool->generation, memory_order_acquire) != seen ||
         atomic_load_explicit(&pool->shutdown, memory_order_relaxed);
}

static int workers_done(edge_threadpool* pool, uint64_t unused) {
  (void) unused;
  return atomic_load_explicit(&pool->active_workers, memory_order_acquire) == 0;
}

static void run_tasks(edge_threadpool* pool) {
  inside_task = 1;
  for (;;) {
    const size_t i = atomic_fetch_add(&pool->next, 1);
    if (i >= pool->count) break;
    pool->fn(pool->context, i);
  }
  inside_task = 0;
}

static void* worker_main(void* arg) {
  edge_threadpool* pool = (edge_threadpool*) arg;
  uint64_t seen = 0;
  for (;;) {
    if (!spin_until(job_posted, pool, seen)) {
      pthread_mutex_lock(&pool->mutex);
      while (!job_posted(pool, seen)) pthread_cond_wait(&pool->work_ready, &pool->mutex);
      pthread_mutex_unlock(&pool->mutex);
    }
    if (atomic_load(&pool->shutdown)) break;
    seen = atomic_load_explicit(&pool->generation, memory_order_acquire);
    run_tasks(pool);
    if (atomic_fetch_sub_explicit(&pool->active_workers, 1, memory_order_acq_rel) == 1) {
      /* The last one out: wake the caller if it went to sleep (under the mutex,
       * so that the wake-up cannot fall between its check and its wait). */
      pthread_mutex_lock(&pool->mutex);
      pthread_cond_signal(&pool->work_done);
      pthread_mutex_unlock(&pool->mutex);
    }
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
  atomic_init(&pool->next, 0);
  atomic_init(&pool->generation, 0);
  atomic_init(&pool->shutdown, 0);
  atomic_init(&pool->active_workers, 0);
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

void edge_parallelize(edge_threadpool* pool, edge_task_fn fn, void* context, size_t count) {
  if (count == 0) return;
  if (pool == NULL || pool->num_threads == 1 || count == 1 || inside_task) {
    for (size_t i = 0; i < count; i++) fn(context, i);
    return;
  }
  pthread_mutex_lock(&pool->call_mutex);
  pool->fn = fn;
  pool->context = context;
  pool->count = count;
  atomic_store_explicit(&pool->next, 0, memory_order_relaxed);
  atomic_store_explicit(&pool->active_workers, pool->num_threads - 1, memory_order_relaxed);
  /* Publish the job: spinning workers see the new generation (release orders
   * the fields above before it); sleeping ones are woken under the mutex. */
  pthread_mutex_lock(&pool->mutex);
  atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
  pthread_cond_broadcast(&pool->work_ready);
  pthread_mutex_unlock(&pool->mutex);

  run_tasks(pool);

  if (!spin_until(workers_done, pool, 0)) {
    pthread_mutex_lock(&pool->mutex);
    while (!workers_done(pool, 0)) pthread_cond_wait(&pool->work_done, &pool->mutex);
    pthread_mutex_unlock(&pool->mutex);
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
