/* AVX2: no u8 x s8 instruction is exact here (vpmaddubsw saturates its int16
 * pair sums), so both operands are widened to int16 and multiplied with
 * vpmaddwd, whose int32 pair sums are exact. One 16-byte load of a packed
 * group widens to 4 channels x 4 k; vpmaddwd leaves 2 partial sums per channel,
 * combined once at the end of K. Up to 4 rows x 16 channels per block. */
#include <immintrin.h>

#include "q8-gemm.h"

/* The 4 bytes of A of one k group as int16, repeated in each 64-bit lane. */
static inline __m256i widen_a4(uint32_t a4, int a_signed) {
  const __m128i bytes = _mm_cvtsi32_si128((int32_t) a4);
  return _mm256_broadcastq_epi64(a_signed ? _mm_cvtepi8_epi16(bytes) : _mm_cvtepu8_epi16(bytes));
}

static inline __attribute__((always_inline)) void tile(size_t MR, int SIGNED, size_t k, const uint8_t* a,
                                                       size_t a_stride, const int8_t* w, const int32_t* init,
                                                       int32_t* acc, size_t acc_stride) {
  /* vacc[r][j]: channels 4j..4j+3, two partial sums each. */
  __m256i vacc[4][4];
  for (size_t r = 0; r < MR; r++) {
    for (size_t j = 0; j < 4; j++) vacc[r][j] = _mm256_setzero_si256();
  }
  for (size_t k0 = 0; k0 < k; k0 += 4) {
    __m256i va[4];
    for (size_t r = 0; r < MR; r++) {
      uint32_t a4;
      if (k - k0 >= 4) {
        memcpy(&a4, a + r * a_stride + k0, 4);
      } else {
        a4 = edge_q8_load_a4(a + r * a_stride + k0, k - k0); /* never read past the row */
      }
      va[r] = widen_a4(a4, SIGNED);
    }
    const int8_t* group = w + k0 * 16;
    for (size_t j = 0; j < 4; j++) {
      const __m256i vw = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*) (group + 16 * j)));
      for (size_t r = 0; r < MR; r++) vacc[r][j] = _mm256_add_epi32(vacc[r][j], _mm256_madd_epi16(va[r], vw));
    }
  }
  const __m256i init_lo = _mm256_load_si256((const __m256i*) init);
  const __m256i init_hi = _mm256_load_si256((const __m256i*) (init + 8));
  for (size_t r = 0; r < MR; r++) {
    /* hadd gives channels (0 1 4 5 | 2 3 6 7); the permute restores 0..7. */
    __m256i lo = _mm256_hadd_epi32(vacc[r][0], vacc[r][1]);
    __m256i hi = _mm256_hadd_epi32(vacc[r][2], vacc[r][3]);
    lo = _mm256_permute4x64_epi64(lo, _MM_SHUFFLE(3, 1, 2, 0));
    hi = _mm256_permute4x64_epi64(hi, _MM_SHUFFLE(3, 1, 2, 0));
    _mm256_storeu_si256((__m256i*) (acc + r * acc_stride), _mm256_add_epi32(lo, init_lo));
    _mm256_storeu_si256((__m256i*) (acc + r * acc_stride + 8), _mm256_add_epi32(hi, init_hi));
  }
}

void edge_q8_qc8w_gemm_ukernel_4x16c4__avx2(size_t mr, size_t nb, size_t k, const uint8_t* a, size_t a_stride,
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
