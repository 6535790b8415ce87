/* 256-entry table lookup, AVX-512 VBMI: vpermi2b looks up 128 entries by the
 * low 7 bits of the index; two of them cover the table and bit 7 picks one. */
#include <immintrin.h>

#include "q8-ops/q8-ops.h"

void edge_q8_lut_ukernel__avx512vnni(size_t n, const uint8_t* x, const uint8_t* table, uint8_t* y) {
  const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64);
  const __m512i t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
  while (n != 0) {
    const size_t chunk = n < 64 ? n : 64;
    const __mmask64 mask = chunk == 64 ? ~UINT64_C(0) : (UINT64_C(1) << chunk) - 1;
    const __m512i vx = _mm512_maskz_loadu_epi8(mask, x);
    const __m512i lo = _mm512_permutex2var_epi8(t0, vx, t1);
    const __m512i hi = _mm512_permutex2var_epi8(t2, vx, t3);
    _mm512_mask_storeu_epi8(y, mask, _mm512_mask_blend_epi8(_mm512_movepi8_mask(vx), lo, hi));
    x += chunk;
    y += chunk;
    n -= chunk;
  }
}
