/* Direct depthwise conv2d (groups == in_c == out_c): argument checks, packing,
 * the indirection of each chunk of output pixels and the split of chunks across the pool.
 *
 * Stride and padding are handled by the indirection: for each output pixel the
 * driver lists the input pixel of every tap, or a short row of the zero
 * point for a tap in the padding, so one kernel per kernel size serves every
 * stride and padding. The batch is not part of the packed form.
 */
#include <string.h>

#include "q8-dwconv.h"

typedef struct edge_q8_dwconv_header {
  uint32_t magic;
  uint32_t version;
  int32_t in_h, in_w, channels, kernel_h, kernel_w;
  int32_t stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right;
  uint32_t reserved[3];
} edge_q8_dwconv_header;

_Static_assert(sizeof(edge_q8_dwconv_header) == 64, "the packed header is one cache line");

/* Output pixels whose indirection is built at once (on the stack): one
 * chunk, over as many rows as it takes, is one task of the pool, and the
 * kernels set up each block of channels once per chunk. */
#define DWCONV_PIXEL_CHUNK 64
/* The fewest pixels of a task when a pool splits a small image. */
#define DWCONV_PIXEL_CHUNK_MIN 16

static edge_status check_params(const edge_conv2d_params* p, int32_t* out_h, int32_t* out_w) {
  edge_status status = edge_conv2d_output_size(p, out_h, out_w);
  if (status != EDGE_OK) return status;
  const int square = p->kernel_h == p->kernel_w && (p->kernel_h == 3 || p->kernel_h == 5);
  const int stride_ok = p->stride_h == p->stride_w && (p->stride_h == 1 || p->stride_h == 2);
  if (p->groups != p->in_c || p->out_c != p->in_c || !square || !stride_ok || p->dilation_h != 1 ||
      p->dilation_w != 1) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT,
                     "dwconv2d supports groups == in_c == out_c, kernel 3x3 or 5x5, stride 1 or 2 (same in h and w) "
                     "and dilation 1; got groups %d, in_c %d, out_c %d, kernel %dx%d, stride %dx%d, dilation %dx%d: "
                     "use conv2d",
                     (int) p->groups, (int) p->in_c, (int) p->out_c, (int) p->kernel_h, (int) p->kernel_w,
                     (int) p->stride_h, (int) p->stride_w, (int) p->dilation_h, (int) p->dilation_w);
  }
  return EDGE_OK;
}

static void header_of(const edge_conv2d_params* p, edge_q8_dwconv_header* h) {
  memset(h, 0, sizeof(*h));
  h->magic = EDGE_Q8_DWCONV_MAGIC;
  h->version = EDGE_Q8_DWCONV_VERSION;
  h->in_h = p->in_h, h->in_w = p->in_w, h->channels = p->in_c;
  h->kernel_h = p->kernel_h, h->kernel_w = p->kernel_w;
  h->stride_h = p->stride_h, h->stride_w = p->stride_w;
  h->pad_top = p->pad_top, h->pad_left = p->pad_left, h->pad_bottom = p->pad_bottom, h->pad_right = p->pad_right;
}

static size_t packed_size_of(const edge_conv2d_params* p) {
  const size_t blocks = ((size_t) p->in_c + EDGE_Q8_DWCONV_CB - 1) / EDGE_Q8_DWCONV_CB;
  const size_t taps = (size_t) p->kernel_h * (size_t) p->kernel_w;
  return sizeof(edge_q8_dwconv_header) + blocks * edge_q8_dwconv_block_bytes(taps);
}

size_t edge_q8_dwconv2d_packed_size(const edge_conv2d_params* p) {
  int32_t out_h, out_w;
  if (check_params(p, &out_h, &out_w) != EDGE_OK) return 0;
  return packed_size_of(p);
}

edge_status edge_q8_dwconv2d_pack(const edge_conv2d_params* p, const int8_t* weights, const int32_t* bias,
                                  void* packed, size_t packed_size) {
  int32_t out_h, out_w;
  edge_status status = check_params(p, &out_h, &out_w);
  if (status != EDGE_OK) return status;
  if (weights == NULL || packed == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "dwconv2d pack: weights and packed must not be NULL");
  }
  if (!EDGE_IS_ALIGNED(packed)) {
    return edge_fail(EDGE_ERR_ALIGNMENT, "dwconv2d pack: packed buffer must be 64-byte aligned");
  }
  const size_t needed = packed_size_of(p);
  if (packed_size < needed) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "dwconv2d pack: packed_size %zu < %zu (edge_q8_dwconv2d_packed_size)",
                     packed_size, needed);
  }
  const size_t taps = (size_t) p->kernel_h * (size_t) p->kernel_w;
  const size_t channels = (size_t) p->in_c;
  for (size_t i = 0; i < channels * taps; i++) {
    if (weights[i] == INT8_MIN) {
      return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "dwconv2d pack: weight of channel %zu, tap %zu is -128: weights must "
                       "be in [-127, 127]", i / taps, i % taps);
    }
  }
  uint8_t* out = (uint8_t*) packed;
  memset(out, 0, needed);
  edge_q8_dwconv_header header;
  header_of(p, &header);
  memcpy(out, &header, sizeof(header));
  const size_t block_bytes = edge_q8_dwconv_block_bytes(taps);
  for (size_t c = 0; c < channels; c++) {
    uint8_t* block = out + sizeof(header) + (c / EDGE_Q8_DWCONV_CB) * block_bytes;
    const size_t lane = c % EDGE_Q8_DWCONV_CB;
    const int32_t b = bias == NULL ? 0 : bias[c];
    memcpy(block + lane * sizeof(int32_t), &b, sizeof(b));
    int8_t* w = (int8_t*) (block + EDGE_Q8_DWCONV_CB * sizeof(int32_t));
    for (size_t t = 0; t < taps; t++) { /* OIHW with I = 1: weights[c][ky][kx] */
      w[(t / 2) * (2 * EDGE_Q8_DWCONV_CB) + lane * 2 + t % 2] = weights[c * taps + t];
    }
  }
  return EDGE_OK;
}

typedef struct dwconv_context {
  const edge_conv2d_params* p;
  int32_t out_h, out_w;
  size_t chunk, chunks_per_image; /* output pixels per task, tasks per image */
  const uint8_t* x;
  const uint8_t* packed; /* the first block */
  uint8_t* y;
  edge_q8_dwconv_ukernel_fn kernel;
  edge_q8_dwconv_params params;
  size_t tap_offset[EDGE_Q8_DWCONV_MAX_TAPS]; /* bytes from a window's top-left input pixel to tap (ky, kx) */
} dwconv_context;

/* One chunk of consecutive output pixels (row-major, across rows) of one
 * image. A window inside the image lists its taps by fixed offsets from its
 * top-left pixel; only windows over the padding check each tap (the
 * indirection cost as much as the arithmetic when it checked every tap). */
static void dwconv_chunk(void* context, size_t index) {
  const dwconv_context* ctx = (const dwconv_context*) context;
  const edge_conv2d_params* p = ctx->p;
  const size_t n = index / ctx->chunks_per_image;
  const size_t out_pixels = (size_t) ctx->out_h * (size_t) ctx->out_w;
  const size_t px0 = (index % ctx->chunks_per_image) * ctx->chunk;
  const size_t pixels = EDGE_MIN(ctx->chunk, out_pixels - px0);
  const size_t channels = (size_t) p->in_c;
  const size_t taps = (size_t) p->kernel_h * (size_t) p->kernel_w;
  uint8_t zero[EDGE_Q8_DWCONV_ZERO_BYTES];
  memset(zero, (uint8_t) ctx->params.x_zero_point, sizeof(zero)); /* s8 zero points wrap to their byte */
  const uint8_t* image = ctx->x + n * (size_t) p->in_h * p->in_w * channels;
  const uint8_t* indirection[DWCONV_PIXEL_CHUNK * EDGE_Q8_DWCONV_MAX_TAPS];
  const uint8_t** ind = indirection;
  int32_t oy = (int32_t) (px0 / (size_t) ctx->out_w), ox = (int32_t) (px0 % (size_t) ctx->out_w);
  for (size_t i = 0; i < pixels; i++) {
    const int32_t iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
    if (iy0 >= 0 && iy0 + p->kernel_h <= p->in_h && ix0 >= 0 && ix0 + p->kernel_w <= p->in_w) {
      const uint8_t* corner = image + ((size_t) iy0 * p->in_w + (size_t) ix0) * channels;
      for (size_t t = 0; t < taps; t++) *ind++ = corner + ctx->tap_offset[t];
    } else {
      for (int32_t ky = 0; ky < p->kernel_h; ky++) {
        const int32_t iy = iy0 + ky;
        for (int32_t kx = 0; kx < p->kernel_w; kx++) {
          const int32_t ix = ix0 + kx;
          const int inside = iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w;
          *ind++ = inside ? image + ((size_t) iy * p->in_w + (size_t) ix) * channels : zero;
        }
      }
    }
    if (++ox == ctx->out_w) ox = 0, oy++;
  }
  uint8_t* y = ctx->y + (n * out_pixels + px0) * channels;
  ctx->kernel(pixels, channels, indirection, zero, ctx->packed, y, channels, &ctx->params);
}

edge_status edge_q8_dwconv2d(const edge_conv2d_params* p,
                             edge_dtype x_dtype, const void* x, int32_t x_zero_point,
                             const void* packed,
                             edge_dtype y_dtype, void* y, const edge_q8_requant* requant,
                             edge_threadpool* pool) {
  int32_t out_h, out_w;
  edge_status status = check_params(p, &out_h, &out_w);
  if (status != EDGE_OK) return status;
  if ((status = edge_check_q8_dtype(x_dtype, "dwconv2d input dtype")) != EDGE_OK) return status;
  if ((status = edge_check_q8_dtype(y_dtype, "dwconv2d output dtype")) != EDGE_OK) return status;
  if ((status = edge_check_requant(requant, p->out_c, y_dtype)) != EDGE_OK) return status;
  if (x_zero_point < edge_dtype_min(x_dtype) || x_zero_point > edge_dtype_max(x_dtype)) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "dwconv2d: input zero point %d outside [%d, %d]", (int) x_zero_point,
                     (int) edge_dtype_min(x_dtype), (int) edge_dtype_max(x_dtype));
  }
  if (x == NULL || packed == NULL || y == NULL) {
    return edge_fail(EDGE_ERR_INVALID_ARGUMENT, "dwconv2d: x, packed and y must not be NULL");
  }
  if (!EDGE_IS_ALIGNED(packed)) {
    return edge_fail(EDGE_ERR_ALIGNMENT, "dwconv2d: packed weights must be 64-byte aligned");
  }
  edge_q8_dwconv_header expected, found;
  header_of(p, &expected);
  memcpy(&found, packed, sizeof(found));
  if (found.magic != EDGE_Q8_DWCONV_MAGIC || found.version != EDGE_Q8_DWCONV_VERSION) {
    return edge_fail(EDGE_ERR_PACKED_FORMAT,
                     "dwconv2d: not a dwconv2d packed buffer of version %d (magic %08x, version %u)",
                     EDGE_Q8_DWCONV_VERSION, (unsigned) found.magic, (unsigned) found.version);
  }
  if (memcmp(&found, &expected, sizeof(found)) != 0) {
    return edge_fail(EDGE_ERR_SHAPE,
                     "dwconv2d: weights packed for another convolution (packed for in %dx%dx%d, kernel %dx%d, "
                     "stride %dx%d, pads %d,%d,%d,%d)",
                     (int) found.in_h, (int) found.in_w, (int) found.channels, (int) found.kernel_h,
                     (int) found.kernel_w, (int) found.stride_h, (int) found.stride_w, (int) found.pad_top,
                     (int) found.pad_left, (int) found.pad_bottom, (int) found.pad_right);
  }
  const edge_q8_dwconv_config* config = edge_q8_dwconv_get_config(edge_isa_get());
  if (config == NULL) {
    return edge_fail(EDGE_ERR_UNSUPPORTED_ISA, "dwconv2d: no kernels for ISA %s in this build",
                     edge_isa_name(edge_isa_get()));
  }
  /* Chunks as long as the stack buffer allows, shorter when a pool would
   * otherwise get fewer tasks than twice its threads. */
  const size_t out_pixels = (size_t) out_h * (size_t) out_w;
  const size_t threads = pool != NULL ? (size_t) edge_threadpool_size(pool) : 1;
  const size_t per_thread = (out_pixels * (size_t) p->batch + 2 * threads - 1) / (2 * threads);
  const size_t chunk = EDGE_MIN((size_t) DWCONV_PIXEL_CHUNK, EDGE_MAX((size_t) DWCONV_PIXEL_CHUNK_MIN, per_thread));
  dwconv_context ctx = {
      .p = p,
      .out_h = out_h,
      .out_w = out_w,
      .chunk = chunk,
      .chunks_per_image = (out_pixels + chunk - 1) / chunk,
      .x = (const uint8_t*) x,
      .packed = (const uint8_t*) packed + sizeof(edge_q8_dwconv_header),
      .y = (uint8_t*) y,
      .kernel = p->kernel_h == 3 ? config->dwconv3x3 : config->dwconv5x5,
      .params = {
          .multiplier = requant->multiplier,
          .shift = requant->shift,
          .x_zero_point = x_zero_point,
          .y_zero_point = requant->output_zero_point,
          .y_min = requant->output_min,
          .y_max = requant->output_max,
          .x_signed = x_dtype == EDGE_DTYPE_S8,
      },
  };
  for (int32_t ky = 0, t = 0; ky < p->kernel_h; ky++) {
    for (int32_t kx = 0; kx < p->kernel_w; kx++, t++) {
      ctx.tap_offset[t] = ((size_t) ky * (size_t) p->in_w + (size_t) kx) * (size_t) p->in_c;
    }
  }
  edge_parallelize(pool, dwconv_chunk, (void*) &ctx, (size_t) p->batch * ctx.chunks_per_image);
  edge_clear_error();
  return EDGE_OK;
}
