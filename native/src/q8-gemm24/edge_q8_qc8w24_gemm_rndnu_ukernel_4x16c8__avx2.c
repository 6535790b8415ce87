/* AVX2 2:4-sparse micro-kernel: up to 4 rows x 16 channels, 8 k a step.
 *
 * Once per step (shared by every row):
 *   - the 64 weight bytes are regrouped and sign-extended to int16 so that
 *     dword j of a vector holds one channel's pair (v0, v1) of ONE group:
 *     w_lo[h] / w_hi[h] = the first / second group of channels 8h..8h+7;
 *   - the position bytes become vpshufb controls that gather the matching
 *     activations as zero-extended words: the word control of position i
 *     is 0x80 << 8 | i (the 0x80 byte zeroes the high half).
 * Per row: broadcast its 8 activation bytes to both 128-bit lanes, 4 vpshufb
 * gathers, 4 vpmaddwd (u8 x s8 widened to int16: exact, unlike vpmaddubsw
 * which saturates) and the adds into 2 accumulators, one channel per lane.
 * The requantization is bit-identical to edge_requantize: 64-bit products of
 * the even and odd lanes, the arithmetic shift emulated with logical ones. */
#include <immintrin.h>
#include <string.h>

#include "q8-gemm24/q8-gemm24.h"

#define MR 4

typedef struct step_operands {
  __m256i w_lo[2], w_hi[2];   /* int16 weight pairs of the first / second group, channels 8h..8h+7 */
  __m256i ctl_lo[2], ctl_hi[2]; /* the matching word gathers */
} step_operands;

/* Word gather controls of 8 channels from their position nibbles, one per
 * dword: n = i0 | i1 << 2 becomes the bytes i0 + base, 0x80, i1 + base, 0x80. */
static inline __m256i word_controls(__m256i nibbles, int base) {
  const __m256i fields = _mm256_and_si256(_mm256_or_si256(nibbles, _mm256_slli_epi32(nibbles, 14)),
                                          _mm256_set1_epi32(0x00030003));
  return _mm256_or_si256(fields, _mm256_set1_epi32((int) (0x80008000u | (uint32_t) (base * 0x00010001))));
}

static inline void load_step(const uint8_t* step, step_operands* op) {
  /* Channel c's stored position byte -> byte c (see edge_q8_gemm24_position_index). */
  const __m128i natural = _mm_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15);
  /* Per 128-bit lane of 4 channels: the first-group pairs, then the second-group pairs. */
  const __m256i split = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                         0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
  const __m128i positions = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*) (step + 64)), natural);
  for (int h = 0; h < 2; h++) {
    /* [first-group pairs of channels 8h..8h+7 | their second-group pairs] */
    const __m256i pairs = _mm256_permute4x64_epi64(
        _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i*) (step + 32 * h)), split), 0xD8);
    op->w_lo[h] = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(pairs));
    op->w_hi[h] = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(pairs, 1));
    const __m256i bytes = _mm256_cvtepu8_epi32(h == 0 ? positions : _mm_unpackhi_epi64(positions, positions));
    op->ctl_lo[h] = word_controls(_mm256_and_si256(bytes, _mm256_set1_epi32(0x0F)), 0);
    op->ctl_hi[h] = word_controls(_mm256_srli_epi32(bytes, 4), 4);
  }
}

/* The row's 8 activation bytes in both lanes; flip is a compile-time constant. */
static inline __m256i broadcast8(const uint8_t* p, const int flip) {
  uint64_t x;
  memcpy(&x, p, sizeof(x));
  const __m256i v = _mm256_set1_epi64x((long long) x);
  return flip ? _mm256_xor_si256(v, _mm256_set1_epi8((char) 0x80)) : v;
}

/* The last, partial step's activations: a zero-padded copy, never past A. */
static inline __m256i broadcast_tail(const uint8_t* p, size_t tail, const int flip) {
  uint64_t x = 0;
  memcpy(&x, p, tail);
  const __m256i v = _mm256_set1_epi64x((long long) x);
  return flip ? _mm256_xor_si256(v, _mm256_set1_epi8((char) 0x80)) : v;
}

static inline void accumulate(__m256i acc[2], __m256i a8, const step_operands* op) {
  for (int h = 0; h < 2; h++) {
    const __m256i lo = _mm256_madd_epi16(_mm256_shuffle_epi8(a8, op->ctl_lo[h]), op->w_lo[h]);
    const __m256i hi = _mm256_madd_epi16(_mm256_shuffle_epi8(a8, op->ctl_hi[h]), op->w_hi[h]);
    acc[h] = _mm256_add_epi32(acc[h], _mm256_add_epi32(lo, hi));
  }
}

/* (product + 2^(shift-1)) >> shift, arithmetic, in 64 bits: AVX2 has no
 * vpsravq, so x >> s = ((x ^ 2^63) >>> s) - (2^63 >>> s). */
static inline __m256i round_shift_epi64(__m256i product, __m256i shift) {
  const __m256i one = _mm256_set1_epi64x(1);
  const __m256i sign = _mm256_set1_epi64x(INT64_MIN);
  const __m256i rounded = _mm256_add_epi64(product, _mm256_sllv_epi64(one, _mm256_sub_epi64(shift, one)));
  return _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_xor_si256(rounded, sign), shift), _mm256_srlv_epi64(sign, shift));
}

/* edge_requantize of 8 lanes (channels h*8..h*8+7), clamped, zero point added. */
static inline __m256i requantize(__m256i acc, const edge_q8_gemm24_tile_params* p, int h) {
  const __m256i multiplier = _mm256_loadu_si256((const __m256i*) (p->multiplier + 8 * h));
  const __m256i shift = _mm256_loadu_si256((const __m256i*) (p->shift + 8 * h));
  const __m256i even = round_shift_epi64(_mm256_mul_epi32(acc, multiplier),
                                         _mm256_and_si256(shift, _mm256_set1_epi64x(0xFFFFFFFF)));
  const __m256i odd = round_shift_epi64(_mm256_mul_epi32(_mm256_srli_epi64(acc, 32), _mm256_srli_epi64(multiplier, 32)),
                                        _mm256_srli_epi64(shift, 32));
  /* Each result fits in int32 (|acc * multiplier| < 2^62, shift >= 31). */
  __m256i v = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  v = _mm256_max_epi32(v, _mm256_set1_epi32(p->out_min - p->zero_point));
  v = _mm256_min_epi32(v, _mm256_set1_epi32(p->out_max - p->zero_point));
  return _mm256_add_epi32(v, _mm256_set1_epi32(p->zero_point));
}

static inline void store(const __m256i acc[2], size_t nc, uint8_t* c_row, const edge_q8_gemm24_tile_params* p) {
  if (p->c_dtype == EDGE_DTYPE_S32) {
    if (nc == EDGE_Q8_GEMM24_NR) {
      _mm256_storeu_si256((__m256i*) c_row, acc[0]);
      _mm256_storeu_si256((__m256i*) (c_row + 32), acc[1]);
    } else {
      int32_t row[EDGE_Q8_GEMM24_NR];
      _mm256_storeu_si256((__m256i*) row, acc[0]);
      _mm256_storeu_si256((__m256i*) (row + 8), acc[1]);
      memcpy(c_row, row, nc * sizeof(int32_t));
    }
    return;
  }
  /* Clamped to the output range, so the packs below are exact for u8 and s8. */
  const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(requantize(acc[0], p, 0), requantize(acc[1], p, 1)),
                                                 0xD8);
  const __m128i lo = _mm256_castsi256_si128(words), hi = _mm256_extracti128_si256(words, 1);
  const __m128i bytes = p->c_dtype == EDGE_DTYPE_U8 ? _mm_packus_epi16(lo, hi) : _mm_packs_epi16(lo, hi);
  if (nc == EDGE_Q8_GEMM24_NR) {
    _mm_storeu_si128((__m128i*) c_row, bytes);
  } else {
    uint8_t row[EDGE_Q8_GEMM24_NR];
    _mm_storeu_si128((__m128i*) row, bytes);
    memcpy(c_row, row, nc);
  }
}

/* ROWS and flip are compile-time constants in every call, so the row loops
 * unroll and the flip folds away. */
static inline __attribute__((always_inline)) void kernel_rows(const size_t ROWS, size_t nc, size_t k, const uint8_t* a, size_t a_stride,
                               const uint8_t* w, uint8_t* c, size_t c_row_bytes, const edge_q8_gemm24_tile_params* p,
                               const int flip) {
  const size_t steps = k / EDGE_Q8_GEMM24_STEP_K, tail = k % EDGE_Q8_GEMM24_STEP_K;
  __m256i acc[MR][2];
  for (size_t r = 0; r < ROWS; r++) {
    acc[r][0] = _mm256_loadu_si256((const __m256i*) p->init);
    acc[r][1] = _mm256_loadu_si256((const __m256i*) (p->init + 8));
  }
  step_operands op;
  for (size_t s = 0; s < steps; s++) {
    load_step(w + s * EDGE_Q8_GEMM24_STEP_BYTES, &op);
    for (size_t r = 0; r < ROWS; r++) {
      accumulate(acc[r], broadcast8(a + r * a_stride + s * EDGE_Q8_GEMM24_STEP_K, flip), &op);
    }
  }
  if (tail != 0) {
    load_step(w + steps * EDGE_Q8_GEMM24_STEP_BYTES, &op);
    for (size_t r = 0; r < ROWS; r++) {
      accumulate(acc[r], broadcast_tail(a + r * a_stride + steps * EDGE_Q8_GEMM24_STEP_K, tail, flip), &op);
    }
  }
  for (size_t r = 0; r < ROWS; r++) store(acc[r], nc, c + r * c_row_bytes, p);
}

/* One instantiation per row count and per A signedness. */
#define DISPATCH(FLIP)                                                                    \
  switch (mr) {                                                                           \
    case 1: kernel_rows(1, nc, k, a, a_stride, w, out, row_bytes, params, FLIP); break;   \
    case 2: kernel_rows(2, nc, k, a, a_stride, w, out, row_bytes, params, FLIP); break;   \
    case 3: kernel_rows(3, nc, k, a, a_stride, w, out, row_bytes, params, FLIP); break;   \
    default: kernel_rows(MR, nc, k, a, a_stride, w, out, row_bytes, params, FLIP); break; \
  }

void edge_q8_qc8w24_gemm_rndnu_ukernel_4x16c8__avx2(size_t mr, size_t nc, size_t k, const uint8_t* a,
                                                    size_t a_stride, const uint8_t* w, void* c, size_t c_stride,
                                                    const edge_q8_gemm24_tile_params* params) {
  const size_t row_bytes = c_stride * (params->c_dtype == EDGE_DTYPE_S32 ? 4 : 1);
  uint8_t* out = (uint8_t*) c;
  if (params->a_flip) {
    DISPATCH(1)
  } else {
    DISPATCH(0)
  }
}
