/* 256-entry table lookup, AVX2: vpshufb on the 16 slices of 16 entries.
 * For slice k, (x ^ (k << 4)) saturating-plus 0x70 keeps bit 7 clear (and the
 * low nibble intact) only where the high nibble of x is k; vpshufb returns 0
 * elsewhere, so OR-ing the 16 lookups gives table[x]. */
#include <immintrin.h>
#include <string.h>

#include "q8-ops/q8-ops.h"

void edge_q8_lut_ukernel__avx2(size_t n, const uint8_t* x, const uint8_t* table, uint8_t* y) {
  __m256i slices[16];
  for (int k = 0; k < 16; k++) {
    slices[k] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*) (table + 16 * k)));
  }
  const __m256i v70 = _mm256_set1_epi8(0x70);
  uint8_t tail[32];
  while (n != 0) {
    const size_t chunk = n < 32 ? n : 32;
    const uint8_t* px = x;
    if (chunk < 32) {
      memset(tail, 0, sizeof(tail));
      memcpy(tail, x, chunk);
      px = tail;
    }
    const __m256i vx = _mm256_loadu_si256((const __m256i*) px);
    __m256i out = _mm256_setzero_si256();
    for (int k = 0; k < 16; k++) {
      const __m256i idx = _mm256_adds_epu8(_mm256_xor_si256(vx, _mm256_set1_epi8((char) (k << 4))), v70);
      out = _mm256_or_si256(out, _mm256_shuffle_epi8(slices[k], idx));
    }
    if (chunk < 32) {
      _mm256_storeu_si256((__m256i*) tail, out);
      memcpy(y, tail, chunk);
    } else {
      _mm256_storeu_si256((__m256i*) y, out);
    }
    x += chunk;
    y += chunk;
    n -= chunk;
  }
}
