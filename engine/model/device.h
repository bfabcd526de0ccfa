// The compute device a model runs its weight matmuls on, chosen by name:
// "cpu" (the default), "cuda" (GPU 0) or "cuda:N". See
// engine/kernels/matmul_backend.h for what moves to the device.
//
// Thread-safety: pure functions; the backend returned follows its own
// contract.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "engine/kernels/matmul_backend.h"

namespace kvserve::model {

struct DeviceSpec {
  enum class Kind { kCpu, kCuda };
  Kind kind = Kind::kCpu;
  int ordinal = 0;  // GPU index for kCuda
};

// "cpu", "cuda", "cuda:N" (N a GPU index). InvalidArgument otherwise.
absl::StatusOr<DeviceSpec> ParseDevice(std::string_view name);

// The CUDA backend lives in libkvserve_cuda.so (engine/cuda/cuda_module_abi.h),
// loaded on first use from $KVSERVE_CUDA_MODULE if set, else beside the
// executable, else <exe dir>/../lib/kvserve/, else the build tree.
//
// The path of the module loaded; Unimplemented when there is none,
// FailedPrecondition when it cannot be loaded (CUDA libraries missing) or is
// from another build.
absl::StatusOr<std::string> CudaModulePath();

// CUDA devices the module's runtime sees; 0 without a module, driver or GPU.
int CudaDeviceCount();

// The backend for `name`. pool (not owned, may be null) runs the CPU
// backend. For "cuda": the module's errors above, or FailedPrecondition when
// there is no usable GPU.
absl::StatusOr<std::unique_ptr<kernels::MatMulBackend>> MakeMatMulBackend(std::string_view name,
                                                                          ThreadPool* pool);

}  // namespace kvserve::model
