/* Requantization of a tile, 8 channels at a time, bit-identical to
 * edge_requantize. AVX2 has no 64-bit arithmetic shift:
 * x >> s = ((x ^ 2^63) >>> s) - (2^63 >>> s), with >>> the logical shift
 * (biasing by 2^63 makes every value non-negative). The per-channel vectors
 * are prepared once per 8 channels, then reused for every row of the tile. */
#include <immintrin.h>

#include "q8-gemm.h"

static inline __m256i shift_epi64(__m256i rounded, __m256i shift, __m256i sign_shifted) {
  const __m256i sign = _mm256_set1_epi64x(INT64_MIN);
  return _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_xor_si256(rounded, sign), shift), sign_shifted);
}

void edge_q8_vrequant_rndnu_ukernel__avx2(size_t rows, size_t n, const int32_t* acc, size_t acc_stride,
                                          const int32_t* multiplier, const int32_t* shift, int32_t zero_point,
                                          int32_t out_min, int32_t out_max, int out_signed, void* out,
                                          size_t out_stride) {
  (void) out_signed; /* the clamp already holds the value in the output range: truncation is exact */
  const __m256i vlo = _mm256_set1_epi32(out_min - zero_point);
  const __m256i vhi = _mm256_set1_epi32(out_max - zero_point);
  const __m256i vzp = _mm256_set1_epi32(zero_point);
  const __m256i one = _mm256_set1_epi64x(1);
  const __m256i sign = _mm256_set1_epi64x(INT64_MIN);
  const __m256i low32 = _mm256_set1_epi64x(0xFFFFFFFF);
  /* The low byte of each int32 to the bottom of each 128-bit half, then both halves together. */
  const __m256i bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                         0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i halves = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
  for (size_t i = 0; i < n; i += 8) {
    const size_t count = EDGE_MIN(n - i, (size_t) 8);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t) count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i vmul = _mm256_maskload_epi32(multiplier + i, mask);
    const __m256i vmul_odd = _mm256_srli_epi64(vmul, 32);
    /* Masked-off lanes get shift 31: any valid shift keeps the arithmetic defined. */
    const __m256i vshift = _mm256_blendv_epi8(_mm256_set1_epi32(31), _mm256_maskload_epi32(shift + i, mask), mask);
    const __m256i shift_even = _mm256_and_si256(vshift, low32);
    const __m256i shift_odd = _mm256_srli_epi64(vshift, 32);
    const __m256i round_even = _mm256_sllv_epi64(one, _mm256_sub_epi64(shift_even, one));
    const __m256i round_odd = _mm256_sllv_epi64(one, _mm256_sub_epi64(shift_odd, one));
    const __m256i sign_even = _mm256_srlv_epi64(sign, shift_even);
    const __m256i sign_odd = _mm256_srlv_epi64(sign, shift_odd);
    for (size_t r = 0; r < rows; r++) {
      const __m256i vacc = _mm256_maskload_epi32(acc + r * acc_stride + i, mask);
      const __m256i even = shift_epi64(_mm256_add_epi64(_mm256_mul_epi32(vacc, vmul), round_even), shift_even, sign_even);
      const __m256i odd = shift_epi64(_mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(vacc, 32), vmul_odd), round_odd),
                                      shift_odd, sign_odd);
      __m256i v = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
      v = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(v, vlo), vhi), vzp);
      v = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, bytes), halves);
      const uint64_t packed = (uint64_t) _mm_cvtsi128_si64(_mm256_castsi256_si128(v));
      /* little-endian: the first bytes are the first channels; a whole 8 as one
       * store (a memcpy of a variable count is a call per row) */
      if (count == 8) {
        _mm_storel_epi64((__m128i*) (void*) ((uint8_t*) out + r * out_stride + i), _mm256_castsi256_si128(v));
      } else {
        memcpy((uint8_t*) out + r * out_stride + i, &packed, count);
      }
    }
  }
}
