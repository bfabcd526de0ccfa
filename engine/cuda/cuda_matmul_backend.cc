#include "engine/cuda/cuda_matmul_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/fp16.h"
#include "engine/gguf/dequantize.h"

namespace kvserve::cuda {
namespace {

absl::Status FromCuda(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  std::string msg = absl::StrCat("CUDA ", std::string(what), ": ", cudaGetErrorString(e));
  if (e == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorInvalidDevice) {
    return absl::FailedPreconditionError(msg);
  }
  return absl::InternalError(msg);
}

absl::Status FromCublas(cublasStatus_t s, std::string_view what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  std::string msg = absl::StrCat("cuBLAS ", std::string(what), ": ", cublasGetStatusString(s));
  if (s == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

// Device memory owned by one object; grows on demand, never shrinks.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Release();
      ptr_ = o.ptr_;
      bytes_ = o.bytes_;
      o.ptr_ = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }
  ~DeviceBuffer() { Release(); }
  void Release() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }

  // At least `bytes` of device memory; the old contents are not kept.
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    Release();
    absl::Status s =
        FromCuda(cudaMalloc(&ptr_, bytes), absl::StrCat("cudaMalloc of ", bytes, " bytes"));
    if (!s.ok()) {
      ptr_ = nullptr;
      return s;
    }
    bytes_ = bytes;
    return absl::OkStatus();
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

struct DeviceMatrix {
  DeviceBuffer data;  // [n_out, n_in] f16, row-major
  int64_t n_in = 0;
  int64_t n_out = 0;
};

// Rows dequantized per host-to-device copy at Prepare: bounds the host
// staging memory to about this many bytes of f16.
constexpr size_t kStagingBytes = size_t{8} << 20;

class CudaMatMulBackend : public kernels::MatMulBackend {
 public:
  CudaMatMulBackend(int ordinal, cublasHandle_t handle, std::string name, size_t total_bytes)
      : ordinal_(ordinal), handle_(handle), name_(std::move(name)), total_bytes_(total_bytes) {}
  ~CudaMatMulBackend() override {
    cudaSetDevice(ordinal_);
    weights_.clear();
    x_dev_ = DeviceBuffer();
    y_dev_ = DeviceBuffer();
    cublasDestroy(handle_);
  }

  const char* device() const override { return "cuda"; }
  std::string Describe() const override {
    return absl::StrCat("cuda:", ordinal_, " ", name_, " (", total_bytes_ >> 20, " MiB)");
  }

  absl::Status Prepare(const kernels::WeightView& w) override {
    if (weights_.contains(w.data)) return absl::OkStatus();
    if (w.data == nullptr || w.n_in <= 0 || w.n_out <= 0 ||
        w.n_in > std::numeric_limits<int>::max() || w.n_out > std::numeric_limits<int>::max()) {
      return absl::InvalidArgumentError(
          absl::StrCat("CUDA backend: cannot use a ", w.n_out, " x ", w.n_in, " weight matrix"));
    }
    absl::Status s = FromCuda(cudaSetDevice(ordinal_), "cudaSetDevice");
    if (!s.ok()) return s;
    DeviceMatrix m;
    m.n_in = w.n_in;
    m.n_out = w.n_out;
    const size_t row_f16 = static_cast<size_t>(w.n_in) * sizeof(uint16_t);
    s = m.data.Reserve(row_f16 * static_cast<size_t>(w.n_out));
    if (!s.ok()) return s;
    const int64_t rows_per_copy =
        std::max<int64_t>(1, std::min<int64_t>(w.n_out, kStagingBytes / row_f16));
    std::vector<float> row(static_cast<size_t>(w.n_in));
    std::vector<uint16_t> staging(static_cast<size_t>(rows_per_copy * w.n_in));
    for (int64_t r0 = 0; r0 < w.n_out; r0 += rows_per_copy) {
      const int64_t rows = std::min(rows_per_copy, w.n_out - r0);
      for (int64_t r = 0; r < rows; ++r) {
        s = gguf::DequantizeRow(w.type, w.data + static_cast<size_t>(r0 + r) * w.row_bytes,
                                row.data(), w.n_in);
        if (!s.ok()) return s;
        for (int64_t i = 0; i < w.n_in; ++i) {
          if (!(std::fabs(row[i]) <= 65504.0f)) {
            return absl::InvalidArgumentError(
                absl::StrCat("CUDA backend: weight ", row[i], " (row ", r0 + r, ", column ", i,
                             ") is outside the f16 range; use --device cpu for this model"));
          }
        }
        Fp32ToFp16Saturated(row.data(), &staging[static_cast<size_t>(r * w.n_in)], w.n_in);
      }
      s = FromCuda(cudaMemcpy(static_cast<uint8_t*>(m.data.get()) + r0 * row_f16, staging.data(),
                              static_cast<size_t>(rows) * row_f16, cudaMemcpyHostToDevice),
                   "weight upload");
      if (!s.ok()) return s;
    }
    weight_bytes_ += m.data.bytes();
    weights_.emplace(w.data, std::move(m));
    PublishBytes();
    return absl::OkStatus();
  }

  absl::Status MatMul(const kernels::WeightView& w, const float* x, int64_t m, float* y) override {
    if (m <= 0) return absl::OkStatus();
    auto it = weights_.find(w.data);
    if (it == weights_.end()) {
      return absl::FailedPreconditionError("CUDA backend: MatMul with an unprepared weight");
    }
    const DeviceMatrix& W = it->second;
    if (m > std::numeric_limits<int>::max()) {
      return absl::InvalidArgumentError(absl::StrCat("CUDA backend: ", m, " rows"));
    }
    absl::Status s = FromCuda(cudaSetDevice(ordinal_), "cudaSetDevice");
    if (!s.ok()) return s;
    const size_t n_x = static_cast<size_t>(m) * static_cast<size_t>(W.n_in);
    const size_t n_y = static_cast<size_t>(m) * static_cast<size_t>(W.n_out);
    x_half_.resize(n_x);
    Fp32ToFp16Saturated(x, x_half_.data(), static_cast<int64_t>(n_x));
    s = x_dev_.Reserve(n_x * sizeof(uint16_t));
    if (s.ok()) s = y_dev_.Reserve(n_y * sizeof(float));
    PublishBytes();  // a failed Reserve released the old buffer
    if (!s.ok()) return s;
    s = FromCuda(
        cudaMemcpy(x_dev_.get(), x_half_.data(), n_x * sizeof(uint16_t), cudaMemcpyHostToDevice),
        "activation upload");
    if (!s.ok()) return s;
    // cuBLAS is column-major. Row-major y [m, n_out] is column-major y^T
    // [n_out, m] (ld n_out), and y^T = W x^T: W is stored row-major
    // [n_out, n_in], i.e. column-major W^T with ld n_in, so op(A) = T; x
    // row-major [m, n_in] is column-major x^T with ld n_in, so op(B) = N.
    const float alpha = 1.0f, beta = 0.0f;
    s = FromCublas(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(W.n_out),
                                static_cast<int>(m), static_cast<int>(W.n_in), &alpha, W.data.get(),
                                CUDA_R_16F, static_cast<int>(W.n_in), x_dev_.get(), CUDA_R_16F,
                                static_cast<int>(W.n_in), &beta, y_dev_.get(), CUDA_R_32F,
                                static_cast<int>(W.n_out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx");
    if (!s.ok()) return s;
    // A plain cudaMemcpy waits for the GEMM on the legacy default stream
    // (the handle's stream) before copying.
    return FromCuda(cudaMemcpy(y, y_dev_.get(), n_y * sizeof(float), cudaMemcpyDeviceToHost),
                    "result download");
  }

  uint64_t device_bytes() const override { return device_bytes_.load(std::memory_order_relaxed); }

 private:
  void PublishBytes() {
    device_bytes_.store(weight_bytes_ + x_dev_.bytes() + y_dev_.bytes(), std::memory_order_relaxed);
  }

  int ordinal_;
  cublasHandle_t handle_;  // owned; destroyed with the backend
  std::string name_;
  size_t total_bytes_;
  absl::flat_hash_map<const uint8_t*, DeviceMatrix> weights_;  // by WeightView::data
  uint64_t weight_bytes_ = 0;
  std::atomic<uint64_t> device_bytes_{0};  // what device_bytes() reports
  DeviceBuffer x_dev_;                     // [m, n_in] f16
  DeviceBuffer y_dev_;                     // [m, n_out] f32
  std::vector<uint16_t> x_half_;
};

}  // namespace

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

absl::StatusOr<std::unique_ptr<kernels::MatMulBackend>> MakeCudaMatMulBackend(int ordinal) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrCat("--device cuda: no usable CUDA device (",
                     e != cudaSuccess ? cudaGetErrorString(e) : "the runtime sees 0 devices", ")"));
  }
  if (ordinal < 0 || ordinal >= n) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device cuda:", ordinal, ": the runtime sees ", n, " device(s)"));
  }
  absl::Status s = FromCuda(cudaSetDevice(ordinal), "cudaSetDevice");
  if (!s.ok()) return s;
  cudaDeviceProp prop;
  std::memset(&prop, 0, sizeof prop);
  s = FromCuda(cudaGetDeviceProperties(&prop, ordinal), "cudaGetDeviceProperties");
  if (!s.ok()) return s;
  cublasHandle_t handle = nullptr;
  s = FromCublas(cublasCreate(&handle), "cublasCreate");
  if (!s.ok()) return s;
  return std::make_unique<CudaMatMulBackend>(ordinal, handle, std::string(prop.name),
                                             prop.totalGlobalMem);
}

}  // namespace kvserve::cuda
