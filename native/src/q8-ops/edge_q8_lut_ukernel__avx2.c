/* 256-entry table lookup, AVX2: 16 vpshufb over the 16-entry slices T[h] of
 * the table, with the index stepped down by 16 between lookups. vpshufb
 * returns 0 where bit 7 of the index is set and T'[k][x & 15] elsewhere, so
 * the XOR of the lookups telescopes to T[h][x & 15] when the tables are
 *
 *   T'[0] = T[0],  T'[k] = T[k-1] ^ T[k] (k < 8),  T'[k] = T[k-1] ^ T[k] ^ T'[k-8] (k >= 8)
 *
 * and the index is x - 16k: wrapping for k <= 8, then saturating (vpsubsb).
 * For x < 128 exactly steps 0..h see a non-negative index (after step 8 it
 * stays negative); for x >= 128 steps h-7..h do, which XOR to T[h] by the
 * definition of T'[k >= 8]. 3 operations per slice, no per-slice constants. */
#include <immintrin.h>
#include <string.h>

#include "q8-ops/q8-ops.h"

static inline __m256i lookup32(__m256i vx, const __m256i t[16]) {
  const __m256i sixteen = _mm256_set1_epi8(16);
  __m256i vy = _mm256_shuffle_epi8(t[0], vx);
  for (int k = 1; k <= 8; k++) {
    vx = _mm256_sub_epi8(vx, sixteen);
    vy = _mm256_xor_si256(vy, _mm256_shuffle_epi8(t[k], vx));
  }
  for (int k = 9; k < 16; k++) {
    vx = _mm256_subs_epi8(vx, sixteen);
    vy = _mm256_xor_si256(vy, _mm256_shuffle_epi8(t[k], vx));
  }
  return vy;
}

void edge_q8_lut_ukernel__avx2(size_t n, const uint8_t* x, const uint8_t* table, uint8_t* y) {
  __m256i slice[16], t[16];
  for (int k = 0; k < 16; k++) {
    slice[k] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*) (table + 16 * k)));
  }
  t[0] = slice[0];
  for (int k = 1; k < 16; k++) {
    t[k] = _mm256_xor_si256(slice[k - 1], slice[k]);
    if (k >= 8) t[k] = _mm256_xor_si256(t[k], t[k - 8]);
  }
  for (; n >= 32; n -= 32) {
    _mm256_storeu_si256((__m256i*) y, lookup32(_mm256_loadu_si256((const __m256i*) x), t));
    x += 32;
    y += 32;
  }
  if (n != 0) { /* the tail through a buffer: never touch bytes past x[n) or y[n) */
    uint8_t tail[32] = {0};
    memcpy(tail, x, n);
    _mm256_storeu_si256((__m256i*) tail, lookup32(_mm256_loadu_si256((const __m256i*) tail), t));
    memcpy(y, tail, n);
  }
}
