/* 2:4-sparse INT8 GEMM: packing, argument checks, tiling and threading.
 *
 * The micro-kernels gather the activations at the kept positions instead of
 * decompressing the weights, so they do half the multiply-adds of the dense
 * GEMM and stream 0.625 of its weight bytes. Layout: see q8-gemm24.h.
 */
#include <string.h>

#include "q8-gemm24/q8-gemm24.h"

static size_t block_count(int32_t n) { return (size_t) EDGE_ROUND_UP(n, EDGE_Q8_GEMM24_NR) / EDGE_Q8_GEMM24_NR; }

static size_t steps_of(int32_t k) { return (size_t) EDGE_ROUND_UP(k, EDGE_Q8_GEMM24_STEP_K) / EDGE_Q8_GEMM24_STEP_K; }

size_t edge_q8_gemm24_packed_size(int32_t n, int32_t k) {
  if (n <= 0 || k <= 0 || k > EDGE_Q8_GEMM24_MAX_K) return 0;
  const size_t blocks = block_count(n);
  const size_t header_and_vectors = sizeof(edge_q8_gemm24_header) + 2 * sizeof(int32_t) * blocks * EDGE_Q8_GEMM24_NR;
  const size_t weights = blocks * steps_of(k) * EDGE_Q8_GEMM24_STEP_BYTES;
  return EDGE_ROUND_UP(header_and_vectors + weights, (size_t) EDGE_ALIGNMENT);
}

/* Checks the range and the 2:4 pattern of every weight before anything is written. */
static edge_status check_weights(int32_t n, int32_t k, const int8_t* weights) {
  for (int32_t ch = 0; ch < n; ch++) {
    const int8_t* row = weights + (size_t) ch * (size_t) k;
    for (int32_t k0 = 0; k0 < k; k0 += 4) {
      const int32_t k1 = EDGE_MIN(k0 + 4, k);
      int nonzeros = 0;
      for (int32_t i = k0; i < k1; i++) {
        if (row[i] == -128) {
          return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "weight [%d][%d] is -128: weights must be in [-127, 127]",
                           (int) ch, (int) i);
        }
        nonzeros += row[i] != 0;
      }
      if (nonzeros > 2) {
        return edge_fail(EDGE_ERR_NOT_2_4_SPARSE,
                         "output channel %d, group %d (k %d..%d) has %d non-zeros: at most 2 in every group of 4",
                         (int) ch, (int) (k0 / 4), (int) k0, (int) (k1 - 1), nonzeros);
      }
    }
  }
  return EDGE_OK;
}

/* The two stored positions of one group (always distinct, i0 < i1) and their values. */
static uint8_t pack_group(const int8_t* row, int32_t k0, int32_t k, int8_t* v0, int8_t* v1) {
  int8_t g[4] = {0, 0, 0, 0};
  for (int i = 0; i < 4 && k0 + i < k; i++) g[i] = row[k0 + i];
  int kept[2], count = 0;
  for (int i = 0; i < 4; i++) {
    if (g[i] != 0) kept[count++] = i;
  }
  /* Fewer than 2 non-zeros: fill with zero-valued positions, lowest first. */
  for (int i = 0; i < 4 && count < 2; i++) {
    if (g[i] == 0 && (count == 0 || kept[0] != i)) kept[count++] = i;
  }
  const int i0 = EDGE_MIN(kept[0], kept[1]), i1 = EDGE_MAX(kept[0], kept[1]);
  *v0 = g[i0];
  *v1 = g[i1];
  return (uint8_t) (i0 | (i1 << 2));
}

edge_status edge_q8_gemm24_pack(int32_t n, int32_t k, const int8_t* weights, const int32_t* bias, void* packed,
                                size_t packed_size) {
  if (weights == NULL || packed == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_gemm24_pack: weights and packed must not be NULL");
  }
  if (n <= 0 || k <= 0 || k > EDGE_Q8_GEMM24_MAX_K) {
    return edge_fail(EDGE_ERR_SHAPE, "edge_q8_gemm24_pack: n = %d must be > 0 and k = %d in [1, %d]", (int) n,
                     (int) k, EDGE_Q8_GEMM24_MAX_K);
  }
  if (!EDGE_IS_ALIGNED(packed)) {
    return edge_fail(EDGE_ERR_ALIGNMENT, "edge_q8_gemm24_pack: packed buffer %p is not 64-byte aligned", packed);
  }
  const size_t needed = edge_q8_gemm24_packed_size(n, k);
  if (packed_size < needed) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_gemm24_pack: packed buffer of %zu bytes, %zu needed",
                     packed_size, needed);
  }
  edge_status status = check_weights(n, k, weights);
  if (status != EDGE_OK) return status;

  memset(packed, 0, needed);
  const size_t blocks = block_count(n), steps = steps_of(k);
  edge_q8_gemm24_header* header = (edge_q8_gemm24_header*) packed;
  header->magic = EDGE_Q8_GEMM24_MAGIC;
  header->version = EDGE_Q8_GEMM24_VERSION;
  header->n = n;
  header->k = k;
  header->n_pad = (int32_t) (blocks * EDGE_Q8_GEMM24_NR);
  header->k_pad = (int32_t) (steps * EDGE_Q8_GEMM24_STEP_K);
  header->block_bytes = (uint32_t) (steps * EDGE_Q8_GEMM24_STEP_BYTES);

  int32_t* packed_bias = (int32_t*) (header + 1);
  int32_t* colsum = packed_bias + header->n_pad;
  uint8_t* block_base = (uint8_t*) (colsum + header->n_pad);
  for (int32_t ch = 0; ch < n; ch++) {
    const int8_t* row = weights + (size_t) ch * (size_t) k;
    packed_bias[ch] = bias != NULL ? bias[ch] : 0;
    int32_t sum = 0; /* |sum| <= 127 * 65536: no overflow */
    for (int32_t i = 0; i < k; i++) sum += row[i];
    colsum[ch] = sum;

    const int lane = ch % EDGE_Q8_GEMM24_NR;
    uint8_t* block = block_base + (size_t) (ch / EDGE_Q8_GEMM24_NR) * header->block_bytes;
    for (size_t s = 0; s < steps; s++) {
      uint8_t* step = block + s * EDGE_Q8_GEMM24_STEP_BYTES;
      int8_t* values = (int8_t*) step + 4 * lane;
      const int32_t k0 = (int32_t) (s * EDGE_Q8_GEMM24_STEP_K);
      const uint8_t lo = pack_group(row, k0, k, &values[0], &values[1]);
      const uint8_t hi = pack_group(row, k0 + 4, k, &values[2], &values[3]);
      step[64 + edge_q8_gemm24_position_index(lane)] = (uint8_t) (lo | (hi << 4));
    }
  }
  /* Padded channels keep zero values; give them valid positions too. */
  for (int32_t ch = n; ch < header->n_pad; ch++) {
    uint8_t* block = block_base + (size_t) (ch / EDGE_Q8_GEMM24_NR) * header->block_bytes;
    for (size_t s = 0; s < steps; s++) {
      block[s * EDGE_Q8_GEMM24_STEP_BYTES + 64 + edge_q8_gemm24_position_index(ch % EDGE_Q8_GEMM24_NR)] = 0x44;
    }
  }
  edge_clear_error();
  return EDGE_OK;
}

typedef struct gemm24_context {
  const edge_q8_gemm24_config* config;
  const edge_q8_gemm24_header* header;
  const uint8_t* a;
  size_t a_stride;
  uint8_t* c;
  size_t c_stride; /* elements */
  size_t c_elem_size;
  int32_t m;
  int32_t m_chunk; /* rows per task, a multiple of the kernel's MR */
  int32_t m_chunks;
  int32_t zp_eff;
  uint8_t a_flip;
  edge_dtype c_dtype;
  const edge_q8_requant* requant;
} gemm24_context;

/* One task: one block of 16 channels times one chunk of rows. */
static void gemm24_task(void* opaque, size_t index) {
  const gemm24_context* ctx = (const gemm24_context*) opaque;
  const edge_q8_gemm24_header* header = ctx->header;
  const size_t block = index / (size_t) ctx->m_chunks;
  const int32_t m0 = (int32_t) (index % (size_t) ctx->m_chunks) * ctx->m_chunk;
  const int32_t m1 = EDGE_MIN(m0 + ctx->m_chunk, ctx->m);
  const int32_t n0 = (int32_t) block * EDGE_Q8_GEMM24_NR;
  const size_t nc = (size_t) EDGE_MIN(EDGE_Q8_GEMM24_NR, header->n - n0);

  const int32_t* bias = (const int32_t*) (header + 1);
  const int32_t* colsum = bias + header->n_pad;
  const uint8_t* w = (const uint8_t*) (colsum + header->n_pad) + block * header->block_bytes;

  /* Set up per call, not per pack: at M = 1 this is on the critical path, so
   * no memset and the requantization arrays are used in place. */
  edge_q8_gemm24_tile_params params;
  params.c_dtype = ctx->c_dtype;
  params.a_flip = ctx->a_flip;
  for (size_t j = 0; j < EDGE_Q8_GEMM24_NR; j++) {
    /* bias and colsum are padded with zeros to n_pad. Wrapping int32
     * arithmetic, written in uint32 to stay defined. */
    params.init[j] = (int32_t) ((uint32_t) bias[n0 + j] - (uint32_t) ctx->zp_eff * (uint32_t) colsum[n0 + j]);
  }
  int32_t tail_multiplier[EDGE_Q8_GEMM24_NR], tail_shift[EDGE_Q8_GEMM24_NR];
  params.multiplier = params.shift = NULL;
  params.zero_point = params.out_min = params.out_max = 0;
  if (ctx->c_dtype != EDGE_DTYPE_S32) {
    if (nc == EDGE_Q8_GEMM24_NR) {
      params.multiplier = ctx->requant->multiplier + n0;
      params.shift = ctx->requant->shift + n0;
    } else {
      /* The last block: any valid multiplier and shift for the missing channels. */
      for (size_t j = 0; j < EDGE_Q8_GEMM24_NR; j++) {
        tail_multiplier[j] = j < nc ? ctx->requant->multiplier[n0 + j] : INT32_C(1) << 30;
        tail_shift[j] = j < nc ? ctx->requant->shift[n0 + j] : 31;
      }
      params.multiplier = tail_multiplier;
      params.shift = tail_shift;
    }
    params.zero_point = ctx->requant->output_zero_point;
    params.out_min = ctx->requant->output_min;
    params.out_max = ctx->requant->output_max;
  }
  const size_t mr = ctx->config->mr;
  for (int32_t m = m0; m < m1; m += (int32_t) mr) {
    const size_t rows = (size_t) EDGE_MIN((int32_t) mr, m1 - m);
    ctx->config->ukernel(rows, nc, (size_t) header->k, ctx->a + (size_t) m * ctx->a_stride, ctx->a_stride, w,
                         ctx->c + ((size_t) m * ctx->c_stride + (size_t) n0) * ctx->c_elem_size, ctx->c_stride,
                         &params);
  }
}

static edge_status check_packed(const void* packed, int32_t n, int32_t k, const char* fn) {
  if (!EDGE_IS_ALIGNED(packed)) {
    return edge_fail(EDGE_ERR_ALIGNMENT, "%s: packed weights %p are not 64-byte aligned", fn, packed);
  }
  const edge_q8_gemm24_header* header = (const edge_q8_gemm24_header*) packed;
  if (header->magic != EDGE_Q8_GEMM24_MAGIC || header->version != EDGE_Q8_GEMM24_VERSION) {
    return edge_fail(EDGE_ERR_PACKED_FORMAT,
                     "%s: packed weights are not 2:4-sparse GEMM weights of version %u (magic 0x%08x, version %u)",
                     fn, EDGE_Q8_GEMM24_VERSION, (unsigned) header->magic, (unsigned) header->version);
  }
  if (header->n != n || header->k != k) {
    return edge_fail(EDGE_ERR_SHAPE, "%s: packed weights are %d x %d (n x k), called with n = %d, k = %d", fn,
                     (int) header->n, (int) header->k, (int) n, (int) k);
  }
  return EDGE_OK;
}

edge_status edge_q8_gemm24(int32_t m, int32_t n, int32_t k, edge_dtype a_dtype, const void* a, size_t a_stride,
                           int32_t a_zero_point, const void* packed, edge_dtype c_dtype, void* c, size_t c_stride,
                           const edge_q8_requant* requant, edge_threadpool* pool) {
  static const char fn[] = "edge_q8_gemm24";
  if (packed == NULL || (m > 0 && (a == NULL || c == NULL))) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: a, packed and c must not be NULL", fn);
  }
  if (m < 0 || n <= 0 || k <= 0 || k > EDGE_Q8_GEMM24_MAX_K) {
    return edge_fail(EDGE_ERR_SHAPE, "%s: m = %d must be >= 0, n = %d > 0 and k = %d in [1, %d]", fn, (int) m,
                     (int) n, (int) k, EDGE_Q8_GEMM24_MAX_K);
  }
  if (a_stride < (size_t) k || c_stride < (size_t) n) {
    return edge_fail(EDGE_ERR_SHAPE, "%s: a_stride %zu must be >= k = %d and c_stride %zu >= n = %d", fn, a_stride,
                     (int) k, c_stride, (int) n);
  }
  edge_status status = edge_check_q8_dtype(a_dtype, "input dtype");
  if (status != EDGE_OK) return status;
  const int32_t zp_lo = edge_dtype_min(a_dtype), zp_hi = edge_dtype_max(a_dtype);
  if (a_zero_point < zp_lo || a_zero_point > zp_hi) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: input zero point %d outside [%d, %d]", fn, (int) a_zero_point,
                     (int) zp_lo, (int) zp_hi);
  }
  if (c_dtype != EDGE_DTYPE_U8 && c_dtype != EDGE_DTYPE_S8 && c_dtype != EDGE_DTYPE_S32) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: output dtype must be u8, s8 or s32 (got dtype %d)", fn,
                     (int) c_dtype);
  }
  if ((status = edge_check_requant(requant, n, c_dtype)) != EDGE_OK) return status;
  if ((status = check_packed(packed, n, k, fn)) != EDGE_OK) return status;
  edge_clear_error();
  if (m == 0) return EDGE_OK;

  const edge_q8_gemm24_config* config = edge_q8_gemm24_get_config(edge_isa_get());
  gemm24_context ctx;
  memset(&ctx, 0, sizeof(ctx));
  ctx.config = config;
  ctx.header = (const edge_q8_gemm24_header*) packed;
  ctx.a = (const uint8_t*) a;
  ctx.a_stride = a_stride;
  ctx.c = (uint8_t*) c;
  ctx.c_stride = c_stride;
  ctx.c_elem_size = c_dtype == EDGE_DTYPE_S32 ? 4 : 1;
  ctx.m = m;
  ctx.c_dtype = c_dtype;
  ctx.requant = requant;
  /* The kernel multiplies A' = A xor a_flip in its own signedness, so
   * A - zp = A' - zp_eff: a shift by 128 moves into the zero point. */
  const int a_signed = a_dtype == EDGE_DTYPE_S8;
  ctx.a_flip = a_signed != config->a_signed ? 0x80 : 0;
  ctx.zp_eff = a_zero_point + (ctx.a_flip == 0 ? 0 : (config->a_signed ? -128 : 128));

  /* Threads split the 16-channel blocks, then the rows when blocks are few. */
  const size_t blocks = block_count(n);
  const int32_t threads = edge_threadpool_size(pool);
  int32_t m_chunks = 1;
  if (threads > 1 && blocks < (size_t) threads * 4) {
    const int32_t wanted = (int32_t) (((size_t) threads * 4 + blocks - 1) / blocks);
    m_chunks = EDGE_MAX(1, EDGE_MIN(wanted, (m + (int32_t) config->mr - 1) / (int32_t) config->mr));
  }
  ctx.m_chunk = EDGE_ROUND_UP((m + m_chunks - 1) / m_chunks, (int32_t) config->mr);
  ctx.m_chunks = (m + ctx.m_chunk - 1) / ctx.m_chunk;
  edge_parallelize(pool, gemm24_task, &ctx, blocks * (size_t) ctx.m_chunks);
  return EDGE_OK;
}
