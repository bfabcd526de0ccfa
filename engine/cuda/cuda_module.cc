// The C entry points of libkvserve_cuda.so (see cuda_module_abi.h).
#include <cstdio>
#include <memory>
#include <string>

#include "engine/cuda/cuda_matmul_backend.h"
#include "engine/cuda/cuda_module_abi.h"

extern "C" {

__attribute__((visibility("default"))) int kvserve_cuda_module_abi() {
  return kvserve::cuda::kCudaModuleAbi;
}

__attribute__((visibility("default"))) kvserve::kernels::MatMulBackend* kvserve_cuda_make_backend(
    int ordinal, int* code, char* err, size_t err_len) {
  auto backend = kvserve::cuda::MakeCudaMatMulBackend(ordinal);
  if (backend.ok()) return backend->release();
  *code = static_cast<int>(backend.status().code());
  if (err_len > 0) {
    std::snprintf(err, err_len, "%s", std::string(backend.status().message()).c_str());
  }
  return nullptr;
}

__attribute__((visibility("default"))) int kvserve_cuda_device_count() {
  return kvserve::cuda::CudaDeviceCount();
}

}  // extern "C"
