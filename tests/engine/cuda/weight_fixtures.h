// Random weight matrices in GGML encodings and the f16 reference product the
// CUDA backend promises (cuda_matmul_backend.h), for the fake-device and
// real-GPU tests alike.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/gguf/ggml_type.h"
#include "engine/kernels/matmul.h"

namespace kvserve::testing {

// Owns the bytes `view` points at.
struct Matrix {
  std::vector<uint8_t> bytes;
  kernels::WeightView view;
};

// n_out rows of n_in N(0, 1) values encoded in `t`; rows are `pad` bytes
// further apart than their encoded size. n_in a multiple of 32.
Matrix RandomMatrix(gguf::GgmlType t, int64_t n_out, int64_t n_in, uint64_t seed, size_t pad = 0);

// [m, n] N(0, 1) activations.
std::vector<float> RandomRows(int64_t m, int64_t n, uint64_t seed);

// y[m, n_out] = x W^T in double, with W as the file decodes it and both W and
// x rounded to f16 first.
std::vector<double> F16Reference(const kernels::WeightView& w, const std::vector<float>& x,
                                 int64_t m);

}  // namespace kvserve::testing
