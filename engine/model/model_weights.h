// The weights of a Llama-family decoder, as views the matmul kernel reads.
//
// Matrices in a type the kernel computes with directly point into the
// memory-mapped GGUF file (no copy); others (K-quants, ...) are dequantised
// once at load into buffers this object owns. Norm weights and biases are
// converted to f32.
//
// Thread-safety: immutable after Load; safe to read from any thread while the
// GgufFile it was loaded from lives.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/gguf/gguf_file.h"
#include "engine/kernels/matmul.h"
#include "engine/model/model_config.h"

namespace kvserve::model {

struct LayerWeights {
  std::vector<float> attn_norm;  // [n_embd]
  kernels::WeightView wq;        // [q_dim rows, n_embd]
  kernels::WeightView wk;        // [kv_dim rows, n_embd]
  kernels::WeightView wv;        // [kv_dim rows, n_embd]
  kernels::WeightView wo;        // [n_embd rows, q_dim]
  std::vector<float> bq, bk, bv;  // optional biases (qwen2): [q_dim], [kv_dim], [kv_dim]
  std::vector<float> ffn_norm;   // [n_embd]
  kernels::WeightView w_gate;    // [n_ff rows, n_embd]
  kernels::WeightView w_up;      // [n_ff rows, n_embd]
  kernels::WeightView w_down;    // [n_embd rows, n_ff]
  // The same rows stacked, when the parts share an encoding: one matmul
  // quantises the shared input once and dispatches the pool once. Each output
  // row is the same dot product as in the separate matrices, so results are
  // identical. data == nullptr when the parts could not be fused.
  kernels::WeightView wqkv;      // [q_dim + 2 kv_dim rows, n_embd]: wq, wk, wv
  kernels::WeightView w_gate_up;  // [2 n_ff rows, n_embd]: w_gate, w_up
};

class ModelWeights {
 public:
  // `file` must outlive the result (views point into its mapping).
  static absl::StatusOr<std::unique_ptr<ModelWeights>> Load(const gguf::GgufFile& file,
                                                            const ModelConfig& config);

  // token_embd: n_vocab rows of n_embd values in the file's encoding.
  const gguf::TensorInfo& token_embd() const { return *token_embd_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  const std::vector<float>& output_norm() const { return output_norm_; }
  const kernels::WeightView& output() const { return output_; }  // [n_vocab rows, n_embd]
  // Per rotated pair i, a divisor of the rotation frequency (llama-3's
  // rope_freqs); empty when the file has none.
  const std::vector<float>& rope_freq_factors() const { return rope_freq_factors_; }

 private:
  ModelWeights() = default;
  absl::StatusOr<kernels::WeightView> Matrix(const gguf::GgufFile& file, const std::string& name,
                                             int64_t n_in, int64_t n_out);

  const gguf::TensorInfo* token_embd_ = nullptr;  // not owned; in the GgufFile
  std::vector<LayerWeights> layers_;
  std::vector<float> output_norm_;
  kernels::WeightView output_;
  std::vector<float> rope_freq_factors_;
  // Stacks `parts` (same n_in, type and row size) into one owned matrix;
  // an empty view when they differ.
  kernels::WeightView Stack(const std::vector<const kernels::WeightView*>& parts);

  // Dequantised copies of matrices the kernel cannot read as stored.
  std::vector<std::unique_ptr<std::vector<float>>> converted_;
  // Stacked copies of matrices that share an input.
  std::vector<std::unique_ptr<std::vector<uint8_t>>> stacked_;
};

}  // namespace kvserve::model
