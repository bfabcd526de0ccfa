// Quantisation of f32 activation rows into ActBlocks (blocks.h), as
// llama.cpp's x86 CPU backend quantises to Q8_0 / Q8_1 before a quantised
// dot product:
//   amax = max |x| over the block of 32
//   d    = amax / 127            (f32; stored rounded to f16)
//   id   = amax != 0 ? 127 / amax : 0
//   q    = round-half-even(x * id)
//   s    = f16(d * sum(q))       (Q8_1 only; d is the unrounded f32 scale)
// The SIMD versions in the per-ISA files must produce identical bytes; the
// tests check that.
//
// Thread-safety: pure functions; concurrent calls must write disjoint rows.
#pragma once

#include <cstdint>

#include "engine/kernels/blocks.h"

namespace kvserve::kernels::internal {

// Quantises the 32 values at x into *out (scalar reference).
void QuantizeActBlockScalar(const float* x, ActKind kind, ActBlock* out);

// Quantises rows [r0, r1) of x ([m, n_in] row-major, n_in % 32 == 0) into the
// block-major scratch `act` ([n_in / 32, m] ActBlocks).
void QuantizeActRowsScalar(const float* x, int64_t n_in, int64_t m, int64_t r0, int64_t r1,
                           ActKind kind, ActBlock* act);

}  // namespace kvserve::kernels::internal
