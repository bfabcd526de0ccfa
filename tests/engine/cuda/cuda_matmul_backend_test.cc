// The CUDA backend's calls, checked against the CPU fake of the CUDA runtime
// and cuBLAS (fake_cuda.h): layouts, transposes and leading dimensions of the
// GEMM, the copies' directions and sizes, error mapping and cleanup. The
// same checks on a real GPU are in cuda_gpu_test.cc (label gpu).
#include "engine/cuda/cuda_matmul_backend.h"

#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "common/fp16.h"
#include "engine/gguf/dequantize.h"
#include "engine/gguf/ggml_type.h"
#include "engine/kernels/matmul.h"
#include "gtest/gtest.h"
#include "tests/engine/cuda/fake_cuda.h"
#include "tests/engine/cuda/weight_fixtures.h"

namespace kvserve::cuda {
namespace {

using gguf::GgmlType;
using testing::F16Reference;
using testing::Matrix;
using testing::RandomMatrix;
using testing::RandomRows;

class CudaMatMulBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fake_cuda::Reset();
    baseline_allocations_ = fake_cuda::LiveAllocations();
  }
  void TearDown() override {
    EXPECT_EQ(fake_cuda::LiveAllocations(), baseline_allocations_) << "device memory leaked";
    fake_cuda::Reset();
  }
  std::unique_ptr<kernels::MatMulBackend> Make(int ordinal = 0) {
    auto b = MakeCudaMatMulBackend(ordinal);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? std::move(*b) : nullptr;
  }
  int64_t baseline_allocations_ = 0;
};

class CudaMatMulTypesTest : public CudaMatMulBackendTest,
                            public ::testing::WithParamInterface<GgmlType> {};

TEST_P(CudaMatMulTypesTest, MatchesTheF16ReferenceForManyRowCounts) {
  auto backend = Make();
  ASSERT_NE(backend, nullptr);
  // n_out not a multiple of anything, n_in two GGML blocks and more.
  Matrix w = RandomMatrix(GetParam(), 37, 96, 11);
  ASSERT_TRUE(backend->Prepare(w.view).ok());
  for (int64_t m : {1, 2, 7, 33}) {
    SCOPED_TRACE(m);
    const auto x = RandomRows(m, w.view.n_in, 100 + m);
    std::vector<float> y(static_cast<size_t>(m * w.view.n_out), -1.0f);
    absl::Status s = backend->MatMul(w.view, x.data(), m, y.data());
    ASSERT_TRUE(s.ok()) << s;
    const auto want = F16Reference(w.view, x, m);
    for (size_t i = 0; i < y.size(); ++i) {
      ASSERT_NEAR(y[i], want[i], 1e-5 * (1 + std::fabs(want[i]))) << "element " << i;
    }
  }
}

TEST_P(CudaMatMulTypesTest, AgreesWithTheCpuKernel) {
  auto backend = Make();
  ASSERT_NE(backend, nullptr);
  Matrix w = RandomMatrix(GetParam(), 48, 128, 5);
  ASSERT_TRUE(backend->Prepare(w.view).ok());
  const int64_t m = 5;
  const auto x = RandomRows(m, w.view.n_in, 9);
  std::vector<float> got(static_cast<size_t>(m * w.view.n_out));
  std::vector<float> cpu(got.size());
  ASSERT_TRUE(backend->MatMul(w.view, x.data(), m, got.data()).ok());
  kernels::MatMulScratch scratch;
  kernels::MatMul(w.view, x.data(), m, cpu.data(), nullptr, &scratch);
  // The CPU kernel quantises activations to 8 bits for quantised weights;
  // f16 activations are closer to exact, so the two differ by the CPU's
  // rounding, a few percent of the output's scale at most.
  double err = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err += (got[i] - cpu[i]) * (got[i] - cpu[i]);
    norm += cpu[i] * cpu[i];
  }
  EXPECT_LT(std::sqrt(err / norm), 0.02);
}

INSTANTIATE_TEST_SUITE_P(AllMatMulTypes, CudaMatMulTypesTest,
                         ::testing::Values(GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16,
                                           GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1),
                         [](const auto& info) { return std::string(gguf::TypeName(info.param)); });

TEST_F(CudaMatMulBackendTest, ReadsRowsAtTheirStrideNotTheirEncodedSize) {
  auto backend = Make();
  ASSERT_NE(backend, nullptr);
  Matrix w = RandomMatrix(GgmlType::kQ8_0, 9, 64, 3, /*pad=*/24);
  ASSERT_TRUE(backend->Prepare(w.view).ok());
  const auto x = RandomRows(3, 64, 4);
  std::vector<float> y(27);
  ASSERT_TRUE(backend->MatMul(w.view, x.data(), 3, y.data()).ok());
  const auto want = F16Reference(w.view, x, 3);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], want[i], 1e-5 * (1 + std::fabs(want[i])));
}

TEST_F(CudaMatMulBackendTest, PrepareIsIdempotentAndCountsDeviceBytes) {
  auto backend = Make();
  ASSERT_NE(backend, nullptr);
  EXPECT_EQ(backend->device_bytes(), 0u);
  Matrix w = RandomMatrix(GgmlType::kQ4_1, 16, 64, 1);
  ASSERT_TRUE(backend->Prepare(w.view).ok());
  const int64_t after_first = fake_cuda::LiveAllocations();
  ASSERT_TRUE(backend->Prepare(w.view).ok());
  EXPECT_EQ(fake_cuda::LiveAllocations(), after_first);
  EXPECT_EQ(backend->device_bytes(), 16u * 64u * 2u);  // f16 weights
  const auto x = RandomRows(4, 64, 2);
  std::vector<float> y(64);
  ASSERT_TRUE(backend->MatMul(w.view, x.data(), 4, y.data()).ok());
  // + f16 activations [4, 64] and f32 outputs [4, 16].
  EXPECT_EQ(backend->device_bytes(), 16u * 64u * 2u + 4u * 64u * 2u + 4u * 16u * 4u);
  EXPECT_EQ(fake_cuda::LiveBytes() >= backend->device_bytes(), true);
  EXPECT_EQ(backend->device(), std::string("cuda"));
  EXPECT_NE(backend->Describe().find("Fake CUDA device"), std::string::npos);
}

TEST_F(CudaMatMulBackendTest, ZeroRowsIsANoOp) {
  auto backend = Make();
  ASSERT_NE(backend, nullptr);
  Matrix w = RandomMatrix(GgmlType::kF16, 8, 32, 1);
  ASSERT_TRUE(backend->Prepare(w.view).ok());
  const int64_t gemms = fake_cuda::GemmCalls();
  EXPECT_TRUE(backend->MatMul(w.view, nullptr, 0, nullptr).ok());
  EXPECT_EQ(fake_cuda::GemmCalls(), gemms);
}

TEST_F(CudaMatMulBackendTest, NoDeviceIsAFailedPrecondition) {
  fake_cuda::SetDeviceCount(0);
  auto b = MakeCudaMatMulBackend(0);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(b.status().message().find("no usable CUDA device"), std::string::npos) << b.status();
  EXPECT_EQ(CudaDeviceCount(), 0);
}

TEST_F(CudaMatMulBackendTest, OrdinalBeyondTheDevicesIsAFailedPrecondition) {
  fake_cuda::SetDeviceCount(2);
  EXPECT_EQ(CudaDeviceCount(), 2);
  auto b = MakeCudaMatMulBackend(2);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(b.status().message().find("2 device(s)"), std::string::npos) << b.status();
}

TEST_F(CudaMatMulBackendTest, SelectsItsDeviceOnTheCallingThread) {
  fake_cuda::SetDeviceCount(2);
  auto backend = Make(1);
  ASSERT_NE(backend, nullptr);
  Matrix w = RandomMatrix(GgmlType::kF32, 4, 32, 1);
  ASSERT_TRUE(backend->Prepare(w.view).ok());
  // The engine thread is not the thread that loaded the model.
  int device_seen = -1;
  absl::Status s;
  std::thread t([&] {
    const auto x = RandomRows(1, 32, 1);
    std::vector<float> y(4);
    s = backend->MatMul(w.view, x.data(), 1, y.data());
    device_seen = fake_cuda::CurrentDevice();
  });
  t.join();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(device_seen, 1);
}

TEST_F(CudaMatMulBackendTest, OutOfDeviceMemoryIsResourceExhaustedAndLeaksNothing) {
  auto backend = Make();
  ASSERT_NE(backend, nullptr);
  Matrix w = RandomMatrix(GgmlType::kQ4_0, 8, 64, 1);
  fake_cuda::FailMallocAt(0);
  absl::Status s = backend->Prepare(w.view);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(backend->device_bytes(), 0u);
  // The failure is not remembered: the next Prepare succeeds.
  ASSERT_TRUE(backend->Prepare(w.view).ok());
  // A failed activation buffer fails the call, not the backend.
  fake_cuda::FailMallocAt(0);
  const auto x = RandomRows(2, 64, 1);
  std::vector<float> y(16);
  EXPECT_EQ(backend->MatMul(w.view, x.data(), 2, y.data()).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(backend->MatMul(w.view, x.data(), 2, y.data()).ok());
}

TEST_F(CudaMatMulBackendTest, UnpreparedWeightIsAFailedPrecondition) {
  auto backend = Make();
  ASSERT_NE(backend, nullptr);
  Matrix w = RandomMatrix(GgmlType::kF32, 4, 32, 1);
  const auto x = RandomRows(1, 32, 1);
  std::vector<float> y(4);
  EXPECT_EQ(backend->MatMul(w.view, x.data(), 1, y.data()).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(CudaMatMulBackendTest, WeightBeyondF16IsRefusedAtPrepare) {
  auto backend = Make();
  ASSERT_NE(backend, nullptr);
  Matrix w = RandomMatrix(GgmlType::kF32, 4, 32, 1);
  const float big = 1e6f;
  std::memcpy(w.bytes.data() + w.view.row_bytes * 2 + 5 * sizeof(float), &big, sizeof big);
  absl::Status s = backend->Prepare(w.view);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("--device cpu"), std::string::npos) << s;
  EXPECT_EQ(backend->device_bytes(), 0u);
}

TEST_F(CudaMatMulBackendTest, ActivationsBeyondF16Saturate) {
  auto backend = Make();
  ASSERT_NE(backend, nullptr);
  std::vector<float> ones(32, 1.0f);
  Matrix w;
  w.bytes.resize(32 * sizeof(float));
  std::memcpy(w.bytes.data(), ones.data(), w.bytes.size());
  w.view = {GgmlType::kF32, 32, 1, w.bytes.data(), 32 * sizeof(float)};
  ASSERT_TRUE(backend->Prepare(w.view).ok());
  std::vector<float> x(32, 0.0f);
  x[0] = 1e6f;  // beyond f16: becomes 65504, not infinity
  float y = 0;
  ASSERT_TRUE(backend->MatMul(w.view, x.data(), 1, &y).ok());
  EXPECT_FLOAT_EQ(y, 65504.0f);
}

TEST_F(CudaMatMulBackendTest, DestroyingTheBackendFreesItsDeviceMemory) {
  const int64_t before = fake_cuda::LiveAllocations();
  {
    auto backend = Make();
    ASSERT_NE(backend, nullptr);
    Matrix w = RandomMatrix(GgmlType::kQ8_0, 8, 64, 1);
    ASSERT_TRUE(backend->Prepare(w.view).ok());
    const auto x = RandomRows(3, 64, 1);
    std::vector<float> y(24);
    ASSERT_TRUE(backend->MatMul(w.view, x.data(), 3, y.data()).ok());
    EXPECT_EQ(fake_cuda::LiveAllocations(), before + 3);  // weights, x, y
  }
  EXPECT_EQ(fake_cuda::LiveAllocations(), before);
}

}  // namespace
}  // namespace kvserve::cuda
