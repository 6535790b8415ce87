/* AVX2: no u8 x s8 instruction is exact here (vpmaddubsw saturates its int16
 * pair sums), so both operands are widened to int16 and multiplied with
 * vpmaddwd, whose int32 pair sums are exact. Up to 4 rows x 16 channels per
 * block, 4 k a step.
 *
 * A 16-byte load of a packed group widens to 4 channels x 4 k: pairs
 * (k0 k1), (k2 k3) of each channel. Two vshufps per 8 channels regroup those
 * pairs into one vector of (k0 k1) and one of (k2 k3) for 8 channels, so that
 * a row of A needs only its (a0 a1) and (a2 a3) pairs broadcast and each
 * channel keeps a single int32 lane: 2 accumulators per row instead of 4.
 * With 4 rows, 8 accumulators + 4 weight vectors + 2 of A + 1 product fit in
 * the 16 ymm registers (the straightforward layout, 16 accumulators, spills).
 * The regrouping costs 4 shuffles a step, shared by the rows (a single row
 * skips it, see tile_pairs). The lanes hold channels (0 1 4 5 | 2 3 6 7) of
 * each 8; one vpermq per vector at the end restores the order. */
#include <immintrin.h>

#include "q8-gemm.h"

/* One row of a step: its 4 bytes of A times the regrouped weights. */
static inline __attribute__((always_inline)) void row_step(int SIGNED, const uint8_t* a, __m256i lo01, __m256i lo23,
                                                           __m256i hi01, __m256i hi23, __m256i* acc_lo,
                                                           __m256i* acc_hi) {
  /* vbroadcastss is a plain load; widened, the int32 lanes are (a0 a1), (a2 a3), ... */
  const __m128i bytes = _mm_castps_si128(_mm_broadcast_ss((const float*) (const void*) a));
  const __m256i va = SIGNED ? _mm256_cvtepi8_epi16(bytes) : _mm256_cvtepu8_epi16(bytes);
  const __m256i a01 = _mm256_shuffle_epi32(va, _MM_SHUFFLE(0, 0, 0, 0));
  const __m256i a23 = _mm256_shuffle_epi32(va, _MM_SHUFFLE(1, 1, 1, 1));
  *acc_lo = _mm256_add_epi32(*acc_lo, _mm256_madd_epi16(a01, lo01));
  *acc_hi = _mm256_add_epi32(*acc_hi, _mm256_madd_epi16(a01, hi01));
  /* Keep the sums in this order: re-associated, (p01 + p23) needs one more
   * register than the 16 and gcc spills an accumulator. */
  __asm__("" : "+x"(*acc_lo), "+x"(*acc_hi));
  *acc_lo = _mm256_add_epi32(*acc_lo, _mm256_madd_epi16(a23, lo23));
  *acc_hi = _mm256_add_epi32(*acc_hi, _mm256_madd_epi16(a23, hi23));
}

/* Accumulators as named variables, not an array: gcc keeps those in
 * registers, while it leaves part of an array of 8 vectors on the stack. */
typedef struct row_acc {
  __m256i lo, hi; /* channels 0-7 and 8-15, lanes in (0 1 4 5 | 2 3 6 7) order */
} row_acc;

/* One step: 4 k of MR rows (a0..a3) times the 16 channels of a group. */
static inline __attribute__((always_inline)) void step(size_t MR, int SIGNED, const uint8_t* a0, const uint8_t* a1,
                                                       const uint8_t* a2, const uint8_t* a3, const int8_t* group,
                                                       row_acc* c0, row_acc* c1, row_acc* c2, row_acc* c3) {
  /* Channels 4j..4j+3 as pairs (k0 k1), (k2 k3). */
  const __m256i w0 = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*) group));
  const __m256i w1 = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*) (group + 16)));
  const __m256i w2 = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*) (group + 32)));
  const __m256i w3 = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*) (group + 48)));
#define EDGE_PAIRS(x, y, sel) \
  _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(x), _mm256_castsi256_ps(y), sel))
  const __m256i lo01 = EDGE_PAIRS(w0, w1, _MM_SHUFFLE(2, 0, 2, 0)); /* (k0 k1) of channels 0-7 */
  const __m256i lo23 = EDGE_PAIRS(w0, w1, _MM_SHUFFLE(3, 1, 3, 1)); /* (k2 k3) of channels 0-7 */
  const __m256i hi01 = EDGE_PAIRS(w2, w3, _MM_SHUFFLE(2, 0, 2, 0)); /* the same for 8-15 */
  const __m256i hi23 = EDGE_PAIRS(w2, w3, _MM_SHUFFLE(3, 1, 3, 1));
#undef EDGE_PAIRS
  row_step(SIGNED, a0, lo01, lo23, hi01, hi23, &c0->lo, &c0->hi);
  if (MR > 1) row_step(SIGNED, a1, lo01, lo23, hi01, hi23, &c1->lo, &c1->hi);
  if (MR > 2) row_step(SIGNED, a2, lo01, lo23, hi01, hi23, &c2->lo, &c2->hi);
  if (MR > 3) row_step(SIGNED, a3, lo01, lo23, hi01, hi23, &c3->lo, &c3->hi);
}

/* Adds init and stores one row, restoring the channel order: 64-bit lanes
 * (0 1, 4 5, 2 3, 6 7) back to (0 1, 2 3, 4 5, 6 7). */
static inline void store_row(row_acc c, __m256i init_lo, __m256i init_hi, int32_t* out) {
  const __m256i lo = _mm256_permute4x64_epi64(c.lo, _MM_SHUFFLE(3, 1, 2, 0));
  const __m256i hi = _mm256_permute4x64_epi64(c.hi, _MM_SHUFFLE(3, 1, 2, 0));
  _mm256_storeu_si256((__m256i*) out, _mm256_add_epi32(lo, init_lo));
  _mm256_storeu_si256((__m256i*) (out + 8), _mm256_add_epi32(hi, init_hi));
}

static inline __attribute__((always_inline)) void tile(size_t MR, int SIGNED, size_t k, const uint8_t* a,
                                                       size_t a_stride, const int8_t* w, const int32_t* init,
                                                       int32_t* acc, size_t acc_stride) {
  const __m256i zero = _mm256_setzero_si256();
  row_acc c0 = {zero, zero}, c1 = {zero, zero}, c2 = {zero, zero}, c3 = {zero, zero};
  const uint8_t* a0 = a;
  const uint8_t* a1 = MR > 1 ? a0 + a_stride : a0;
  const uint8_t* a2 = MR > 2 ? a1 + a_stride : a1;
  const uint8_t* a3 = MR > 3 ? a2 + a_stride : a2;
  for (size_t k0 = 0; k0 < k; k0 += 4) {
    const uint8_t *p0 = a0 + k0, *p1 = a1 + k0, *p2 = a2 + k0, *p3 = a3 + k0;
    uint8_t last[4][4] = {{0}};
    if (k - k0 < 4) { /* zero-filled copies: never read past a row (the padded weights are zero) */
      memcpy(last[0], p0, k - k0);
      memcpy(last[1], p1, k - k0);
      memcpy(last[2], p2, k - k0);
      memcpy(last[3], p3, k - k0);
      p0 = last[0], p1 = last[1], p2 = last[2], p3 = last[3];
    }
    /* In the loop, not after it: gcc then keeps the accumulators in registers. */
    step(MR, SIGNED, p0, p1, p2, p3, w + k0 * 16, &c0, &c1, &c2, &c3);
  }
  const __m256i init_lo = _mm256_load_si256((const __m256i*) init);
  const __m256i init_hi = _mm256_load_si256((const __m256i*) (init + 8));
  store_row(c0, init_lo, init_hi, acc);
  if (MR > 1) store_row(c1, init_lo, init_hi, acc + acc_stride);
  if (MR > 2) store_row(c2, init_lo, init_hi, acc + 2 * acc_stride);
  if (MR > 3) store_row(c3, init_lo, init_hi, acc + 3 * acc_stride);
}

/* 1 row (GEMV, and the last row of odd M): the weights as loaded, (k0 k1),
 * (k2 k3) of each channel in adjacent lanes, against A's 4 bytes repeated; 4
 * accumulators (two partial sums per channel, added at the end). Without
 * rows to share the regrouping, this takes fewer operations per step. */
static inline __attribute__((always_inline)) void tile_pairs(size_t MR, int SIGNED, size_t k, const uint8_t* a,
                                                             size_t a_stride, const int8_t* w,
                                                             const int32_t* init, int32_t* acc,
                                                             size_t acc_stride) {
  (void) MR, (void) a_stride, (void) acc_stride; /* one row */
  __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0; /* channels 4j..4j+3 in cj */
  for (size_t k0 = 0; k0 < k; k0 += 4) {
    uint32_t a4;
    if (k - k0 >= 4) {
      memcpy(&a4, a + k0, 4);
    } else {
      a4 = edge_q8_load_a4(a + k0, k - k0); /* never read past the row */
    }
    const __m128i bytes = _mm_set1_epi32((int32_t) a4);
    const __m256i va = SIGNED ? _mm256_cvtepi8_epi16(bytes) : _mm256_cvtepu8_epi16(bytes);
    const int8_t* group = w + k0 * 16;
#define EDGE_W(j) _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*) (group + 16 * (j))))
    c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(va, EDGE_W(0)));
    c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(va, EDGE_W(1)));
    c2 = _mm256_add_epi32(c2, _mm256_madd_epi16(va, EDGE_W(2)));
    c3 = _mm256_add_epi32(c3, _mm256_madd_epi16(va, EDGE_W(3)));
#undef EDGE_W
  }
  /* vphaddd gives channels (0 1 4 5 | 2 3 6 7), the order store_row expects. */
  const row_acc sums = {_mm256_hadd_epi32(c0, c1), _mm256_hadd_epi32(c2, c3)};
  store_row(sums, _mm256_load_si256((const __m256i*) init), _mm256_load_si256((const __m256i*) (init + 8)), acc);
}

void edge_q8_qc8w_gemm_ukernel_4x16c4__avx2(size_t mr, size_t nb, size_t k, const uint8_t* a, size_t a_stride,
                                            int a_signed, const int8_t* w, size_t panel_stride,
                                            const int32_t* init, int32_t* acc, size_t acc_stride) {
  for (size_t b = 0; b < nb; b++) {
    const int8_t* panel = w + b * panel_stride;
    int32_t* out = acc + b * 16;
    const int32_t* bias = init + b * 16;
#define EDGE_AVX2_CASE(MR, TILE)                                                    \
  case MR:                                                                          \
    if (a_signed) TILE(MR, 1, k, a, a_stride, panel, bias, out, acc_stride);        \
    else TILE(MR, 0, k, a, a_stride, panel, bias, out, acc_stride);                 \
    break;
    switch (mr) {
      EDGE_AVX2_CASE(1, tile_pairs)
      EDGE_AVX2_CASE(2, tile)
      EDGE_AVX2_CASE(3, tile)
      EDGE_AVX2_CASE(4, tile)
      default: break;
    }
#undef EDGE_AVX2_CASE
  }
}
