// A CPU fake of the part of the CUDA runtime and cuBLAS the CUDA backend
// calls (engine/cuda/cuda_matmul_backend.cc), so that its calls are checked
// on machines without a GPU. It defines the real C symbols (cudaMalloc,
// cublasGemmEx, ...) with the documented semantics: "device" memory is host
// memory the fake tracks, cudaMemcpy checks that each side is of the kind
// the copy direction says and within its allocation, and cublasGemmEx is the
// column-major GEMM of the cuBLAS documentation, refusing operands whose
// leading dimensions or extents fall outside their allocations.
//
// The controls below set up failures and read what happened.
//
// Thread-safety: the fake and its controls are process-wide and guarded by
// one mutex.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvserve::fake_cuda {

// Restores the defaults: 1 device, no injected failures, counters 0.
// Allocations still live are kept (and counted).
void Reset();
// Devices cudaGetDeviceCount reports; 0 makes it fail as with no GPU.
void SetDeviceCount(int n);
// The n-th cudaMalloc from now (0 = the next) fails; -1 never.
void FailMallocAt(int n);
int64_t LiveAllocations();
uint64_t LiveBytes();
int64_t GemmCalls();
// The device the calling thread selected last (cudaSetDevice).
int CurrentDevice();

}  // namespace kvserve::fake_cuda
