/* Internal to the q8-ops family: micro-kernel signatures and the per-ISA table.
 *
 * Every micro-kernel works on unsigned bytes. s8 tensors are handled by the
 * "flip": x ^ 0x80 maps s8 onto u8 while keeping order and differences
 * (x_s8 - zp == (x_s8 ^ 0x80) - (zp + 128)), so the entry points shift zero
 * points and clamps by 128, pass flip = 0x80, and the kernels XOR inputs and
 * outputs with it. One code path per ISA serves both dtypes, bit-exactly.
 */
#ifndef EDGE_Q8_OPS_H
#define EDGE_Q8_OPS_H

#include <string.h>

#include "internal.h"

/* add / mul parameters in the u8 domain (see edge/ops.h for the formulas).
 * mul uses a_multiplier only. */
typedef struct edge_q8_vbinary_params {
  int32_t a_zero_point, b_zero_point, y_zero_point;
  int32_t a_multiplier, b_multiplier, shift;
  int32_t y_min, y_max;
  uint8_t flip;
} edge_q8_vbinary_params;

/* quantize parameters in the u8 domain: the clamp bounds are already minus
 * the zero point, as floats, so NaN/inf handling happens before conversion. */
typedef struct edge_q8_quantize_params {
  float scale;
  float lo, hi; /* y_min - zp, y_max - zp */
  int32_t zero_point;
  uint8_t flip;
} edge_q8_quantize_params;

/* y[i] = op(a[i], b[i * b_inc]) for i < n; b_inc is 1 or 0 (b broadcast). */
typedef void (*edge_q8_vbinary_ukernel_fn)(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc,
                                           uint8_t* y, const edge_q8_vbinary_params* p);
/* y[i] = table[x[i]] */
typedef void (*edge_q8_lut_ukernel_fn)(size_t n, const uint8_t* x, const uint8_t* table, uint8_t* y);
/* y[i] = max(y[i], x[i]) compared after XOR with flip (max pool, one window tap). */
typedef void (*edge_q8_vmax_ukernel_fn)(size_t n, const uint8_t* x, uint8_t flip, uint8_t* y);
/* acc[i] += x[i] ^ flip (average pools, one window tap). */
typedef void (*edge_q8_vsum_ukernel_fn)(size_t n, const uint8_t* x, uint8_t flip, int32_t* acc);
typedef void (*edge_f32_q8_quantize_ukernel_fn)(size_t n, const float* x, const edge_q8_quantize_params* p,
                                                uint8_t* y);
/* y[i] = (float) ((x[i] ^ flip) - zero_point) * scale */
typedef void (*edge_q8_f32_dequantize_ukernel_fn)(size_t n, const uint8_t* x, uint8_t flip, int32_t zero_point,
                                                  float scale, float* y);

typedef struct edge_q8_ops_config {
  edge_q8_vbinary_ukernel_fn vadd;
  edge_q8_vbinary_ukernel_fn vmul;
  edge_q8_lut_ukernel_fn lut;
  edge_q8_vmax_ukernel_fn vmax;
  edge_q8_vsum_ukernel_fn vsum;
  edge_f32_q8_quantize_ukernel_fn quantize;
  edge_q8_f32_dequantize_ukernel_fn dequantize;
} edge_q8_ops_config;

/* The table of the active ISA (edge_isa_get()). */
const edge_q8_ops_config* edge_q8_ops_config_get(void);

/* Kernels (src/q8-ops/<name>.c). */
void edge_q8_vadd_rndnu_ukernel__scalar(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc,
                                        uint8_t* y, const edge_q8_vbinary_params* p);
void edge_q8_vmul_rndnu_ukernel__scalar(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc,
                                        uint8_t* y, const edge_q8_vbinary_params* p);
void edge_q8_lut_ukernel__scalar(size_t n, const uint8_t* x, const uint8_t* table, uint8_t* y);
void edge_q8_vmax_ukernel__scalar(size_t n, const uint8_t* x, uint8_t flip, uint8_t* y);
void edge_q8_vsum_ukernel__scalar(size_t n, const uint8_t* x, uint8_t flip, int32_t* acc);
void edge_f32_q8_quantize_ukernel__scalar(size_t n, const float* x, const edge_q8_quantize_params* p,
                                          uint8_t* y);
void edge_q8_f32_dequantize_ukernel__scalar(size_t n, const uint8_t* x, uint8_t flip, int32_t zero_point,
                                            float scale, float* y);

void edge_q8_vadd_rndnu_ukernel__avx2(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc,
                                      uint8_t* y, const edge_q8_vbinary_params* p);
void edge_q8_vmul_rndnu_ukernel__avx2(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc,
                                      uint8_t* y, const edge_q8_vbinary_params* p);
void edge_q8_lut_ukernel__avx2(size_t n, const uint8_t* x, const uint8_t* table, uint8_t* y);
void edge_q8_vmax_ukernel__avx2(size_t n, const uint8_t* x, uint8_t flip, uint8_t* y);
void edge_q8_vsum_ukernel__avx2(size_t n, const uint8_t* x, uint8_t flip, int32_t* acc);
void edge_f32_q8_quantize_ukernel__avx2(size_t n, const float* x, const edge_q8_quantize_params* p,
                                        uint8_t* y);
void edge_q8_f32_dequantize_ukernel__avx2(size_t n, const uint8_t* x, uint8_t flip, int32_t zero_point,
                                          float scale, float* y);

void edge_q8_vadd_rndnu_ukernel__neon(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc,
                                      uint8_t* y, const edge_q8_vbinary_params* p);
void edge_q8_vmul_rndnu_ukernel__neon(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc,
                                      uint8_t* y, const edge_q8_vbinary_params* p);
void edge_q8_lut_ukernel__neon(size_t n, const uint8_t* x, const uint8_t* table, uint8_t* y);
void edge_q8_vmax_ukernel__neon(size_t n, const uint8_t* x, uint8_t flip, uint8_t* y);
void edge_q8_vsum_ukernel__neon(size_t n, const uint8_t* x, uint8_t flip, int32_t* acc);
void edge_f32_q8_quantize_ukernel__neon(size_t n, const float* x, const edge_q8_quantize_params* p,
                                        uint8_t* y);
void edge_q8_f32_dequantize_ukernel__neon(size_t n, const uint8_t* x, uint8_t flip, int32_t zero_point,
                                          float scale, float* y);

/* avx512vnni has its own add, mul, lut and quantize; the table reuses the
 * AVX2 vmax, vsum and dequantize. */
void edge_q8_vadd_rndnu_ukernel__avx512vnni(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc, uint8_t* y,
                                            const edge_q8_vbinary_params* p);
void edge_q8_vmul_rndnu_ukernel__avx512vnni(size_t n, const uint8_t* a, const uint8_t* b, size_t b_inc, uint8_t* y,
                                            const edge_q8_vbinary_params* p);
void edge_q8_lut_ukernel__avx512vnni(size_t n, const uint8_t* x, const uint8_t* table, uint8_t* y);
void edge_f32_q8_quantize_ukernel__avx512vnni(size_t n, const float* x, const edge_q8_quantize_params* p,
                                              uint8_t* y);

/* The rounding shift of add and mul: (x + 2^(shift-1)) >> shift for shift in
 * [1, 31], computed as ((x >> (shift-1)) + 1) >> 1, which is the same integer
 * (floor((floor(x / 2^(s-1)) + 1) / 2) == floor((x / 2^(s-1) + 1) / 2)) but
 * cannot overflow int32. SIMD paths do the same steps (NEON: vrshl). */
static inline int32_t edge_q8_rounding_shift(int32_t x, int32_t shift) {
  return ((x >> (shift - 1)) + 1) >> 1;
}

/* The SIMD add/mul kernels run whole 16-byte steps and hand a tail of
 * n < 16 bytes to this helper, which runs the same kernel once more on
 * zero-padded copies: no vector load or store passes the end of a, b or y.
 * A broadcast b (b_inc == 0) is read at b[0] only and needs no copy. */
static inline void edge_q8_vbinary_tail(edge_q8_vbinary_ukernel_fn kernel, size_t n, const uint8_t* a,
                                        const uint8_t* b, size_t b_inc, uint8_t* y,
                                        const edge_q8_vbinary_params* p) {
  uint8_t a_tail[16] = {0}, b_tail[16] = {0}, y_tail[16];
  memcpy(a_tail, a, n);
  if (b_inc != 0) memcpy(b_tail, b, n);
  kernel(16, a_tail, b_inc != 0 ? b_tail : b, b_inc, y_tail, p);
  memcpy(y, y_tail, n);
}

#endif /* EDGE_Q8_OPS_H */
