/* A small pthread pool for splitting kernel work.
 *
 * Workers sleep on a condition variable between jobs (no spinning). A job is
 * a range of task indices claimed one at a time with an atomic counter; the
 * calling thread works on the job too, then waits until every claimed task
 * has finished. Callers from several threads are serialized by a mutex.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "internal.h"

struct edge_threadpool {
  int32_t num_threads; /* including the calling thread */
  pthread_t* workers;
  pthread_mutex_t call_mutex; /* one job at a time */
  pthread_mutex_t mutex;
  pthread_cond_t work_ready;
  pthread_cond_t work_done;
  uint64_t generation; /* bumped for each job; workers wait for a change */
  int shutdown;
  int32_t active_workers; /* workers still inside the current job */
  edge_task_fn fn;
  void* context;
  size_t count;
  atomic_size_t next;
};

/* Set while a thread runs a task: a kernel that calls edge_parallelize from
 * inside a task (a conv tile calling the GEMM) runs inline instead of waiting
 * for the pool it is part of, which would deadlock. */
static _Thread_local int inside_task = 0;

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
  pthread_mutex_lock(&pool->mutex);
  for (;;) {
    while (!pool->shutdown && pool->generation == seen) {
      pthread_cond_wait(&pool->work_ready, &pool->mutex);
    }
    if (pool->shutdown) break;
    seen = pool->generation;
    pthread_mutex_unlock(&pool->mutex);
    run_tasks(pool);
    pthread_mutex_lock(&pool->mutex);
    if (--pool->active_workers == 0) pthread_cond_signal(&pool->work_done);
  }
  pthread_mutex_unlock(&pool->mutex);
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
  pool->shutdown = 1;
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
  pthread_mutex_lock(&pool->mutex);
  pool->fn = fn;
  pool->context = context;
  pool->count = count;
  atomic_store(&pool->next, 0);
  pool->active_workers = pool->num_threads - 1;
  pool->generation++;
  pthread_cond_broadcast(&pool->work_ready);
  pthread_mutex_unlock(&pool->mutex);

  run_tasks(pool);

  pthread_mutex_lock(&pool->mutex);
  while (pool->active_workers > 0) pthread_cond_wait(&pool->work_done, &pool->mutex);
  pthread_mutex_unlock(&pool->mutex);
  pthread_mutex_unlock(&pool->call_mutex);
}
