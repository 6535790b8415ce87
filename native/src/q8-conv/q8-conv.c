/* INT8 conv2d on NHWC tensors, lowered to the dense or the 2:4-sparse INT8 GEMM.
 *
 * Per group g the convolution is a GEMM:
 *   A[m][k]  = x at output pixel m (batch, oy, ox) and tap k = (ky, kx, c), c < in_c / groups
 *   W[n][k]  = weights[g * cout_g + n][c][ky][kx]  (OIHW reordered to the im2col K order)
 *   y[m][g * cout_g + n] = requantize(bias + sum_k (A - zp) * W)
 *
 * 1x1, stride-1, unpadded convolutions use x itself as A (a_stride = in_c).
 * Others copy tiles of im2col rows into the caller's workspace, padding taps
 * with the zero point (a real 0), so memory stays bounded whatever the image.
 *
 * Packed layout:
 *   edge_q8_conv_header                 128 bytes: the parameters it was packed for
 *   per group: a GEMM buffer (edge_q8_gemm_pack or edge_q8_gemm24_pack) starting 64-byte aligned
 * The batch is not part of the packed form: one packed buffer serves any batch.
 *
 * The dense (conv2d) and 2:4-sparse (conv2d24) convolutions share everything
 * here (geometry, weight reordering, im2col, tiling, threading) and differ only
 * in the GEMM they pack for and call: see conv_kind. The header's magic tells
 * the two packed forms apart, so neither runs the other's buffer.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define EDGE_Q8_CONV_MAGIC UINT32_C(0x56435145)   /* "EQCV" little-endian */
#define EDGE_Q8_CONV24_MAGIC UINT32_C(0x34435145) /* "EQC4" little-endian */
#define EDGE_Q8_CONV_VERSION 1
#define EDGE_Q8_CONV_MAX_K 65536 /* the GEMM's K limit (edge/gemm.h) */
/* Target bytes of one im2col tile: a few rows of A that stay in L2 while the GEMM streams W. */
#define EDGE_Q8_CONV_TILE_BYTES (128 * 1024)
#define EDGE_Q8_CONV_MIN_TILE_ROWS 16
#define EDGE_Q8_CONV_MAX_TILE_ROWS 512

typedef struct edge_q8_conv_header {
  uint32_t magic;
  uint32_t version;
  int32_t in_h, in_w, in_c, out_c, kernel_h, kernel_w;
  int32_t stride_h, stride_w, dilation_h, dilation_w;
  int32_t pad_top, pad_left, pad_bottom, pad_right, groups;
  uint32_t reserved[15];
} edge_q8_conv_header;

_Static_assert(sizeof(edge_q8_conv_header) == 128, "the packed header keeps the groups' buffers 64-byte aligned");

/* What the dense and the 2:4-sparse convolution do differently: the GEMM of
 * each group (edge/gemm.h; the two families share one signature). */
typedef struct conv_kind {
  const char* name; /* "conv2d" or "conv2d24", in error details */
  uint32_t magic;
  size_t (*packed_size)(int32_t n, int32_t k);
  edge_status (*pack)(int32_t n, int32_t k, const int8_t* weights, const int32_t* bias, void* packed,
                      size_t packed_size);
  edge_status (*gemm)(int32_t m, int32_t n, int32_t k, edge_dtype a_dtype, const void* a, size_t a_stride,
                      int32_t a_zero_point, const void* packed, edge_dtype c_dtype, void* c, size_t c_stride,
                      const edge_q8_requant* requant, edge_threadpool* pool);
} conv_kind;

static const conv_kind dense_kind = {"conv2d", EDGE_Q8_CONV_MAGIC, edge_q8_gemm_packed_size, edge_q8_gemm_pack,
                                     edge_q8_gemm};
static const conv_kind sparse_kind = {"conv2d24", EDGE_Q8_CONV24_MAGIC, edge_q8_gemm24_packed_size,
                                      edge_q8_gemm24_pack, edge_q8_gemm24};

static int64_t effective_kernel(int32_t kernel, int32_t dilation) {
  return ((int64_t) kernel - 1) * dilation + 1;
}

edge_status edge_conv2d_output_size(const edge_conv2d_params* p, int32_t* out_h, int32_t* out_w) {
  if (p == NULL || out_h == NULL || out_w == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "conv2d: params, out_h and out_w must not be NULL");
  }
  const struct { const char* name; int32_t value; int32_t min; } fields[] = {
      {"batch", p->batch, 1},         {"in_h", p->in_h, 1},
      {"in_w", p->in_w, 1},           {"in_c", p->in_c, 1},
      {"out_c", p->out_c, 1},         {"kernel_h", p->kernel_h, 1},
      {"kernel_w", p->kernel_w, 1},   {"stride_h", p->stride_h, 1},
      {"stride_w", p->stride_w, 1},   {"dilation_h", p->dilation_h, 1},
      {"dilation_w", p->dilation_w, 1}, {"pad_top", p->pad_top, 0},
      {"pad_left", p->pad_left, 0},   {"pad_bottom", p->pad_bottom, 0},
      {"pad_right", p->pad_right, 0}, {"groups", p->groups, 1},
  };
  for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
    if (fields[i].value < fields[i].min) {
      return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "conv2d: %s = %d must be >= %d", fields[i].name,
                       (int) fields[i].value, (int) fields[i].min);
    }
  }
  if (p->in_c % p->groups != 0 || p->out_c % p->groups != 0) {
    return edge_fail(EDGE_ERR_SHAPE, "conv2d: groups = %d must divide in_c = %d and out_c = %d",
                     (int) p->groups, (int) p->in_c, (int) p->out_c);
  }
  const int64_t padded_h = (int64_t) p->in_h + p->pad_top + p->pad_bottom;
  const int64_t padded_w = (int64_t) p->in_w + p->pad_left + p->pad_right;
  const int64_t kh = effective_kernel(p->kernel_h, p->dilation_h);
  const int64_t kw = effective_kernel(p->kernel_w, p->dilation_w);
  if (kh > padded_h) {
    return edge_fail(EDGE_ERR_SHAPE, "conv2d: kernel_h = %d (dilated %lld) is taller than the padded input (%lld rows)",
                     (int) p->kernel_h, (long long) kh, (long long) padded_h);
  }
  if (kw > padded_w) {
    return edge_fail(EDGE_ERR_SHAPE, "conv2d: kernel_w = %d (dilated %lld) is wider than the padded input (%lld columns)",
                     (int) p->kernel_w, (long long) kw, (long long) padded_w);
  }
  const int64_t oh = (padded_h - kh) / p->stride_h + 1;
  const int64_t ow = (padded_w - kw) / p->stride_w + 1;
  if (oh > INT32_MAX || ow > INT32_MAX) {
    return edge_fail(EDGE_ERR_SHAPE, "conv2d: output %lldx%lld too large", (long long) oh, (long long) ow);
  }
  *out_h = (int32_t) oh;
  *out_w = (int32_t) ow;
  return EDGE_OK;
}

/* ---- shared by pack, workspace and run ---- */

typedef struct conv_geometry {
  int32_t out_h, out_w;
  int32_t cin_g, cout_g; /* channels of one group */
  int32_t k;             /* GEMM K of one group: kernel_h * kernel_w * cin_g */
  size_t group_packed;   /* bytes of one group's GEMM buffer, rounded to 64 */
  int direct;            /* 1x1, stride 1, unpadded: A is x itself */
} conv_geometry;

static edge_status conv_geometry_of(const edge_conv2d_params* p, const conv_kind* kind, conv_geometry* g) {
  edge_status status = edge_conv2d_output_size(p, &g->out_h, &g->out_w);
  if (status != EDGE_OK) return status;
  g->cin_g = p->in_c / p->groups;
  g->cout_g = p->out_c / p->groups;
  const int64_t k = (int64_t) p->kernel_h * p->kernel_w * g->cin_g;
  if (k > EDGE_Q8_CONV_MAX_K) {
    return edge_fail(EDGE_ERR_SHAPE, "conv2d: kernel_h * kernel_w * in_c / groups = %lld exceeds %d",
                     (long long) k, EDGE_Q8_CONV_MAX_K);
  }
  g->k = (int32_t) k;
  g->group_packed = EDGE_ROUND_UP(kind->packed_size(g->cout_g, g->k), (size_t) EDGE_ALIGNMENT);
  g->direct = p->kernel_h == 1 && p->kernel_w == 1 && p->stride_h == 1 && p->stride_w == 1 &&
              p->pad_top == 0 && p->pad_left == 0 && p->pad_bottom == 0 && p->pad_right == 0;
  return EDGE_OK;
}

static void header_of(const edge_conv2d_params* p, const conv_kind* kind, edge_q8_conv_header* h) {
  memset(h, 0, sizeof(*h));
  h->magic = kind->magic;
  h->version = EDGE_Q8_CONV_VERSION;
  h->in_h = p->in_h, h->in_w = p->in_w, h->in_c = p->in_c, h->out_c = p->out_c;
  h->kernel_h = p->kernel_h, h->kernel_w = p->kernel_w;
  h->stride_h = p->stride_h, h->stride_w = p->stride_w;
  h->dilation_h = p->dilation_h, h->dilation_w = p->dilation_w;
  h->pad_top = p->pad_top, h->pad_left = p->pad_left, h->pad_bottom = p->pad_bottom, h->pad_right = p->pad_right;
  h->groups = p->groups;
}

/* Rows of A per im2col tile, independent of the batch beyond capping at the
 * whole output (so a smaller batch never needs more workspace). */
static size_t tile_rows(const edge_conv2d_params* p, const conv_geometry* g) {
  size_t rows = EDGE_Q8_CONV_TILE_BYTES / (size_t) g->k;
  rows = EDGE_MAX(rows, (size_t) EDGE_Q8_CONV_MIN_TILE_ROWS);
  rows = EDGE_MIN(rows, (size_t) EDGE_Q8_CONV_MAX_TILE_ROWS);
  const size_t m = (size_t) p->batch * (size_t) g->out_h * (size_t) g->out_w;
  return EDGE_MIN(rows, m);
}

static size_t tile_bytes(const edge_conv2d_params* p, const conv_geometry* g) {
  return EDGE_ROUND_UP(tile_rows(p, g) * (size_t) g->k, (size_t) EDGE_ALIGNMENT);
}

static size_t packed_size_of(const edge_conv2d_params* p, const conv_kind* kind) {
  conv_geometry g;
  if (conv_geometry_of(p, kind, &g) != EDGE_OK) return 0;
  return sizeof(edge_q8_conv_header) + (size_t) p->groups * g.group_packed;
}

/* The 2:4 check of one group's reordered weights, before the GEMM's own: the
 * detail names the conv's output channel, group and kernel tap, not a GEMM row. */
static edge_status check_2_4(const edge_conv2d_params* p, const conv_geometry* g, int32_t grp,
                             const int8_t* reordered) {
  for (int32_t n = 0; n < g->cout_g; n++) {
    const int8_t* row = reordered + (size_t) n * (size_t) g->k;
    for (int32_t k0 = 0; k0 < g->k; k0 += 4) {
      const int32_t k1 = EDGE_MIN(k0 + 4, g->k);
      int nonzeros = 0;
      for (int32_t i = k0; i < k1; i++) nonzeros += row[i] != 0;
      if (nonzeros > 2) {
        const int32_t tap = k0 / g->cin_g, c = k0 % g->cin_g;
        return edge_fail(EDGE_ERR_NOT_2_4_SPARSE,
                         "conv2d24 pack: output channel %d (group %d) is not 2:4 along (kernel_h, kernel_w, in_c): "
                         "weights %d..%d of that order (from ky %d, kx %d, input channel %d of the group) have %d "
                         "non-zeros, at most 2 in every 4",
                         (int) (grp * g->cout_g + n), (int) grp, (int) k0, (int) (k1 - 1),
                         (int) (tap / p->kernel_w), (int) (tap % p->kernel_w), (int) c, nonzeros);
      }
    }
  }
  return EDGE_OK;
}

static edge_status pack_conv(const edge_conv2d_params* p, const conv_kind* kind, const int8_t* weights,
                             const int32_t* bias, void* packed, size_t packed_size) {
  conv_geometry g;
  edge_status status = conv_geometry_of(p, kind, &g);
  if (status != EDGE_OK) return status;
  if (weights == NULL || packed == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s pack: weights and packed must not be NULL", kind->name);
  }
  if (!EDGE_IS_ALIGNED(packed)) {
    return edge_fail(EDGE_ERR_ALIGNMENT, "%s pack: packed buffer must be 64-byte aligned", kind->name);
  }
  const size_t needed = packed_size_of(p, kind);
  if (packed_size < needed) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s pack: packed_size %zu < %zu (edge_q8_%s_packed_size)",
                     kind->name, packed_size, needed, kind->name);
  }
  /* One group's weights in the im2col order [cout_g][kh][kw][cin_g]. */
  const size_t group_weights = (size_t) g.cout_g * (size_t) g.k;
  int8_t* reordered = (int8_t*) malloc(group_weights);
  if (reordered == NULL) {
    return edge_fail(EDGE_ERR_OUT_OF_MEMORY, "%s pack: %zu bytes for reordering the weights", kind->name,
                     group_weights);
  }
  uint8_t* out = (uint8_t*) packed;
  edge_q8_conv_header header;
  header_of(p, kind, &header);
  memset(out, 0, sizeof(header)); /* written last, on success only */
  const size_t taps = (size_t) p->kernel_h * (size_t) p->kernel_w;
  for (int32_t grp = 0; grp < p->groups && status == EDGE_OK; grp++) {
    const int8_t* w = weights + (size_t) grp * group_weights; /* OIHW: [cout_g][cin_g][kh][kw] */
    for (size_t n = 0; n < (size_t) g.cout_g; n++) {
      for (size_t c = 0; c < (size_t) g.cin_g; c++) {
        for (size_t t = 0; t < taps; t++) {
          reordered[n * g.k + t * g.cin_g + c] = w[(n * g.cin_g + c) * taps + t];
        }
      }
    }
    if (kind == &sparse_kind && (status = check_2_4(p, &g, grp, reordered)) != EDGE_OK) break;
    const int32_t* group_bias = bias == NULL ? NULL : bias + (size_t) grp * g.cout_g;
    status = kind->pack(g.cout_g, g.k, reordered, group_bias, out + sizeof(header) + (size_t) grp * g.group_packed,
                        g.group_packed);
    if (status != EDGE_OK) {
      /* Keep the GEMM's detail (which weight is out of range) and name the group. */
      char detail[256];
      strncpy(detail, edge_last_error(), sizeof(detail) - 1);
      detail[sizeof(detail) - 1] = '\0';
      status = edge_fail(status, "%s pack, group %d (output channels %d..%d): %s", kind->name, (int) grp,
                         (int) (grp * g.cout_g), (int) ((grp + 1) * g.cout_g - 1), detail);
    }
  }
  free(reordered);
  /* A buffer whose packing failed keeps a zero header, which the run refuses. */
  if (status == EDGE_OK) memcpy(out, &header, sizeof(header));
  return status;
}

size_t edge_q8_conv2d_packed_size(const edge_conv2d_params* p) { return packed_size_of(p, &dense_kind); }

edge_status edge_q8_conv2d_pack(const edge_conv2d_params* p, const int8_t* weights, const int32_t* bias,
                                void* packed, size_t packed_size) {
  return pack_conv(p, &dense_kind, weights, bias, packed, packed_size);
}

size_t edge_q8_conv2d24_packed_size(const edge_conv2d_params* p) { return packed_size_of(p, &sparse_kind); }

edge_status edge_q8_conv2d24_pack(const edge_conv2d_params* p, const int8_t* weights, const int32_t* bias,
                                  void* packed, size_t packed_size) {
  return pack_conv(p, &sparse_kind, weights, bias, packed, packed_size);
}

/* The same for conv2d and conv2d24: the im2col tiles do not depend on the GEMM. */
size_t edge_q8_conv2d_workspace_size(const edge_conv2d_params* p, int32_t num_threads) {
  conv_geometry g;
  if (conv_geometry_of(p, &dense_kind, &g) != EDGE_OK || g.direct) return 0;
  return tile_bytes(p, &g) * (size_t) EDGE_MAX(num_threads, 1);
}

/* ---- run ---- */

typedef struct conv_context {
  const conv_kind* kind;
  const edge_conv2d_params* p;
  const conv_geometry* g;
  edge_dtype x_dtype;
  const uint8_t* x;
  int32_t x_zero_point;
  const uint8_t* packed; /* the first group's GEMM buffer */
  edge_dtype y_dtype;
  uint8_t* y;
  size_t y_elem;
  const edge_q8_requant* requant;
  uint8_t* workspace;
  size_t tile_bytes;
  size_t tile_rows;
  size_t tiles_per_group;
  size_t num_tiles; /* groups * tiles_per_group */
  size_t num_tasks; /* tasks of the pool; task i runs tiles i, i + num_tasks, ... */
  edge_threadpool* gemm_pool;
  atomic_int status; /* a failure of a tile's GEMM on a worker (its detail stays on that thread) */
} conv_context;

/* Copies n bytes, 8 <= n <= 32 without a call: overlapping 8- or 16-byte
 * moves (a 3-channel image's kernel row is 9 bytes for 3x3, 21 for 7x7, which a
 * memcpy call would cost more than). */
static inline void copy_bytes(uint8_t* dst, const uint8_t* src, size_t n) {
  if (n >= 8 && n <= 16) {
    uint64_t head, tail;
    memcpy(&head, src, 8);
    memcpy(&tail, src + n - 8, 8);
    memcpy(dst, &head, 8);
    memcpy(dst + n - 8, &tail, 8);
  } else if (n > 16 && n <= 32) {
    uint8_t head[16], tail[16];
    memcpy(head, src, 16);
    memcpy(tail, src + n - 16, 16);
    memcpy(dst, head, 16);
    memcpy(dst + n - 16, tail, 16);
  } else {
    memcpy(dst, src, n);
  }
}

/* im2col rows [m0, m0 + rows) of group grp into a (rows x k, row-major).
 * With one group and no dilation along x, a kernel row's taps are adjacent
 * in x (NHWC), so a kernel row inside the image is one copy of
 * kernel_w * in_c bytes; taps in the padding take the zero point. */
static void im2col(const conv_context* ctx, int32_t grp, size_t m0, size_t rows, uint8_t* a) {
  const edge_conv2d_params* p = ctx->p;
  const conv_geometry* g = ctx->g;
  const uint8_t pad = (uint8_t) ctx->x_zero_point; /* s8 zero points wrap to their byte */
  const size_t cin_g = (size_t) g->cin_g;
  const size_t pixels = (size_t) g->out_h * (size_t) g->out_w;
  const size_t kernel_row = (size_t) p->kernel_w * cin_g;
  const int rows_contiguous = p->groups == 1 && p->dilation_w == 1;
  size_t n = m0 / pixels, oy = (m0 % pixels) / (size_t) g->out_w, ox = m0 % (size_t) g->out_w;
  for (size_t r = 0; r < rows; r++) {
    const uint8_t* image = ctx->x + n * (size_t) p->in_h * p->in_w * p->in_c + (size_t) grp * cin_g;
    uint8_t* row = a + r * (size_t) g->k;
    const int64_t ix0 = (int64_t) ox * p->stride_w - p->pad_left;
    const int inside_x = ix0 >= 0 && ix0 + (int64_t) (p->kernel_w - 1) * p->dilation_w < p->in_w;
    for (int32_t ky = 0; ky < p->kernel_h; ky++, row += kernel_row) {
      const int64_t iy = (int64_t) oy * p->stride_h - p->pad_top + (int64_t) ky * p->dilation_h;
      if (iy < 0 || iy >= p->in_h) {
        memset(row, pad, kernel_row);
        continue;
      }
      const uint8_t* line = image + (size_t) iy * p->in_w * p->in_c;
      if (inside_x && rows_contiguous) {
        copy_bytes(row, line + (size_t) ix0 * p->in_c, kernel_row);
        continue;
      }
      for (int32_t kx = 0; kx < p->kernel_w; kx++) {
        const int64_t ix = ix0 + (int64_t) kx * p->dilation_w;
        if (ix < 0 || ix >= p->in_w) {
          memset(row + (size_t) kx * cin_g, pad, cin_g);
        } else {
          memcpy(row + (size_t) kx * cin_g, line + (size_t) ix * p->in_c, cin_g);
        }
      }
    }
    if (++ox == (size_t) g->out_w) { /* the next output pixel, without divisions */
      ox = 0;
      if (++oy == (size_t) g->out_h) oy = 0, n++;
    }
  }
}

/* GEMM of rows [m0, m0 + rows) of group grp, with A at a (stride a_stride). */
static edge_status group_gemm(const conv_context* ctx, int32_t grp, size_t m0, size_t rows, const uint8_t* a,
                              size_t a_stride, edge_threadpool* pool) {
  const int32_t cout_g = ctx->g->cout_g;
  const size_t channel0 = (size_t) grp * cout_g;
  edge_q8_requant rq;
  const edge_q8_requant* rq_ptr = NULL;
  if (ctx->y_dtype != EDGE_DTYPE_S32) {
    rq = *ctx->requant;
    rq.multiplier += channel0;
    rq.shift += channel0;
    rq_ptr = &rq;
  }
  uint8_t* c = ctx->y + (m0 * (size_t) ctx->p->out_c + channel0) * ctx->y_elem;
  return ctx->kind->gemm((int32_t) rows, cout_g, ctx->g->k, ctx->x_dtype, a, a_stride, ctx->x_zero_point,
                         ctx->packed + (size_t) grp * ctx->g->group_packed, ctx->y_dtype, c,
                         (size_t) ctx->p->out_c, rq_ptr, pool);
}

static edge_status run_tile(conv_context* ctx, size_t tile, uint8_t* a, edge_threadpool* pool) {
  const int32_t grp = (int32_t) (tile / ctx->tiles_per_group);
  const size_t m0 = (tile % ctx->tiles_per_group) * ctx->tile_rows;
  const size_t m = (size_t) ctx->p->batch * (size_t) ctx->g->out_h * (size_t) ctx->g->out_w;
  const size_t rows = EDGE_MIN(ctx->tile_rows, m - m0);
  im2col(ctx, grp, m0, rows, a);
  return group_gemm(ctx, grp, m0, rows, a, (size_t) ctx->g->k, pool);
}

static void conv_task(void* context, size_t task) {
  conv_context* ctx = (conv_context*) context;
  uint8_t* a = ctx->workspace + task * ctx->tile_bytes;
  for (size_t tile = task; tile < ctx->num_tiles; tile += ctx->num_tasks) {
    const edge_status status = run_tile(ctx, tile, a, NULL);
    /* Arguments were checked up front, so this is not expected; keep the first failure. */
    if (status != EDGE_OK) atomic_store(&ctx->status, (int) status);
  }
}

static edge_status run_conv(const conv_kind* kind, const edge_conv2d_params* p, edge_dtype x_dtype, const void* x,
                            int32_t x_zero_point, const void* packed, edge_dtype y_dtype, void* y,
                            const edge_q8_requant* requant, void* workspace, size_t workspace_size,
                            edge_threadpool* pool) {
  const char* name = kind->name;
  conv_geometry g;
  edge_status status = conv_geometry_of(p, kind, &g);
  if (status != EDGE_OK) return status;
  if ((status = edge_check_q8_dtype(x_dtype, "conv2d input dtype")) != EDGE_OK) return status;
  if (y_dtype != EDGE_DTYPE_U8 && y_dtype != EDGE_DTYPE_S8 && y_dtype != EDGE_DTYPE_S32) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s output dtype must be u8, s8 or s32 (got %d)", name,
                     (int) y_dtype);
  }
  if ((status = edge_check_requant(requant, p->out_c, y_dtype)) != EDGE_OK) return status;
  if (x_zero_point < edge_dtype_min(x_dtype) || x_zero_point > edge_dtype_max(x_dtype)) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: input zero point %d outside [%d, %d]", name, (int) x_zero_point,
                     (int) edge_dtype_min(x_dtype), (int) edge_dtype_max(x_dtype));
  }
  if (x == NULL || packed == NULL || y == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "%s: x, packed and y must not be NULL", name);
  }
  if (!EDGE_IS_ALIGNED(packed)) {
    return edge_fail(EDGE_ERR_ALIGNMENT, "%s: packed weights must be 64-byte aligned", name);
  }
  edge_q8_conv_header expected, found;
  header_of(p, kind, &expected);
  memcpy(&found, packed, sizeof(found));
  if (found.magic != kind->magic || found.version != EDGE_Q8_CONV_VERSION) {
    const char* hint = found.magic == dense_kind.magic    ? " (packed by edge_q8_conv2d_pack)"
                       : found.magic == sparse_kind.magic ? " (packed by edge_q8_conv2d24_pack)"
                                                          : "";
    return edge_fail(EDGE_ERR_PACKED_FORMAT, "%s: not a %s packed buffer of version %d (magic %08x, version %u)%s",
                     name, name, EDGE_Q8_CONV_VERSION, (unsigned) found.magic, (unsigned) found.version, hint);
  }
  if (memcmp(&found, &expected, sizeof(found)) != 0) {
    return edge_fail(EDGE_ERR_SHAPE,
                     "%s: weights packed for another convolution (packed for in %dx%dx%d, out_c %d, kernel %dx%d, "
                     "stride %dx%d, dilation %dx%d, pads %d,%d,%d,%d, groups %d)",
                     name, (int) found.in_h, (int) found.in_w, (int) found.in_c, (int) found.out_c, (int) found.kernel_h,
                     (int) found.kernel_w, (int) found.stride_h, (int) found.stride_w, (int) found.dilation_h,
                     (int) found.dilation_w, (int) found.pad_top, (int) found.pad_left, (int) found.pad_bottom,
                     (int) found.pad_right, (int) found.groups);
  }
  const int32_t num_threads = edge_threadpool_size(pool);
  const size_t needed = edge_q8_conv2d_workspace_size(p, num_threads);
  if (needed > 0 && (workspace == NULL || workspace_size < needed)) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT,
                     "%s: workspace of %zu bytes%s is too small: %zu needed for %d threads "
                     "(edge_q8_conv2d_workspace_size)",
                     name, workspace == NULL ? (size_t) 0 : workspace_size, workspace == NULL ? " (NULL)" : "", needed,
                     (int) num_threads);
  }

  conv_context ctx = {
      .kind = kind, .p = p, .g = &g, .x_dtype = x_dtype, .x = (const uint8_t*) x, .x_zero_point = x_zero_point,
      .packed = (const uint8_t*) packed + sizeof(edge_q8_conv_header), .y_dtype = y_dtype, .y = (uint8_t*) y,
      .y_elem = y_dtype == EDGE_DTYPE_S32 ? 4 : 1, .requant = requant, .workspace = (uint8_t*) workspace,
  };
  atomic_init(&ctx.status, EDGE_OK);
  const size_t m = (size_t) p->batch * (size_t) g.out_h * (size_t) g.out_w;
  if (g.direct) {
    for (int32_t grp = 0; grp < p->groups && status == EDGE_OK; grp++) {
      status = group_gemm(&ctx, grp, 0, m, ctx.x + (size_t) grp * g.cin_g, (size_t) p->in_c, pool);
    }
    if (status == EDGE_OK) edge_clear_error();
    return status;
  }
  ctx.tile_rows = tile_rows(p, &g);
  ctx.tile_bytes = tile_bytes(p, &g);
  ctx.tiles_per_group = (m + ctx.tile_rows - 1) / ctx.tile_rows;
  ctx.num_tiles = ctx.tiles_per_group * (size_t) p->groups;
  if (ctx.num_tiles >= (size_t) num_threads) {
    /* Enough tiles: each thread im2cols and multiplies its own tiles. */
    ctx.num_tasks = (size_t) num_threads;
    edge_parallelize(pool, conv_task, &ctx, ctx.num_tasks);
    status = (edge_status) atomic_load(&ctx.status);
    if (status != EDGE_OK) return edge_fail(status, "%s: the GEMM of a tile failed on a worker thread", name);
  } else {
    /* Few large tiles (small images): one at a time, the GEMM splits each across the pool. */
    for (size_t tile = 0; tile < ctx.num_tiles && status == EDGE_OK; tile++) {
      status = run_tile(&ctx, tile, ctx.workspace, pool);
    }
  }
  if (status == EDGE_OK) edge_clear_error();
  return status;
}

edge_status edge_q8_conv2d(const edge_conv2d_params* p, edge_dtype x_dtype, const void* x, int32_t x_zero_point,
                           const void* packed, edge_dtype y_dtype, void* y, const edge_q8_requant* requant,
                           void* workspace, size_t workspace_size, edge_threadpool* pool) {
  return run_conv(&dense_kind, p, x_dtype, x, x_zero_point, packed, y_dtype, y, requant, workspace, workspace_size,
                  pool);
}

edge_status edge_q8_conv2d24(const edge_conv2d_params* p, edge_dtype x_dtype, const void* x, int32_t x_zero_point,
                             const void* packed, edge_dtype y_dtype, void* y, const edge_q8_requant* requant,
                             void* workspace, size_t workspace_size, edge_threadpool* pool) {
  return run_conv(&sparse_kind, p, x_dtype, x, x_zero_point, packed, y_dtype, y, requant, workspace,
                  workspace_size, pool);
}
