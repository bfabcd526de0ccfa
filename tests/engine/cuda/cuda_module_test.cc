// --device cuda end to end on machines without a GPU: the model loads the
// CUDA module through dlopen, here a build of the real backend and entry
// points over the fake CUDA runtime (fake_cuda.h), prepares every weight on
// the "device" and runs whole forward passes there. Also the loader's
// errors: no module, a file that is not one, the real module without a GPU.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "engine/model/device.h"
#include "engine/model/llama_model.h"
#include "gtest/gtest.h"
#include "kvcache/contiguous_kv_cache.h"
#include "tests/engine/model/tiny_model.h"
#include "tests/support/temp_dir.h"

namespace kvserve::model {
namespace {

// Points the loader at `path` for the life of the object.
class ModuleOverride {
 public:
  explicit ModuleOverride(const std::string& path) {
    setenv("KVSERVE_CUDA_MODULE", path.c_str(), 1);
  }
  ~ModuleOverride() { unsetenv("KVSERVE_CUDA_MODULE"); }
};

// That the loader refused with `code` and a message naming `text`.
void ExpectRefused(const absl::Status& st, absl::StatusCode code, const std::string& text) {
  EXPECT_EQ(st.code(), code) << st;
  EXPECT_NE(st.message().find(text), std::string::npos) << st;
}

std::string TinyModel(gguf::GgmlType type, const std::string& name) {
  testing::TinyLlamaSpec spec;
  spec.matrix_type = type;
  spec.n_embd = 64;
  spec.n_ff = 96;
  const std::string path = kvserve::testing::ProcessTempDir() + "/" + name + ".gguf";
  testing::TinyLlamaWeights w;
  absl::Status s = testing::WriteTinyLlama(path, spec, &w);
  EXPECT_TRUE(s.ok()) << s;
  return path;
}

// Logits of a prefill of `n` tokens followed by two decode steps.
std::vector<float> RunSteps(LlamaModel* m, int n) {
  const ModelConfig& c = m->config();
  kvcache::ContiguousKvCache kv({c.n_layers, c.n_kv_head, c.head_dim});
  EXPECT_TRUE(kv.AddSequence(0, n + 2).ok());
  std::vector<float> all, logits;
  Batch b;
  for (int i = 0; i < n; ++i) b.Add((i * 7 + 3) % c.n_vocab, i, 0, true);
  absl::Status s = m->Forward(b, &kv, &logits);
  EXPECT_TRUE(s.ok()) << s;
  all.insert(all.end(), logits.begin(), logits.end());
  for (int step = 0; step < 2; ++step) {
    b.Clear();
    b.Add((n + step) % c.n_vocab, n + step, 0, true);
    s = m->Forward(b, &kv, &logits);
    EXPECT_TRUE(s.ok()) << s;
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

TEST(CudaModuleTest, ParsesDeviceNames) {
  EXPECT_EQ(ParseDevice("cpu")->kind, DeviceSpec::Kind::kCpu);
  EXPECT_EQ(ParseDevice("cuda")->kind, DeviceSpec::Kind::kCuda);
  EXPECT_EQ(ParseDevice("cuda")->ordinal, 0);
  EXPECT_EQ(ParseDevice("cuda:3")->ordinal, 3);
  for (const char* bad : {"", "gpu", "CUDA", "cuda:", "cuda:-1", "cuda:x", "cuda:1x", "cpu:0"}) {
    EXPECT_EQ(ParseDevice(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(CudaModuleTest, ForwardOnTheFakeDeviceMatchesTheCpu) {
  ModuleOverride use(KVSERVE_FAKE_CUDA_MODULE);
  for (gguf::GgmlType t : {gguf::GgmlType::kF32, gguf::GgmlType::kQ4_1, gguf::GgmlType::kQ8_0}) {
    SCOPED_TRACE(std::string(gguf::TypeName(t)));
    const std::string path = TinyModel(t, "cuda_module_" + std::string(gguf::TypeName(t)));
    auto cpu = LlamaModel::Load(path, 2, "cpu");
    auto gpu = LlamaModel::Load(path, 2, "cuda");
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    EXPECT_STREQ((*gpu)->backend().device(), "cuda");
    EXPECT_GT((*gpu)->backend().device_bytes(), 0u);
    EXPECT_EQ((*cpu)->backend().device_bytes(), 0u);
    const auto want = RunSteps(cpu->get(), 24);
    const auto got = RunSteps(gpu->get(), 24);
    ASSERT_EQ(got.size(), want.size());
    // f16 weights and activations against the CPU's own rounding (8-bit
    // activations for quantised weights): close, and the same argmax.
    const int V = (*cpu)->config().n_vocab;
    double err = 0, norm = 0;
    int same_top = 0;
    for (size_t r = 0; r < got.size() / V; ++r) {
      int a = 0, b = 0;
      for (int v = 0; v < V; ++v) {
        const size_t i = r * V + v;
        err += (got[i] - want[i]) * (got[i] - want[i]);
        norm += want[i] * want[i];
        if (got[i] > got[r * V + a]) a = v;
        if (want[i] > want[r * V + b]) b = v;
      }
      same_top += a == b ? 1 : 0;
    }
    EXPECT_LT(std::sqrt(err / norm), 0.03);
    EXPECT_GE(same_top, static_cast<int>(got.size() / V) - 1);
  }
}

TEST(CudaModuleTest, MissingModuleIsUnimplementedAndNamesThePath) {
  ModuleOverride use("/nonexistent/libkvserve_cuda.so");
  ExpectRefused(MakeMatMulBackend("cuda", nullptr).status(), absl::StatusCode::kUnimplemented,
                "/nonexistent/libkvserve_cuda.so");
  EXPECT_EQ(CudaDeviceCount(), 0);
  // The CPU needs no module.
  EXPECT_TRUE(MakeMatMulBackend("cpu", nullptr).ok());
}

TEST(CudaModuleTest, AFileThatIsNotAModuleIsAFailedPrecondition) {
  const std::string path = kvserve::testing::ProcessTempDir() + "/not_a_module.so";
  std::ofstream(path) << "not an ELF file\n";
  ModuleOverride use(path);
  ExpectRefused(MakeMatMulBackend("cuda:0", nullptr).status(),
                absl::StatusCode::kFailedPrecondition, "cannot load");
}

TEST(CudaModuleTest, ASharedObjectWithoutTheEntryPointsIsRefused) {
  // The fake CUDA module's sibling without entry points: any shared object
  // of the system will do; libm is on every Debian.
  const char* libm = "/lib/x86_64-linux-gnu/libm.so.6";
  if (std::ifstream(libm).fail()) GTEST_SKIP() << "no " << libm;
  ModuleOverride use(libm);
  ExpectRefused(MakeMatMulBackend("cuda", nullptr).status(), absl::StatusCode::kFailedPrecondition,
                "not a CUDA module");
}

TEST(CudaModuleTest, TheRealModuleLoadsAndReportsTheGpuOrItsAbsence) {
  ModuleOverride use(KVSERVE_REAL_CUDA_MODULE);
  auto path = CudaModulePath();
  ASSERT_TRUE(path.ok()) << path.status();  // links against the toolkit's libraries
  auto b = MakeMatMulBackend("cuda", nullptr);
  if (CudaDeviceCount() == 0) {
    ExpectRefused(b.status(), absl::StatusCode::kFailedPrecondition, "no usable CUDA device");
  } else {
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_STREQ((*b)->device(), "cuda");
  }
}

TEST(CudaModuleTest, AModelLoadOnAMissingGpuFailsCleanly) {
  ModuleOverride use("/nonexistent/libkvserve_cuda.so");
  auto m = LlamaModel::Load(TinyModel(gguf::GgmlType::kF32, "cuda_module_missing"), 1, "cuda");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kUnimplemented);
  auto bad = LlamaModel::Load(TinyModel(gguf::GgmlType::kF32, "cuda_module_bad"), 1, "tpu");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvserve::model
