// Where the decoder's weight matmuls run: a strategy the model holds, chosen
// by device name (engine/model/device.h). The CPU backend is kernels::MatMul
// over the GGUF's own encodings; the CUDA backend (engine/cuda) keeps f16
// copies of the weights on the GPU and runs cuBLAS.
//
// Contract: Prepare(w) once per weight matrix before the first MatMul with
// it (the model does this at load, so a missing device or too little device
// memory is a load error, not a request error). A view is identified by its
// `data` pointer, which must stay valid and unchanged while the backend
// lives.
//
// Numerics: the CPU backend is row-invariant (matmul.h: y[i] depends on x[i]
// and W only). A device backend need not be: a GPU library may pick another
// algorithm for another m, so a row's logits may differ in the last bits
// with the batch around it.
//
// Thread-safety: Prepare and MatMul from one thread at a time (the engine
// thread); not reentrant. device(), Describe() and device_bytes() are safe
// from any thread (the stats endpoint reads them while the engine runs).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "common/thread_pool.h"
#include "engine/kernels/matmul.h"

namespace kvserve::kernels {

class MatMulBackend {
 public:
  virtual ~MatMulBackend() = default;

  // "cpu", "cuda".
  virtual const char* device() const = 0;
  // Human-readable details for the startup log ("cuda:0 NVIDIA H200, ...").
  virtual std::string Describe() const = 0;

  // Readies w for MatMul (e.g. copies it to the device). Idempotent per view.
  virtual absl::Status Prepare(const WeightView& w) = 0;

  // y[m, n_out] = x[m, n_in] * W^T, f32 row-major host memory on both sides.
  // w must have been prepared. A failure (device error) leaves y unspecified.
  virtual absl::Status MatMul(const WeightView& w, const float* x, int64_t m, float* y) = 0;

  // Bytes of device memory this backend holds (weights and buffers); 0 on
  // the CPU, where the weights stay in the memory-mapped file.
  virtual uint64_t device_bytes() const = 0;
};

// kernels::MatMul on `pool` (not owned; must outlive the backend; nullptr
// runs on the calling thread).
std::unique_ptr<MatMulBackend> MakeCpuMatMulBackend(ThreadPool* pool);

}  // namespace kvserve::kernels
