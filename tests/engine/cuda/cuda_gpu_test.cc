// The CUDA backend on a real GPU (label gpu): cuBLAS against the f16
// reference for every weight encoding, and the real model's logits on the
// GPU against the CPU's. Every test skips when the CUDA runtime sees no
// device, so the label runs anywhere.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "engine/cuda/cuda_matmul_backend.h"
#include "engine/model/llama_model.h"
#include "gtest/gtest.h"
#include "kvcache/contiguous_kv_cache.h"
#include "tests/engine/cuda/weight_fixtures.h"
#include "tests/engine/model/tiny_model.h"
#include "tests/support/temp_dir.h"

namespace kvserve::cuda {
namespace {

using gguf::GgmlType;

#define SKIP_WITHOUT_GPU() \
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device"

class CudaGpuTypesTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(CudaGpuTypesTest, CublasMatchesTheF16Reference) {
  SKIP_WITHOUT_GPU();
  auto backend = MakeCudaMatMulBackend(0);
  ASSERT_TRUE(backend.ok()) << backend.status();
  // SmolLM2's FFN shape: n_in 576, n_out 1536.
  testing::Matrix w = testing::RandomMatrix(GetParam(), 1536, 576, 17);
  ASSERT_TRUE((*backend)->Prepare(w.view).ok());
  for (int64_t m : {1, 3, 64, 513}) {
    SCOPED_TRACE(m);
    const auto x = testing::RandomRows(m, w.view.n_in, 40 + m);
    std::vector<float> y(static_cast<size_t>(m * w.view.n_out));
    absl::Status s = (*backend)->MatMul(w.view, x.data(), m, y.data());
    ASSERT_TRUE(s.ok()) << s;
    const auto want = testing::F16Reference(w.view, x, m);
    // Products of f16 values are exact in f32; only the f32 sum of 576
    // terms of size ~1 rounds: far below 1e-2 absolute.
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], want[i], 1e-2) << "element " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(AllMatMulTypes, CudaGpuTypesTest,
                         ::testing::Values(GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16,
                                           GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1),
                         [](const auto& info) { return std::string(gguf::TypeName(info.param)); });

// Logits of a 96-token prefill (every row).
std::vector<float> Prefill(model::LlamaModel* m) {
  const model::ModelConfig& c = m->config();
  kvcache::ContiguousKvCache kv({c.n_layers, c.n_kv_head, c.head_dim});
  const int n = 96;
  EXPECT_TRUE(kv.AddSequence(0, n).ok());
  model::Batch b;
  for (int i = 0; i < n; ++i) b.Add((1000 + i * 37) % c.n_vocab, i, 0, true);
  std::vector<float> logits;
  absl::Status s = m->Forward(b, &kv, &logits);
  EXPECT_TRUE(s.ok()) << s;
  return logits;
}

// Compares the two models' logits of the same prefill: norm-relative error
// below `max_err` and the same argmax in at least 90% of the rows.
void ExpectSameLogits(const std::string& path, double max_err) {
  auto cpu = model::LlamaModel::Load(path, 0, "cpu");
  auto gpu = model::LlamaModel::Load(path, 0, "cuda");
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const auto want = Prefill(cpu->get());
  const auto got = Prefill(gpu->get());
  ASSERT_EQ(got.size(), want.size());
  const int V = (*cpu)->config().n_vocab;
  const int rows = static_cast<int>(got.size() / V);
  double err = 0, norm = 0;
  int same_top = 0;
  for (int r = 0; r < rows; ++r) {
    int a = 0, b = 0;
    for (int v = 0; v < V; ++v) {
      const size_t i = static_cast<size_t>(r) * V + v;
      err += (got[i] - want[i]) * (got[i] - want[i]);
      norm += want[i] * want[i];
      if (got[i] > got[static_cast<size_t>(r) * V + a]) a = v;
      if (want[i] > want[static_cast<size_t>(r) * V + b]) b = v;
    }
    same_top += a == b ? 1 : 0;
  }
  // The CPU quantises activations to 8 bits, the GPU to f16: near ties may
  // flip, nothing more.
  EXPECT_LT(std::sqrt(err / norm), max_err);
  EXPECT_GE(same_top, rows * 9 / 10) << same_top << " of " << rows;
}

// Needs no model file, so it runs on a bare GPU machine.
TEST(CudaGpuModelTest, TinyModelLogitsMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  testing::TinyLlamaSpec spec;
  spec.matrix_type = GgmlType::kQ4_1;
  spec.n_vocab = 256;
  spec.n_ctx = 256;
  const std::string path = kvserve::testing::ProcessTempDir() + "/cuda_gpu_tiny.gguf";
  testing::TinyLlamaWeights w;
  ASSERT_TRUE(testing::WriteTinyLlama(path, spec, &w).ok());
  ExpectSameLogits(path, 0.03);
}

TEST(CudaGpuModelTest, RealModelLogitsMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  const char* path = std::getenv("KVSERVE_MODEL");
  if (path == nullptr || std::ifstream(path).fail()) GTEST_SKIP() << "KVSERVE_MODEL not set";
  ExpectSameLogits(path, 0.05);
}

}  // namespace
}  // namespace kvserve::cuda
