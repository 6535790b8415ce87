/* AVX-512 VNNI 2:4-sparse micro-kernel: up to 8 rows x 16 channels, 8 k a step.
 *
 * Per step the 16 position bytes become vpshufb controls with one 128-bit
 * broadcast, one vpmultishiftqb (bit offsets 0, 2, 4, 6 of each channel's
 * byte) and one vpternlogd (& 3, | 4 for the second group). The controls are
 * reused by every row: broadcast the row's 8 activation bytes to each lane,
 * gather the 4 that meet channel c's kept weights, and one vpdpbusd (u8 x s8,
 * exact) adds them. A single row keeps 4 accumulators along k so the
 * vpdpbusd latency does not bound the weight stream. */
#include <immintrin.h>
#include <string.h>

#include "q8-gemm24/q8-gemm24.h"

#define MR 8

/* vpmultishiftqb offsets: channel 4L + 2h + c of lane L reads its byte at
 * bit 8 * (2L + c) of the broadcast qword (see the layout in q8-gemm24.h). */
static __m512i position_offsets(void) {
  uint8_t offsets[64];
  for (int q = 0; q < 8; q++) {
    const int lane = q >> 1;
    for (int c = 0; c < 2; c++) {
      for (int j = 0; j < 4; j++) offsets[8 * q + 4 * c + j] = (uint8_t) (8 * (2 * lane + c) + 2 * j);
    }
  }
  return _mm512_loadu_si512(offsets);
}

static inline __m512i step_controls(const uint8_t* step, __m512i offsets) {
  const __m512i positions = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*) (step + 64)));
  const __m512i fields = _mm512_multishift_epi64_epi8(offsets, positions);
  /* (fields & 0x03) | 0x04 in the bytes of the second group: 0xEA = (A & B) | C. */
  return _mm512_ternarylogic_epi32(fields, _mm512_set1_epi32(0x03030303), _mm512_set1_epi32(0x04040000), 0xEA);
}

/* flip is a compile-time constant at every call: without it the 8 bytes are
 * broadcast straight from memory (no trip through a general register). */
static inline __m512i broadcast8(const uint8_t* p, const int flip) {
  uint64_t x;
  memcpy(&x, p, sizeof(x));
  const __m512i v = _mm512_set1_epi64((long long) x);
  return flip ? _mm512_xor_si512(v, _mm512_set1_epi8((char) 0x80)) : v;
}

/* The last, partial step's activations: a zero-padded copy, never past A. */
static inline __m512i broadcast_tail(const uint8_t* p, size_t tail, const int flip) {
  uint64_t x = 0;
  memcpy(&x, p, tail);
  const __m512i v = _mm512_set1_epi64((long long) x);
  return flip ? _mm512_xor_si512(v, _mm512_set1_epi8((char) 0x80)) : v;
}

static inline __m512i requantize(__m512i acc, const edge_q8_gemm24_tile_params* p) {
  const __m512i multiplier = _mm512_loadu_si512(p->multiplier);
  const __m512i shift = _mm512_loadu_si512(p->shift);
  const __m512i low32 = _mm512_set1_epi64(0xFFFFFFFF);
  const __m512i one = _mm512_set1_epi64(1);
  /* 64-bit products of the even and the odd lanes, rounded half up, shifted. */
  const __m512i shift_even = _mm512_and_si512(shift, low32);
  const __m512i shift_odd = _mm512_srli_epi64(shift, 32);
  __m512i even = _mm512_mul_epi32(acc, multiplier);
  __m512i odd = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), _mm512_srli_epi64(multiplier, 32));
  even = _mm512_add_epi64(even, _mm512_sllv_epi64(one, _mm512_sub_epi64(shift_even, one)));
  odd = _mm512_add_epi64(odd, _mm512_sllv_epi64(one, _mm512_sub_epi64(shift_odd, one)));
  even = _mm512_srav_epi64(even, shift_even);
  odd = _mm512_srav_epi64(odd, shift_odd);
  /* Each result fits in int32 (|acc * multiplier| < 2^62, shift >= 31). */
  __m512i scaled = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  scaled = _mm512_max_epi32(scaled, _mm512_set1_epi32(p->out_min - p->zero_point));
  scaled = _mm512_min_epi32(scaled, _mm512_set1_epi32(p->out_max - p->zero_point));
  return _mm512_add_epi32(scaled, _mm512_set1_epi32(p->zero_point));
}

static inline void store(__m512i acc, size_t nc, uint8_t* c_row, const edge_q8_gemm24_tile_params* p) {
  acc = _mm512_add_epi32(acc, _mm512_loadu_si512(p->init));
  const __mmask16 mask = (__mmask16) ((1u << nc) - 1);
  if (p->c_dtype == EDGE_DTYPE_S32) {
    _mm512_mask_storeu_epi32(c_row, mask, acc);
  } else {
    /* Clamped to the output range, so truncation to 8 bits is exact for u8 and s8. */
    _mm_mask_storeu_epi8(c_row, mask, _mm512_cvtepi32_epi8(requantize(acc, p)));
  }
}

/* always_inline: flip must fold to a constant (no test in the loop). */
static inline __attribute__((always_inline)) void kernel_1(size_t nc, size_t k, const uint8_t* a, const uint8_t* w, uint8_t* c,
                     const edge_q8_gemm24_tile_params* p, const int flip) {
  const __m512i offsets = position_offsets();
  const size_t steps = k / EDGE_Q8_GEMM24_STEP_K, tail = k % EDGE_Q8_GEMM24_STEP_K;
  __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  size_t s = 0;
  for (; s + 4 <= steps; s += 4) {
    const uint8_t* step = w + s * EDGE_Q8_GEMM24_STEP_BYTES;
    const uint8_t* a8 = a + s * EDGE_Q8_GEMM24_STEP_K;
    acc0 = _mm512_dpbusd_epi32(acc0, _mm512_shuffle_epi8(broadcast8(a8, flip), step_controls(step, offsets)),
                               _mm512_loadu_si512(step));
    acc1 = _mm512_dpbusd_epi32(acc1, _mm512_shuffle_epi8(broadcast8(a8 + 8, flip), step_controls(step + 80, offsets)),
                               _mm512_loadu_si512(step + 80));
    acc2 = _mm512_dpbusd_epi32(acc2, _mm512_shuffle_epi8(broadcast8(a8 + 16, flip), step_controls(step + 160, offsets)),
                               _mm512_loadu_si512(step + 160));
    acc3 = _mm512_dpbusd_epi32(acc3, _mm512_shuffle_epi8(broadcast8(a8 + 24, flip), step_controls(step + 240, offsets)),
                               _mm512_loadu_si512(step + 240));
  }
  for (; s < steps; s++) {
    const uint8_t* step = w + s * EDGE_Q8_GEMM24_STEP_BYTES;
    acc0 = _mm512_dpbusd_epi32(
        acc0, _mm512_shuffle_epi8(broadcast8(a + s * EDGE_Q8_GEMM24_STEP_K, flip), step_controls(step, offsets)),
        _mm512_loadu_si512(step));
  }
  if (tail != 0) {
    const uint8_t* step = w + steps * EDGE_Q8_GEMM24_STEP_BYTES;
    const __m512i a8 = broadcast_tail(a + steps * EDGE_Q8_GEMM24_STEP_K, tail, flip);
    acc1 = _mm512_dpbusd_epi32(acc1, _mm512_shuffle_epi8(a8, step_controls(step, offsets)), _mm512_loadu_si512(step));
  }
  store(_mm512_add_epi32(_mm512_add_epi32(acc0, acc1), _mm512_add_epi32(acc2, acc3)), nc, c, p);
}

/* ROWS is a compile-time constant in every call, so the row loops unroll. */
static inline void kernel_rows(const size_t ROWS, size_t nc, size_t k, const uint8_t* a, size_t a_stride,
                               const uint8_t* w, uint8_t* c, size_t c_row_bytes, const edge_q8_gemm24_tile_params* p,
                               const int flip) {
  const __m512i offsets = position_offsets();
  const size_t steps = k / EDGE_Q8_GEMM24_STEP_K, tail = k % EDGE_Q8_GEMM24_STEP_K;
  __m512i acc[MR];
  for (size_t r = 0; r < ROWS; r++) acc[r] = _mm512_setzero_si512();
  for (size_t s = 0; s < steps; s++) {
    const uint8_t* step = w + s * EDGE_Q8_GEMM24_STEP_BYTES;
    const __m512i controls = step_controls(step, offsets);
    const __m512i values = _mm512_loadu_si512(step);
    for (size_t r = 0; r < ROWS; r++) {
      const __m512i a8 = broadcast8(a + r * a_stride + s * EDGE_Q8_GEMM24_STEP_K, flip);
      acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_shuffle_epi8(a8, controls), values);
    }
  }
  if (tail != 0) {
    const uint8_t* step = w + steps * EDGE_Q8_GEMM24_STEP_BYTES;
    const __m512i controls = step_controls(step, offsets);
    const __m512i values = _mm512_loadu_si512(step);
    for (size_t r = 0; r < ROWS; r++) {
      const __m512i a8 = broadcast_tail(a + r * a_stride + steps * EDGE_Q8_GEMM24_STEP_K, tail, flip);
      acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_shuffle_epi8(a8, controls), values);
    }
  }
  for (size_t r = 0; r < ROWS; r++) store(acc[r], nc, c + r * c_row_bytes, p);
}

/* One instantiation per row count and per A signedness. */
#define DISPATCH(FLIP)                                                                       \
  switch (mr) {                                                                              \
    case 1: kernel_1(nc, k, a, w, out, params, FLIP); break;                                 \
    case 2: kernel_rows(2, nc, k, a, a_stride, w, out, row_bytes, params, FLIP); break;      \
    case 3: kernel_rows(3, nc, k, a, a_stride, w, out, row_bytes, params, FLIP); break;      \
    case 4: kernel_rows(4, nc, k, a, a_stride, w, out, row_bytes, params, FLIP); break;      \
    case 5: kernel_rows(5, nc, k, a, a_stride, w, out, row_bytes, params, FLIP); break;      \
    case 6: kernel_rows(6, nc, k, a, a_stride, w, out, row_bytes, params, FLIP); break;      \
    case 7: kernel_rows(7, nc, k, a, a_stride, w, out, row_bytes, params, FLIP); break;      \
    default: kernel_rows(MR, nc, k, a, a_stride, w, out, row_bytes, params, FLIP); break;    \
  }

void edge_q8_qc8w24_gemm_rndnu_ukernel_8x16c8__avx512vnni(size_t mr, size_t nc, size_t k, const uint8_t* a,
                                                          size_t a_stride, const uint8_t* w, void* c,
                                                          size_t c_stride, const edge_q8_gemm24_tile_params* params) {
  const size_t row_bytes = c_stride * (params->c_dtype == EDGE_DTYPE_S32 ? 4 : 1);
  uint8_t* out = (uint8_t*) c;
  if (params->a_flip) {
    DISPATCH(1)
  } else {
    DISPATCH(0)
  }
}
