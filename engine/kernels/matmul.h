// Matrix multiplication of f32 activations by weights in GGML encodings: the
// one kernel that dominates the forward pass.
//
// Numerics follow llama.cpp's CPU backend so that our logits can be checked
// against it tightly: for Q4_0/Q8_0 weights the activations are quantised per
// 32 values to 8 bits (llama.cpp's Q8_0), for Q4_1 to Q8_1 (8 bits plus the
// block sum), and the dot products are integer within a block, scaled and
// summed in f32 across blocks. F32/F16/BF16 weights use f32 arithmetic.
//
// Row invariance (the batching guarantee): y[i] is a function of x[i] and W
// alone. It does not depend on m, on the other rows of x, or on the thread
// count, so adding a sequence to a batch never changes another's output.
// Every SIMD path keeps that by giving each output element its own
// accumulator and a fixed reduction order.
//
// Thread-safety: MatMul may be called from one thread at a time per
// MatMulScratch; it uses the pool's threads internally.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/thread_pool.h"
#include "engine/gguf/ggml_type.h"

namespace kvserve::kernels {

// A weight matrix of n_out rows, each n_in values in `type` encoding,
// row_bytes apart. Non-owning: `data` must outlive every MatMul using it.
struct WeightView {
  gguf::GgmlType type = gguf::GgmlType::kF32;
  int64_t n_in = 0;
  int64_t n_out = 0;
  const uint8_t* data = nullptr;
  size_t row_bytes = 0;
};

// Reusable buffers (quantised activations); grows on demand, never shrinks.
struct MatMulScratch {
  std::vector<uint8_t> bytes;
};

// True for the weight types MatMul computes with directly. Other types are
// converted when the model loads (see the model loader).
bool MatMulSupports(gguf::GgmlType type);

// y[m][n_out] = x[m][n_in] * W^T.
//   x: [m, n_in] row-major f32, y: [m, n_out] row-major f32.
// With quantised weights, non-finite activations give unspecified (but
// memory-safe) outputs.
// n_in must be a multiple of 32 for quantised types. pool may be nullptr
// (run on the calling thread); scratch is only used for quantised types.
void MatMul(const WeightView& w, const float* x, int64_t m, float* y, ThreadPool* pool,
            MatMulScratch* scratch);

// The instruction set chosen at run time: "avx512vnni", "avx2" or "scalar".
const char* MatMulIsa();

// Forces the scalar path (tests compare SIMD against it); process-wide.
void MatMulForceScalarForTesting(bool force);

// Forces the named path ("scalar", "avx2", "avx512vnni") for tests and
// benchmarks; false (and no change) when this CPU cannot run it. nullptr
// restores the automatic choice. Process-wide; not for concurrent use with
// MatMul.
bool MatMulForceIsaForTesting(const char* isa);

}  // namespace kvserve::kernels
