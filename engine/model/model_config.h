// Hyper-parameters of a Llama-family decoder, read from GGUF metadata and
// validated once at load.
//
// Thread-safety: a plain immutable value.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/gguf/gguf_file.h"

namespace kvserve::model {

enum class RopeStyle {
  kNormal,  // rotate adjacent pairs (x[2i], x[2i+1]): GGUF llama files
  kNeox,    // rotate (x[i], x[i + rope_dim/2]): qwen2 and friends
};

struct ModelConfig {
  std::string arch;  // general.architecture: "llama", "qwen2", ...
  std::string name;  // general.name, for display
  int n_layers = 0;
  int n_embd = 0;
  int n_ff = 0;
  int n_head = 0;
  int n_kv_head = 0;
  int head_dim = 0;  // n_embd / n_head unless the file says otherwise
  int n_vocab = 0;
  int n_ctx_train = 0;
  int rope_dim = 0;  // leading dims of each head that are rotated
  float rope_base = 10000.0f;
  float rope_linear_scale = 1.0f;  // positions are divided by this
  RopeStyle rope_style = RopeStyle::kNormal;
  float rms_eps = 1e-5f;

  int q_dim() const { return n_head * head_dim; }
  int kv_dim() const { return n_kv_head * head_dim; }
  int group_size() const { return n_head / n_kv_head; }
};

// Reads and validates the config. Errors name the file and the key.
absl::StatusOr<ModelConfig> ReadModelConfig(const gguf::GgufFile& file);

}  // namespace kvserve::model
