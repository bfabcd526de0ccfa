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
// Thread-safety: as ModelRunner. Owns its thread pool.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "engine/gguf/gguf_file.h"
#include "engine/kernels/matmul.h"
#include "engine/model/attention.h"
#include "engine/model/model_runner.h"
#include "engine/model/model_weights.h"
#include "engine/model/ops.h"

namespace kvserve::model {

class LlamaModel : public ModelRunner {
 public:
  // Opens and validates the GGUF at `path`; n_threads <= 0 means all cores.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const std::string& path, int n_threads);

  const ModelConfig& config() const override { return config_; }
  const gguf::GgufFile& file() const { return *file_; }
  int n_threads() const { return pool_->size(); }

  absl::Status Forward(const Batch& batch, kvcache::KvStore* kv,
                       std::vector<float>* logits) override;

 private:
  LlamaModel() = default;
  void MatMul(const kernels::WeightView& w, const float* x, int n, float* y);
  // Runs fn(row) for rows [0, n) on the pool; each row's work is
  // independent, so the split cannot change a result.
  void RowPass(int n, const std::function<void(int)>& fn);

  std::unique_ptr<gguf::GgufFile> file_;
  ModelConfig config_;
  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<Rope> rope_;
  std::unique_ptr<Attention> attention_;
  kernels::MatMulScratch scratch_;
  // Activations, reused across calls.
  std::vector<float> x_, h_, q_, k_, v_, att_, gate_, up_, out_rows_;
  std::vector<float> qkv_, gate_up_;  // outputs of the stacked matmuls
};

}  // namespace kvserve::model
