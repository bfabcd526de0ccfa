// The per-instruction-set kernel entry points behind MatMul (matmul.h), and
// the numeric contract every one of them implements bit-exactly, so that all
// paths (scalar, AVX2, AVX-512) give identical results:
//
// Quantised weights (Q4_0, Q4_1, Q8_0), activations quantised per
// quantize_activations.h; for output element (i, j), starting from acc = +0:
//   for b in 0 .. n_in/32 - 1, in order:
//     I   = exact integer sum over the block of w_q * x_q
//           (w_q = nibble - 8 for Q4_0, nibble for Q4_1, int8 for Q8_0)
//     acc = fma(float(I), dw * dx, acc)       // dw * dx is exact in f32
//     Q4_1 only: acc = fma(mw, s, acc)        // mw * s is exact in f32
//   y = acc
//
// Float weights (F32, F16, BF16), weights converted exactly to f32: 16 lane
// accumulators, lane l summing k = l (mod 16) in increasing k with fma;
// then lane sums are reduced by halving: l += l + 8, l += l + 4, l += l + 2,
// l += l + 1 (see ReduceLanes16 below).
//
// Thread-safety: every function writes only the output columns it is given.
#pragma once

#include <cstdint>

#include "engine/kernels/blocks.h"
#include "engine/kernels/matmul.h"

namespace kvserve::kernels::internal {

struct IsaKernels {
  const char* name;
  // See QuantizeActRowsScalar.
  void (*quantize_rows)(const float* x, int64_t n_in, int64_t m, int64_t r0, int64_t r1,
                        ActKind kind, ActBlock* act);
  // y[i][j] for all i < m and j in [c0, c1), quantised weights; act as
  // written by quantize_rows for all m rows.
  void (*matmul_q)(const WeightView& w, const ActBlock* act, int64_t m, int64_t c0, int64_t c1,
                   float* y);
  // Same for F32 / F16 / BF16 weights and f32 activations x [m, n_in].
  void (*matmul_f)(const WeightView& w, const float* x, int64_t m, int64_t c0, int64_t c1,
                   float* y);
};

// Always available.
const IsaKernels& ScalarKernels();
// nullptr when the CPU (or the build target) lacks the instructions.
const IsaKernels* Avx2Kernels();
const IsaKernels* Avx512Kernels();

// The reduction order of the float-weight contract, on 16 lane sums.
inline float ReduceLanes16(const float* lanes) {
  float a[8];
  for (int l = 0; l < 8; ++l) a[l] = lanes[l] + lanes[l + 8];
  for (int l = 0; l < 4; ++l) a[l] = a[l] + a[l + 4];
  for (int l = 0; l < 2; ++l) a[l] = a[l] + a[l + 2];
  return a[0] + a[1];
}

}  // namespace kvserve::kernels::internal
