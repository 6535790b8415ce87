/* AVX2 for 7-bit weights (every weight in [-63, 63], flagged at pack time):
 * vpmaddubsw multiplies u8 A by s8 W and adds the two products of a pair in
 * int16 with saturation, which 255 * 63 * 2 = 32130 < 32767 never reaches, so
 * the pair sums are exact; vpmaddwd by ones then adds the two pairs of each
 * 4-k group into the channel's int32 lane. The same int32 accumulators as the
 * exact 8-bit kernel (edge_q8_qc8w_gemm_ukernel_4x16c4__avx2) in about half
 * the instructions: no widening of the weights, no regrouping shuffles.
 *
 * vpmaddubsw takes A unsigned: s8 A is flipped to u8 by xor 0x80 (+128), and
 * the driver folds -(a_zero_point + 128) * colsum into init (a_offset_s8 of
 * the w7 entry in q8-gemm-config.c), exactly as for vpdpbusd.
 *
 * A packed group is 16 channels x 4 k: two 32-byte loads hold channels 0-7
 * and 8-15, each channel's 4 k in one int32 lane, against a row's 4 bytes of
 * A broadcast to every lane. The lanes are in channel order. Up to 4 rows x
 * 16 channels per block: 8 accumulators + 2 weight vectors + ones + A fit in
 * the 16 ymm registers. */
#include <immintrin.h>

#include "q8-gemm.h"

/* Accumulators as named variables, not an array: gcc keeps those in registers. */
typedef struct row_acc {
  __m256i lo, hi; /* channels 0-7 and 8-15 */
} row_acc;

/* One row of a step: its 4 bytes of A (x() applied) times 16 channels. */
static inline __attribute__((always_inline)) void row_step(int SIGNED, const uint8_t* a, __m256i w_lo, __m256i w_hi,
                                                           __m256i ones, row_acc* c) {
  int32_t a4;
  memcpy(&a4, a, 4);
  __m256i va = _mm256_set1_epi32(a4);
  if (SIGNED) va = _mm256_xor_si256(va, _mm256_set1_epi8((char) 0x80));
  c->lo = _mm256_add_epi32(c->lo, _mm256_madd_epi16(_mm256_maddubs_epi16(va, w_lo), ones));
  c->hi = _mm256_add_epi32(c->hi, _mm256_madd_epi16(_mm256_maddubs_epi16(va, w_hi), ones));
}

/* One step: 4 k of MR rows (a0..a3) times the 16 channels of a group. */
static inline __attribute__((always_inline)) void step(size_t MR, int SIGNED, const uint8_t* a0, const uint8_t* a1,
                                                       const uint8_t* a2, const uint8_t* a3, const int8_t* group,
                                                       __m256i ones, row_acc* c0, row_acc* c1, row_acc* c2,
                                                       row_acc* c3) {
  const __m256i w_lo = _mm256_load_si256((const __m256i*) group);
  const __m256i w_hi = _mm256_load_si256((const __m256i*) (group + 32));
  row_step(SIGNED, a0, w_lo, w_hi, ones, c0);
  if (MR > 1) row_step(SIGNED, a1, w_lo, w_hi, ones, c1);
  if (MR > 2) row_step(SIGNED, a2, w_lo, w_hi, ones, c2);
  if (MR > 3) row_step(SIGNED, a3, w_lo, w_hi, ones, c3);
}

static inline void store_row(row_acc c, __m256i init_lo, __m256i init_hi, int32_t* out) {
  _mm256_storeu_si256((__m256i*) out, _mm256_add_epi32(c.lo, init_lo));
  _mm256_storeu_si256((__m256i*) (out + 8), _mm256_add_epi32(c.hi, init_hi));
}

static inline __attribute__((always_inline)) void tile(size_t MR, int SIGNED, size_t k, const uint8_t* a,
                                                       size_t a_stride, const int8_t* w, const int32_t* init,
                                                       int32_t* acc, size_t acc_stride) {
  const __m256i zero = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  row_acc c0 = {zero, zero}, c1 = {zero, zero}, c2 = {zero, zero}, c3 = {zero, zero};
  const uint8_t* a0 = a;
  const uint8_t* a1 = MR > 1 ? a0 + a_stride : a0;
  const uint8_t* a2 = MR > 2 ? a1 + a_stride : a1;
  const uint8_t* a3 = MR > 3 ? a2 + a_stride : a2;
  size_t k0 = 0;
  for (; k - k0 >= 4; k0 += 4) {
    step(MR, SIGNED, a0 + k0, a1 + k0, a2 + k0, a3 + k0, w + k0 * 16, ones, &c0, &c1, &c2, &c3);
  }
  if (k0 < k) { /* zero-filled copies: never read past a row (the padded weights are zero) */
    uint8_t last[4][4] = {{0}};
    memcpy(last[0], a0 + k0, k - k0);
    memcpy(last[1], a1 + k0, k - k0);
    memcpy(last[2], a2 + k0, k - k0);
    memcpy(last[3], a3 + k0, k - k0);
    step(MR, SIGNED, last[0], last[1], last[2], last[3], w + k0 * 16, ones, &c0, &c1, &c2, &c3);
  }
  const __m256i init_lo = _mm256_load_si256((const __m256i*) init);
  const __m256i init_hi = _mm256_load_si256((const __m256i*) (init + 8));
  store_row(c0, init_lo, init_hi, acc);
  if (MR > 1) store_row(c1, init_lo, init_hi, acc + acc_stride);
  if (MR > 2) store_row(c2, init_lo, init_hi, acc + 2 * acc_stride);
  if (MR > 3) store_row(c3, init_lo, init_hi, acc + 3 * acc_stride);
}

void edge_q8_qc7w_gemm_ukernel_4x16c4__avx2(size_t mr, size_t nb, size_t k, const uint8_t* a, size_t a_stride,
                                            int a_signed, const int8_t* w, size_t panel_stride,
                                            const int32_t* init, int32_t* acc, size_t acc_stride) {
  for (size_t b = 0; b < nb; b++) {
    const int8_t* panel = w + b * panel_stride;
    int32_t* out = acc + b * 16;
    const int32_t* bias = init + b * 16;
#define EDGE_AVX2_CASE(MR)                                                          \
  case MR:                                                                          \
    if (a_signed) tile(MR, 1, k, a, a_stride, panel, bias, out, acc_stride);        \
    else tile(MR, 0, k, a, a_stride, panel, bias, out, acc_stride);                 \
    break;
    switch (mr) {
      EDGE_AVX2_CASE(1)
      EDGE_AVX2_CASE(2)
      EDGE_AVX2_CASE(3)
      EDGE_AVX2_CASE(4)
      default: break;
    }
#undef EDGE_AVX2_CASE
  }
}
