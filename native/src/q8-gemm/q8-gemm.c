/* Dense INT8 GEMM: packing, argument checks, tiling and threading.
 *
 * The output is cut into tiles of the ISA's micro-kernel (mr rows x nr
 * channels). A task is one nr-wide panel of weights times a block of rows, and
 * tasks are numbered panel-major so that a thread walks the rows of one panel
 * while it stays in cache. Fused kernels requantize (or store, for s32 C)
 * straight from their registers; the others accumulate up to 32 rows of tiles
 * in int32 on the stack, which one requantization pass writes to C while in L1.
 */
#include <stddef.h>

#include "q8-gemm.h"

/* The fewest rows of a task when a pool splits the rows of a panel: enough
 * tiles to amortize the task's set-up. */
#define ROWS_PER_TASK_MIN 32

static size_t padded_n(int32_t n) { return EDGE_ROUND_UP((size_t) n, EDGE_Q8_GEMM_NR); }
static size_t padded_k(int32_t k) { return EDGE_ROUND_UP((size_t) k, EDGE_Q8_GEMM_KR); }

static edge_status check_dims(int32_t n, int32_t k, const char* where) {
  if (n <= 0 || k <= 0) {
    return edge_fail(EDGE_ERR_SHAPE, "%s: n (%d) and k (%d) must be positive", where, (int) n, (int) k);
  }
  if (k > EDGE_Q8_GEMM_MAX_K) {
    return edge_fail(EDGE_ERR_SHAPE, "%s: k = %d exceeds the maximum %d (int32 accumulators could overflow)",
                     where, (int) k, EDGE_Q8_GEMM_MAX_K);
  }
  return EDGE_OK;
}

size_t edge_q8_gemm_packed_size(int32_t n, int32_t k) {
  if (n <= 0 || k <= 0 || k > EDGE_Q8_GEMM_MAX_K) return 0;
  const size_t n_pad = padded_n(n), k_pad = padded_k(k);
  return sizeof(edge_q8_gemm_header) + 2 * n_pad * sizeof(int32_t) + n_pad * k_pad;
}

/* Zeroes a packed buffer for n x k weights and writes its header; returns the bias array. */
static int32_t* start_packed(int32_t n, int32_t k, void* packed) {
  uint8_t* bytes = packed;
  memset(bytes, 0, edge_q8_gemm_packed_size(n, k));
  const edge_q8_gemm_header header = {
      .magic = EDGE_Q8_GEMM_MAGIC, .version = EDGE_Q8_GEMM_VERSION,
      .n = n, .k = k, .n_pad = (int32_t) padded_n(n), .k_pad = (int32_t) padded_k(k),
  };
  memcpy(bytes, &header, sizeof(header));
  return (int32_t*) (bytes + sizeof(header));
}

edge_status edge_q8_gemm_pack(int32_t n, int32_t k, const int8_t* weights, const int32_t* bias, void* packed,
                              size_t packed_size) {
  return edge_q8_gemm_pack_bits(n, k, weights, bias, 8, packed, packed_size);
}

edge_status edge_q8_gemm_pack_bits(int32_t n, int32_t k, const int8_t* weights, const int32_t* bias,
                                   int32_t weight_bits, void* packed, size_t packed_size) {
  edge_status status = check_dims(n, k, "edge_q8_gemm_pack");
  if (status != EDGE_OK) return status;
  if (weights == NULL || packed == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_gemm_pack: weights and packed must not be NULL");
  }
  if (!EDGE_IS_ALIGNED(packed)) {
    return edge_fail(EDGE_ERR_ALIGNMENT, "edge_q8_gemm_pack: packed buffer must be %d-byte aligned", EDGE_ALIGNMENT);
  }
  const size_t needed = edge_q8_gemm_packed_size(n, k);
  if (packed_size < needed) {
    return edge_fail(EDGE_ERR_SHAPE, "edge_q8_gemm_pack: packed buffer of %zu bytes, %zu needed for n=%d k=%d",
                     packed_size, needed, (int) n, (int) k);
  }
  if (weight_bits != 8 && weight_bits != 7) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_gemm_pack: weight_bits = %d must be 8 or 7",
                     (int) weight_bits);
  }
  const int32_t w_max = weight_bits == 7 ? EDGE_Q8_GEMM_W7_MAX : 127;
  int w7 = 1; /* every weight in [-63, 63] so far */
  for (int32_t c = 0; c < n; c++) {
    for (int32_t i = 0; i < k; i++) {
      const int32_t v = weights[(size_t) c * k + i];
      if (v < -w_max || v > w_max) {
        return edge_fail(EDGE_ERR_INVALID_ARGUMENT,
                         "edge_q8_gemm_pack: weight of channel %d at k=%d is %d; %d-bit weights must be in [%d, %d]",
                         (int) c, (int) i, (int) v, (int) weight_bits, (int) -w_max, (int) w_max);
      }
      w7 &= v >= -EDGE_Q8_GEMM_W7_MAX && v <= EDGE_Q8_GEMM_W7_MAX;
    }
  }

  const size_t n_pad = padded_n(n), k_pad = padded_k(k);
  int32_t* packed_bias = start_packed(n, k, packed);
  int32_t* colsum = packed_bias + n_pad;
  int8_t* packed_w = (int8_t*) (colsum + n_pad);
  for (size_t c = 0; c < (size_t) n; c++) {
    const int8_t* row = weights + c * (size_t) k;
    int8_t* panel = packed_w + (c / EDGE_Q8_GEMM_NR) * k_pad * EDGE_Q8_GEMM_NR;
    int32_t sum = 0; /* |sum| <= 65536 * 127 */
    for (size_t i = 0; i < (size_t) k; i++) {
      panel[(i / EDGE_Q8_GEMM_KR) * (EDGE_Q8_GEMM_NR * EDGE_Q8_GEMM_KR) + (c % EDGE_Q8_GEMM_NR) * EDGE_Q8_GEMM_KR +
            i % EDGE_Q8_GEMM_KR] = row[i];
      sum += row[i];
    }
    packed_bias[c] = bias != NULL ? bias[c] : 0;
    colsum[c] = sum;
  }
  if (w7) { /* the flag is set here only, after the check above */
    const uint32_t flags = EDGE_Q8_GEMM_FLAG_W7;
    memcpy((uint8_t*) packed + offsetof(edge_q8_gemm_header, flags), &flags, sizeof(flags));
  }
  edge_clear_error();
  return EDGE_OK;
}

int32_t edge_q8_gemm_packed_weight_bits(const void* packed) {
  if (packed == NULL) return 0;
  edge_q8_gemm_header header;
  memcpy(&header, packed, sizeof(header));
  if (header.magic != EDGE_Q8_GEMM_MAGIC || header.version != EDGE_Q8_GEMM_VERSION) return 0;
  return (header.flags & EDGE_Q8_GEMM_FLAG_W7) ? 7 : 8;
}

void edge_q8_gemm_pack_codes(int32_t n, int32_t k, const uint8_t* codes, size_t n_stride, size_t k_stride,
                             int is_signed, int32_t zero_point, int32_t reciprocal, void* packed) {
  const size_t n_pad = padded_n(n), k_pad = padded_k(k);
  int32_t* colsum = start_packed(n, k, packed) + n_pad; /* after the (zero) bias */
  int8_t* packed_w = (int8_t*) (colsum + n_pad);
  /* One 16-channel x 4-k group at a time: a row of 16 codes converts as a vector
   * (floor((d * reciprocal + 2^15) / 2^16), within [-127, 127] by the contract). */
  for (size_t c0 = 0; c0 < (size_t) n; c0 += EDGE_Q8_GEMM_NR) {
    const size_t nc = EDGE_MIN((size_t) EDGE_Q8_GEMM_NR, (size_t) n - c0);
    int32_t sums[EDGE_Q8_GEMM_NR] = {0};
    int8_t* panel = packed_w + (c0 / EDGE_Q8_GEMM_NR) * k_pad * EDGE_Q8_GEMM_NR;
    for (size_t i = 0; i < (size_t) k; i++) {
      const uint8_t* src = codes + i * k_stride + c0 * n_stride;
      int8_t* group = panel + (i / EDGE_Q8_GEMM_KR) * (EDGE_Q8_GEMM_NR * EDGE_Q8_GEMM_KR) + i % EDGE_Q8_GEMM_KR;
      int32_t w[EDGE_Q8_GEMM_NR];
      for (size_t c = 0; c < nc; c++) {
        const uint8_t byte = src[c * n_stride];
        const int32_t d = (is_signed ? (int32_t) (int8_t) byte : (int32_t) byte) - zero_point;
        w[c] = (d * reciprocal + 32768) >> 16; /* arithmetic shift: floor */
      }
      for (size_t c = 0; c < nc; c++) {
        group[c * EDGE_Q8_GEMM_KR] = (int8_t) w[c];
        sums[c] += w[c];
      }
    }
    memcpy(colsum + c0, sums, nc * sizeof(int32_t));
  }
}

typedef struct gemm_context {
  const edge_q8_gemm_config* config;
  edge_q8_gemm_ukernel_fn kernel;     /* accumulating kernel, or NULL ... */
  edge_q8_gemm_fused_fn fused_kernel; /* ... when the ISA has a fused one */
  size_t mr, nr;
  size_t m, n, k, n_pad, panel_stride;
  size_t rows_per_task, m_blocks;
  const uint8_t* a;
  size_t a_stride; /* bytes */
  int a_signed;
  int32_t zero_point_term; /* a_zero_point + the kernel's offset of A */
  const int32_t* bias;
  const int32_t* colsum;
  const int8_t* weights;
  edge_dtype c_dtype;
  uint8_t* c;
  size_t c_row_bytes;
  const edge_q8_requant* requant; /* NULL for s32 C */
} gemm_context;

/* Rows of int32 accumulators one requantization pass takes: the pass derives
 * its per-channel constants once per call, so the kernels' tiles of mr rows
 * are gathered into one block of this many rows first (2 KB of L1 at nr 16;
 * the buffer holds UNFUSED_ROWS * EDGE_Q8_GEMM_MAX_NR int32, 8 KB of stack). */
#define UNFUSED_ROWS 32

/* Rows [m0, m0 + rows) of a panel with an accumulating kernel, rows <=
 * UNFUSED_ROWS: straight into C when C is int32 and the tiles are whole, else
 * through an L1 buffer that one requantization pass (or a copy) empties. */
static void unfused_rows(const gemm_context* ctx, size_t m0, size_t rows, size_t n0, size_t nb, size_t nc,
                         const int8_t* w, const int32_t* init) {
  const uint8_t* a = ctx->a + m0 * ctx->a_stride;
  uint8_t* c = ctx->c + m0 * ctx->c_row_bytes;
  if (ctx->requant == NULL && nc == nb * EDGE_Q8_GEMM_NR) {
    for (size_t r = 0; r < rows; r += ctx->mr) {
      ctx->kernel(EDGE_MIN(ctx->mr, rows - r), nb, ctx->k, a + r * ctx->a_stride, ctx->a_stride, ctx->a_signed, w,
                  ctx->panel_stride, init, (int32_t*) (void*) (c + r * ctx->c_row_bytes + n0 * sizeof(int32_t)),
                  ctx->c_row_bytes / sizeof(int32_t));
    }
    return;
  }
  int32_t tile[UNFUSED_ROWS * EDGE_Q8_GEMM_MAX_NR] __attribute__((aligned(64)));
  for (size_t r = 0; r < rows; r += ctx->mr) {
    ctx->kernel(EDGE_MIN(ctx->mr, rows - r), nb, ctx->k, a + r * ctx->a_stride, ctx->a_stride, ctx->a_signed, w,
                ctx->panel_stride, init, tile + r * ctx->nr, ctx->nr);
  }
  const edge_q8_requant* rq = ctx->requant;
  if (rq == NULL) {
    for (size_t r = 0; r < rows; r++) {
      memcpy(c + r * ctx->c_row_bytes + n0 * sizeof(int32_t), tile + r * ctx->nr, nc * sizeof(int32_t));
    }
  } else {
    ctx->config->requant(rows, nc, tile, ctx->nr, rq->multiplier + n0, rq->shift + n0, rq->output_zero_point,
                         rq->output_min, rq->output_max, ctx->c_dtype == EDGE_DTYPE_S8, c + n0, ctx->c_row_bytes);
  }
}

static void gemm_task(void* opaque, size_t index) {
  const gemm_context* ctx = opaque;
  const size_t n0 = (index / ctx->m_blocks) * ctx->nr;
  const size_t m_begin = (index % ctx->m_blocks) * ctx->rows_per_task;
  const size_t m_end = EDGE_MIN(m_begin + ctx->rows_per_task, ctx->m);
  const size_t nc = EDGE_MIN(ctx->nr, ctx->n - n0);             /* columns of C */
  const size_t nb = EDGE_MIN(ctx->nr, ctx->n_pad - n0) / EDGE_Q8_GEMM_NR; /* packed blocks */

  /* The zero point folds into the bias: bias - (zp + offset) * colsum, wrapping. */
  int32_t init[EDGE_Q8_GEMM_MAX_NR] __attribute__((aligned(64)));
  for (size_t j = 0; j < nb * EDGE_Q8_GEMM_NR; j++) {
    init[j] = (int32_t) ((uint32_t) ctx->bias[n0 + j] -
                         (uint32_t) ctx->zero_point_term * (uint32_t) ctx->colsum[n0 + j]);
  }
  const int8_t* w = ctx->weights + (n0 / EDGE_Q8_GEMM_NR) * ctx->panel_stride;
  const edge_q8_requant* rq = ctx->requant;
  edge_q8_gemm_store store = {
      .c_stride = ctx->c_row_bytes,
      .nc = nc,
      .multiplier = rq != NULL ? rq->multiplier + n0 : NULL,
      .shift = rq != NULL ? rq->shift + n0 : NULL,
      .zero_point = rq != NULL ? rq->output_zero_point : 0,
      .out_min = rq != NULL ? rq->output_min : 0,
      .out_max = rq != NULL ? rq->output_max : 0,
  };
  const size_t c_column_bytes = n0 * (ctx->c_dtype == EDGE_DTYPE_S32 ? sizeof(int32_t) : 1);
  if (ctx->fused_kernel != NULL) { /* it walks the rows itself */
    store.c = ctx->c + m_begin * ctx->c_row_bytes + c_column_bytes;
    ctx->fused_kernel(m_end - m_begin, nb, ctx->k, ctx->a + m_begin * ctx->a_stride, ctx->a_stride, ctx->a_signed,
                      w, ctx->panel_stride, init, &store);
    return;
  }
  for (size_t m0 = m_begin; m0 < m_end; m0 += UNFUSED_ROWS) {
    unfused_rows(ctx, m0, EDGE_MIN((size_t) UNFUSED_ROWS, m_end - m0), n0, nb, nc, w, init);
  }
}

edge_status edge_q8_gemm(int32_t m, int32_t n, int32_t k, edge_dtype a_dtype, const void* a, size_t a_stride,
                         int32_t a_zero_point, const void* packed, edge_dtype c_dtype, void* c, size_t c_stride,
                         const edge_q8_requant* requant, edge_threadpool* pool) {
  if (m < 0) return edge_fail(EDGE_ERR_SHAPE, "edge_q8_gemm: m = %d must not be negative", (int) m);
  edge_status status = check_dims(n, k, "edge_q8_gemm");
  if (status != EDGE_OK) return status;
  if ((status = edge_check_q8_dtype(a_dtype, "A dtype")) != EDGE_OK) return status;
  if ((status = edge_check_requant(requant, n, c_dtype)) != EDGE_OK) return status;
  const int32_t zp_min = edge_dtype_min(a_dtype), zp_max = edge_dtype_max(a_dtype);
  if (a_zero_point < zp_min || a_zero_point > zp_max) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_gemm: A zero point %d outside [%d, %d]",
                     (int) a_zero_point, (int) zp_min, (int) zp_max);
  }
  if (packed == NULL) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_gemm: packed must not be NULL");
  if (!EDGE_IS_ALIGNED(packed)) {
    return edge_fail(EDGE_ERR_ALIGNMENT, "edge_q8_gemm: packed weights must be %d-byte aligned", EDGE_ALIGNMENT);
  }
  edge_q8_gemm_header header;
  memcpy(&header, packed, sizeof(header));
  if (header.magic != EDGE_Q8_GEMM_MAGIC || header.version != EDGE_Q8_GEMM_VERSION) {
    return edge_fail(EDGE_ERR_PACKED_FORMAT,
                     "edge_q8_gemm: not dense q8 packed weights of version %d (magic 0x%08x, version %u)",
                     EDGE_Q8_GEMM_VERSION, (unsigned) header.magic, (unsigned) header.version);
  }
  if (header.n != n || header.k != k) {
    return edge_fail(EDGE_ERR_SHAPE, "edge_q8_gemm: weights were packed for n=%d k=%d, called with n=%d k=%d",
                     (int) header.n, (int) header.k, (int) n, (int) k);
  }
  if ((size_t) header.n_pad != padded_n(n) || (size_t) header.k_pad != padded_k(k)) {
    return edge_fail(EDGE_ERR_PACKED_FORMAT, "edge_q8_gemm: corrupt packed header (n_pad %d, k_pad %d)",
                     (int) header.n_pad, (int) header.k_pad);
  }
  if (a_stride < (size_t) k) {
    return edge_fail(EDGE_ERR_SHAPE, "edge_q8_gemm: A row stride %zu is smaller than k = %d", a_stride, (int) k);
  }
  if (c_stride < (size_t) n) {
    return edge_fail(EDGE_ERR_SHAPE, "edge_q8_gemm: C row stride %zu is smaller than n = %d", c_stride, (int) n);
  }
  if (m == 0) {
    edge_clear_error();
    return EDGE_OK;
  }
  if (a == NULL || c == NULL) return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "edge_q8_gemm: A and C must not be NULL");

  const edge_isa isa = edge_isa_get();
  const edge_q8_gemm_config* config = edge_q8_gemm_get_config(isa);
  if (config == NULL) {
    return edge_fail(EDGE_ERR_UNSUPPORTED_ISA, "edge_q8_gemm: no kernels for ISA %s in this build", edge_isa_name(isa));
  }
  const size_t n_pad = padded_n(n), k_pad = padded_k(k);
  const int32_t* packed_bias = (const int32_t*) ((const uint8_t*) packed + sizeof(edge_q8_gemm_header));
  /* 7-bit weights take the ISA's w7 kernels where it has them (same results). */
  const int w7 = (header.flags & EDGE_Q8_GEMM_FLAG_W7) && config->gemm_w7 != NULL;
  const int32_t a_offset = a_dtype == EDGE_DTYPE_S8 ? (w7 ? config->a_offset_w7_s8 : config->a_offset_s8)
                                                    : (w7 ? config->a_offset_w7_u8 : config->a_offset_u8);
  const size_t nr = m == 1 ? config->gemv_nr : config->nr;
  const size_t n_tiles = (n_pad + nr - 1) / nr;
  /* One thread takes all rows of a panel per task (no splitting overhead);
   * a pool also splits the rows when there are few panels to share. */
  const size_t threads = pool != NULL ? (size_t) edge_threadpool_size(pool) : 1;
  size_t rows_per_task = (size_t) m;
  if (threads > 1 && n_tiles < 4 * threads) {
    rows_per_task = EDGE_MAX(ROWS_PER_TASK_MIN, EDGE_ROUND_UP((size_t) m * n_tiles / (4 * threads), config->mr));
  }
  gemm_context ctx = {
      .config = config,
      .kernel = w7 ? (m == 1 ? config->gemv_w7 : config->gemm_w7) : (m == 1 ? config->gemv : config->gemm),
      .fused_kernel = m == 1 ? config->gemv_fused : config->gemm_fused,
      .mr = m == 1 ? 1 : config->mr,
      .nr = nr,
      .m = (size_t) m, .n = (size_t) n, .k = (size_t) k, .n_pad = n_pad,
      .panel_stride = k_pad * EDGE_Q8_GEMM_NR,
      .rows_per_task = rows_per_task,
      .m_blocks = ((size_t) m + rows_per_task - 1) / rows_per_task,
      .a = a, .a_stride = a_stride,
      .a_signed = a_dtype == EDGE_DTYPE_S8,
      .zero_point_term = a_zero_point + a_offset,
      .bias = packed_bias,
      .colsum = packed_bias + n_pad,
      .weights = (const int8_t*) (packed_bias + 2 * n_pad),
      .c_dtype = c_dtype,
      .c = c,
      .c_row_bytes = c_stride * (c_dtype == EDGE_DTYPE_S32 ? sizeof(int32_t) : 1),
      .requant = c_dtype == EDGE_DTYPE_S32 ? NULL : requant,
  };
  edge_parallelize(pool, gemm_task, &ctx, n_tiles * ctx.m_blocks);
  edge_clear_error();
  return EDGE_OK;
}
