#include "tests/engine/cuda/fake_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>

#include "common/fp16.h"

namespace kvserve::fake_cuda {
namespace {

struct State {
  std::mutex mu;
  int device_count = 1;
  int fail_malloc_at = -1;
  std::map<uintptr_t, size_t> allocations;  // start -> bytes
  int64_t gemm_calls = 0;
};

State& S() {
  static auto* s = new State();
  return *s;
}

thread_local int current_device = 0;

// True when [p, p + bytes) lies inside one allocation. Caller holds mu.
bool IsDeviceRange(const void* p, size_t bytes) {
  const auto& a = S().allocations;
  const uintptr_t x = reinterpret_cast<uintptr_t>(p);
  auto it = a.upper_bound(x);
  if (it == a.begin()) return false;
  --it;
  return x >= it->first && x + bytes <= it->first + it->second;
}

bool IsDevicePointer(const void* p) { return IsDeviceRange(p, 1); }

float Load(const void* base, cudaDataType t, size_t i) {
  if (t == CUDA_R_16F) return Fp16ToFp32(static_cast<const uint16_t*>(base)[i]);
  return static_cast<const float*>(base)[i];
}

size_t ElementBytes(cudaDataType t) { return t == CUDA_R_16F ? 2 : 4; }

}  // namespace

void Reset() {
  std::lock_guard<std::mutex> l(S().mu);
  S().device_count = 1;
  S().fail_malloc_at = -1;
  S().gemm_calls = 0;
}
void SetDeviceCount(int n) {
  std::lock_guard<std::mutex> l(S().mu);
  S().device_count = n;
}
void FailMallocAt(int n) {
  std::lock_guard<std::mutex> l(S().mu);
  S().fail_malloc_at = n;
}
int64_t LiveAllocations() {
  std::lock_guard<std::mutex> l(S().mu);
  return static_cast<int64_t>(S().allocations.size());
}
uint64_t LiveBytes() {
  std::lock_guard<std::mutex> l(S().mu);
  uint64_t b = 0;
  for (const auto& [p, n] : S().allocations) b += n;
  return b;
}
int64_t GemmCalls() {
  std::lock_guard<std::mutex> l(S().mu);
  return S().gemm_calls;
}
int CurrentDevice() { return current_device; }

}  // namespace kvserve::fake_cuda

using kvserve::fake_cuda::ElementBytes;
using kvserve::fake_cuda::IsDevicePointer;
using kvserve::fake_cuda::IsDeviceRange;
using kvserve::fake_cuda::S;

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  std::lock_guard<std::mutex> l(S().mu);
  *count = S().device_count;
  return S().device_count > 0 ? cudaSuccess : cudaErrorNoDevice;
}

cudaError_t cudaGetLastError(void) { return cudaSuccess; }

cudaError_t cudaSetDevice(int device) {
  std::lock_guard<std::mutex> l(S().mu);
  if (device < 0 || device >= S().device_count) return cudaErrorInvalidDevice;
  kvserve::fake_cuda::current_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* prop, int device) {
  std::lock_guard<std::mutex> l(S().mu);
  if (device < 0 || device >= S().device_count) return cudaErrorInvalidDevice;
  std::memset(prop, 0, sizeof *prop);
  std::strncpy(prop->name, "Fake CUDA device", sizeof prop->name - 1);
  prop->totalGlobalMem = size_t{1} << 30;
  return cudaSuccess;
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorMemoryAllocation:
      return "out of memory (fake)";
    case cudaErrorNoDevice:
      return "no CUDA-capable device is detected (fake)";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal (fake)";
    default:
      return "invalid argument (fake)";
  }
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  std::lock_guard<std::mutex> l(S().mu);
  if (S().fail_malloc_at == 0) {
    S().fail_malloc_at = -1;
    return cudaErrorMemoryAllocation;
  }
  if (S().fail_malloc_at > 0) --S().fail_malloc_at;
  if (size == 0) size = 1;
  auto* p = new uint8_t[size];
  std::memset(p, 0xA5, size);  // garbage, as fresh device memory may hold
  S().allocations.emplace(reinterpret_cast<uintptr_t>(p), size);
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  std::lock_guard<std::mutex> l(S().mu);
  auto it = S().allocations.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == S().allocations.end()) return cudaErrorInvalidValue;
  delete[] static_cast<uint8_t*>(ptr);
  S().allocations.erase(it);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind) {
  std::lock_guard<std::mutex> l(S().mu);
  bool ok = false;
  switch (kind) {
    case cudaMemcpyHostToDevice:
      ok = IsDeviceRange(dst, count) && !IsDevicePointer(src);
      break;
    case cudaMemcpyDeviceToHost:
      ok = IsDeviceRange(src, count) && !IsDevicePointer(dst);
      break;
    case cudaMemcpyDeviceToDevice:
      ok = IsDeviceRange(src, count) && IsDeviceRange(dst, count);
      break;
    default:
      ok = false;  // the backend names every direction
  }
  if (!ok) return cudaErrorInvalidValue;
  std::memcpy(dst, src, count);
  return cudaSuccess;
}

struct cublasContext {
  int device;
};

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  *handle = new cublasContext{kvserve::fake_cuda::current_device};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusString(cublasStatus_t status) {
  return status == CUBLAS_STATUS_SUCCESS ? "success" : "invalid value (fake)";
}

// C[i + j ldc] = alpha sum_p op(A)[i, p] op(B)[p, j] + beta C[i + j ldc],
// op(A) m x k, op(B) k x n, column-major; host alpha and beta (the default
// pointer mode).
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t algo) {
  std::lock_guard<std::mutex> l(S().mu);
  ++S().gemm_calls;
  if (handle == nullptr || m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if ((transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) ||
      (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T)) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  // The combinations the cuBLAS documentation lists for CUBLAS_COMPUTE_32F
  // that the fake implements: A and B both 16F or both 32F, C 32F.
  if (computeType != CUBLAS_COMPUTE_32F || Atype != Btype ||
      (Atype != CUDA_R_16F && Atype != CUDA_R_32F) || Ctype != CUDA_R_32F) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  // Stored shapes: A is m x k (N) or k x m (T), B is k x n (N) or n x k (T).
  const int a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
  const int b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
  if (lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  auto extent = [](int rows, int cols, int ld, size_t elem) {
    return cols == 0 ? 0 : (static_cast<size_t>(cols - 1) * ld + rows) * elem;
  };
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  if ((k > 0 && (!IsDeviceRange(A, extent(a_rows, a_cols, lda, ElementBytes(Atype))) ||
                 !IsDeviceRange(B, extent(b_rows, b_cols, ldb, ElementBytes(Btype))))) ||
      !IsDeviceRange(C, extent(m, n, ldc, 4))) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
  auto* c = static_cast<float*>(C);
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double acc = 0;
      for (int p = 0; p < k; ++p) {
        const size_t ai = transa == CUBLAS_OP_N ? i + static_cast<size_t>(p) * lda
                                                : p + static_cast<size_t>(i) * lda;
        const size_t bi = transb == CUBLAS_OP_N ? p + static_cast<size_t>(j) * ldb
                                                : j + static_cast<size_t>(p) * ldb;
        acc += static_cast<double>(kvserve::fake_cuda::Load(A, Atype, ai)) *
               kvserve::fake_cuda::Load(B, Btype, bi);
      }
      float& out = c[i + static_cast<size_t>(j) * ldc];
      // beta == 0: C is not read (it may hold NaN), as cuBLAS documents.
      out = b == 0.0f ? a * static_cast<float>(acc) : a * static_cast<float>(acc) + b * out;
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
