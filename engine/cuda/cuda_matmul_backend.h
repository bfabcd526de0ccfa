// The CUDA matmul backend: the decoder's weight matmuls on one NVIDIA GPU
// through cuBLAS.
//
// Prepare dequantizes a weight matrix (any GGUF encoding the loader hands
// over) to f16, [n_out, n_in] row-major as in the file, and copies it to the
// GPU once. MatMul converts the activations to f16 on the host (half the
// bytes to copy), copies them over, runs one cublasGemmEx (f16 inputs, f32
// accumulation, f32 output) and copies y back; the copies are synchronous,
// so y is ready when MatMul returns.
//
// What stays on the CPU: embeddings, norms, RoPE, attention and the paged KV
// cache, because the compression policies read and rewrite KV blocks in host
// memory between forward passes. This is llama.cpp's arrangement with
// --no-kv-offload: the weights' FLOPs move, the KV cache does not.
//
// Numerics: f16 weights and activations with f32 accumulation, as llama.cpp's
// cuBLAS path. Activations beyond the f16 range saturate at +-65504; a weight
// beyond it fails Prepare (the model then needs the CPU backend). Not
// row-invariant (see matmul_backend.h).
//
// Thread-safety: as MatMulBackend (device_bytes() is an atomic snapshot).
// MatMul may run on another thread than the one that created the backend
// (it selects its device each call).
#pragma once

#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/kernels/matmul_backend.h"

namespace kvserve::cuda {

// The backend on GPU `ordinal`. FailedPrecondition when the CUDA runtime
// finds no usable device (no GPU, no driver) or no device `ordinal`.
absl::StatusOr<std::unique_ptr<kernels::MatMulBackend>> MakeCudaMatMulBackend(int ordinal);

// Number of CUDA devices the runtime sees; 0 when there is no driver or GPU.
int CudaDeviceCount();

}  // namespace kvserve::cuda
