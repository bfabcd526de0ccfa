#include "engine/model/model_config.h"

#include "absl/strings/str_cat.h"

namespace kvserve::model {
namespace {

absl::Status Invalid(const gguf::GgufFile& f, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", what));
}

absl::StatusOr<int> GetPositiveInt(const gguf::GgufFile& f, const std::string& key) {
  auto v = f.GetUint(key);
  if (!v.ok()) return absl::Status(v.status().code(), absl::StrCat(f.path(), ": ", v.status().message()));
  if (*v == 0 || *v > (1u << 30)) return Invalid(f, absl::StrCat(key, " = ", *v, " is out of range"));
  return static_cast<int>(*v);
}

}  // namespace

absl::StatusOr<ModelConfig> ReadModelConfig(const gguf::GgufFile& f) {
  ModelConfig c;
  auto arch = f.GetString("general.architecture");
  if (!arch.ok()) return Invalid(f, "missing general.architecture");
  c.arch = *arch;
  // Architectures whose GGUF layout is the Llama decoder (optionally with
  // Q/K/V biases), which is what the forward pass implements.
  if (c.arch == "llama" || c.arch == "mistral") {
    c.rope_style = RopeStyle::kNormal;
  } else if (c.arch == "qwen2") {
    c.rope_style = RopeStyle::kNeox;
  } else {
    return absl::UnimplementedError(
        absl::StrCat(f.path(), ": architecture '", c.arch, "' is not supported (llama, mistral, qwen2 are)"));
  }
  c.name = f.GetString("general.name").value_or(c.arch);
  const std::string p = c.arch + ".";
  auto get = [&](const std::string& key, int* out) -> absl::Status {
    auto v = GetPositiveInt(f, p + key);
    if (!v.ok()) return v.status();
    *out = *v;
    return absl::OkStatus();
  };
  if (auto s = get("block_count", &c.n_layers); !s.ok()) return s;
  if (auto s = get("embedding_length", &c.n_embd); !s.ok()) return s;
  if (auto s = get("feed_forward_length", &c.n_ff); !s.ok()) return s;
  if (auto s = get("attention.head_count", &c.n_head); !s.ok()) return s;
  c.n_kv_head = c.n_head;
  if (f.Has(p + "attention.head_count_kv")) {
    if (auto s = get("attention.head_count_kv", &c.n_kv_head); !s.ok()) return s;
  }
  if (auto s = get("context_length", &c.n_ctx_train); !s.ok()) return s;
  if (c.n_embd % c.n_head != 0) {
    return Invalid(f, absl::StrCat("embedding_length ", c.n_embd, " is not a multiple of head_count ",
                                   c.n_head));
  }
  c.head_dim = c.n_embd / c.n_head;
  if (f.Has(p + "attention.key_length")) {
    if (auto s = get("attention.key_length", &c.head_dim); !s.ok()) return s;
  }
  if (c.n_head % c.n_kv_head != 0) {
    return Invalid(f, absl::StrCat("head_count ", c.n_head, " is not a multiple of head_count_kv ",
                                   c.n_kv_head));
  }
  if (c.head_dim % 2 != 0) return Invalid(f, absl::StrCat("head dimension ", c.head_dim, " is odd"));
  c.rope_dim = c.head_dim;
  if (f.Has(p + "rope.dimension_count")) {
    if (auto s = get("rope.dimension_count", &c.rope_dim); !s.ok()) return s;
    if (c.rope_dim > c.head_dim || c.rope_dim % 2 != 0) {
      return Invalid(f, absl::StrCat("rope.dimension_count ", c.rope_dim, " does not fit head dim ",
                                     c.head_dim));
    }
  }
  if (f.Has(p + "rope.freq_base")) {
    auto v = f.GetFloat(p + "rope.freq_base");
    if (!v.ok() || *v <= 0) return Invalid(f, p + "rope.freq_base must be a positive number");
    c.rope_base = static_cast<float>(*v);
  }
  if (f.Has(p + "attention.layer_norm_rms_epsilon")) {
    auto v = f.GetFloat(p + "attention.layer_norm_rms_epsilon");
    if (!v.ok() || *v <= 0) return Invalid(f, p + "attention.layer_norm_rms_epsilon must be > 0");
    c.rms_eps = static_cast<float>(*v);
  }
  if (f.Has(p + "rope.scaling.type")) {
    const std::string type = f.GetString(p + "rope.scaling.type").value_or("?");
    if (type == "linear") {
      auto v = f.GetFloat(p + "rope.scaling.factor");
      if (!v.ok() || *v <= 0) return Invalid(f, p + "rope.scaling.factor must be > 0");
      c.rope_linear_scale = static_cast<float>(*v);
    } else if (type != "none") {
      return absl::UnimplementedError(
          absl::StrCat(f.path(), ": rope scaling type '", type, "' is not supported"));
    }
  }
  auto tokens = f.GetStringArray("tokenizer.ggml.tokens");
  if (f.Has(p + "vocab_size")) {
    if (auto s = get("vocab_size", &c.n_vocab); !s.ok()) return s;
  } else if (tokens.ok()) {
    c.n_vocab = static_cast<int>(tokens->size());
  } else {
    return Invalid(f, "no vocab_size and no tokenizer.ggml.tokens");
  }
  return c;
}

}  // namespace kvserve::model
