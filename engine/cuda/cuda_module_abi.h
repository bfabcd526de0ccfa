// The entry points of libkvserve_cuda.so, the CUDA backend as a module that
// kvserve loads with dlopen only when a model asks for --device cuda, so that
// a CPU-only run never maps the CUDA runtime and cuBLAS (about 200 MiB of
// resident memory at startup when linked directly).
//
// The module and the binary must come from the same build: both check
// kCudaModuleAbi, and the backend object crosses the boundary as a C++
// MatMulBackend (same compiler, same libstdc++ and Abseil). The module is
// never unloaded.
#pragma once

#include <cstddef>

namespace kvserve::kernels {
class MatMulBackend;
}

namespace kvserve::cuda {

// Bumped whenever MatMulBackend or the signatures below change.
inline constexpr int kCudaModuleAbi = 1;

inline constexpr char kAbiSymbol[] = "kvserve_cuda_module_abi";
inline constexpr char kMakeSymbol[] = "kvserve_cuda_make_backend";
inline constexpr char kDeviceCountSymbol[] = "kvserve_cuda_device_count";

// int kvserve_cuda_module_abi(void): the module's kCudaModuleAbi.
using AbiFn = int (*)();
// A new backend on GPU `ordinal` (the caller owns it and deletes it through
// MatMulBackend's virtual destructor), or nullptr with *code set to an
// absl::StatusCode value and a message in err[0, err_len).
using MakeFn = kernels::MatMulBackend* (*)(int ordinal, int* code, char* err, size_t err_len);
// int kvserve_cuda_device_count(void): CUDA devices the runtime sees.
using DeviceCountFn = int (*)();

}  // namespace kvserve::cuda
