// The CPU backend for Llama-family decoders: RMSNorm, RoPE, grouped-query
// attention, SwiGLU feed-forward, optional tied output embedding.
//
// Per layer, for n batch rows:
//   h = RmsNorm(x)                                  // [n, n_embd]
//   q, k, v = h Wq^T (+bq), h Wk^T (+bk), h Wv^T (+bv) // [n, q_dim], [n, kv_dim] x2
//   RoPE(q, k) at each row's position; K/V -> KV store
//   x += Attention(q, KV) Wo^T
//   x += (silu(RmsNorm(x) Wg^T) * (RmsNorm(x) Wu^T)) Wd^T
// then logits = RmsNorm(x) Wout^T for the rows that ask for them.
//
// The weight matmuls run on a MatMulBackend chosen by device name
// (engine/model/device.h): the CPU kernels, or cuBLAS on a GPU; everything
// else, attention and the KV cache included, runs on the CPU.
//
// Thread-safety: as ModelRunner. Owns its thread pool and its backend.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "engine/gguf/gguf_file.h"
#include "engine/kernels/matmul.h"
#include "engine/kernels/matmul_backend.h"
#include "engine/model/attention.h"
#include "engine/model/model_runner.h"
#include "engine/model/model_weights.h"
#include "engine/model/ops.h"

namespace kvserve::model {

class LlamaModel : public ModelRunner {
 public:
  // Opens and validates the GGUF at `path`; n_threads <= 0 means all cores.
  // `device` ("cpu", "cuda", "cuda:N") is where the weight matmuls run; every
  // weight matrix is readied there before Load returns, so a missing GPU or
  // too little device memory fails here.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const std::string& path, int n_threads,
                                                          std::string_view device = "cpu");

  const ModelConfig& config() const override { return config_; }
  const gguf::GgufFile& file() const { return *file_; }
  int n_threads() const { return pool_->size(); }
  const kernels::MatMulBackend& backend() const { return *backend_; }

  absl::Status Forward(const Batch& batch, kvcache::KvStore* kv,
                       std::vector<float>* logits) override;

 private:
  LlamaModel() = default;
  absl::Status MatMul(const kernels::WeightView& w, const float* x, int n, float* y);
  // Every weight matrix Forward multiplies by, each once.
  std::vector<const kernels::WeightView*> UsedMatrices() const;
  // Runs fn(row) for rows [0, n) on the pool; each row's work is
  // independent, so the split cannot change a result.
  void RowPass(int n, const std::function<void(int)>& fn);

  std::unique_ptr<gguf::GgufFile> file_;
  ModelConfig config_;
  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<kernels::MatMulBackend> backend_;
  std::unique_ptr<Rope> rope_;
  std::unique_ptr<Attention> attention_;
  // Activations, reused across calls.
  std::vector<float> x_, h_, q_, k_, v_, att_, gate_, up_, out_rows_;
  std::vector<float> qkv_, gate_up_;  // outputs of the stacked matmuls
};

}  // namespace kvserve::model
