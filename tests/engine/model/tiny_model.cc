#include "tests/engine/model/tiny_model.h"

#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "engine/gguf/dequantize.h"
#include "engine/gguf/gguf_writer.h"

namespace kvserve::testing {
namespace {

std::vector<float> Random(std::mt19937_64* rng, size_t n, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(*rng);
  return v;
}

}  // namespace

absl::Status WriteTinyLlama(const std::string& path, const TinyLlamaSpec& s,
                            TinyLlamaWeights* weights) {
  std::mt19937_64 rng(s.seed);
  gguf::GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetString("general.name", "tiny-test-llama");
  w.SetUint32("llama.block_count", s.n_layers);
  w.SetUint32("llama.embedding_length", s.n_embd);
  w.SetUint32("llama.feed_forward_length", s.n_ff);
  w.SetUint32("llama.attention.head_count", s.n_head);
  w.SetUint32("llama.attention.head_count_kv", s.n_kv_head);
  w.SetUint32("llama.context_length", s.n_ctx);
  w.SetUint32("llama.vocab_size", s.n_vocab);
  w.SetUint32("llama.rope.dimension_count", s.n_embd / s.n_head);
  w.SetFloat32("llama.rope.freq_base", s.rope_base);
  w.SetFloat32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int i = 0; i < s.n_vocab; ++i) {
    // Printable single characters of GPT-2's byte alphabet ('!' onwards).
    tokens.push_back(i < 3 ? std::string(i == 0 ? "<unk>" : i == 1 ? "<s>" : "</s>")
                           : std::string(1, static_cast<char>('!' + i)));
    types.push_back(i < 3 ? 3 : 1);
  }
  w.SetString("tokenizer.ggml.model", "gpt2");
  w.SetString("tokenizer.ggml.pre", "gpt-2");
  w.SetStringArray("tokenizer.ggml.tokens", tokens);
  w.SetInt32Array("tokenizer.ggml.token_type", types);
  w.SetStringArray("tokenizer.ggml.merges", {});
  w.SetUint32("tokenizer.ggml.bos_token_id", 1);
  w.SetUint32("tokenizer.ggml.eos_token_id", 2);

  auto add = [&](const std::string& name, std::vector<int64_t> shape, gguf::GgmlType type,
                 std::vector<float> v) -> absl::Status {
    if (auto st = w.AddTensor(name, shape, type, v); !st.ok()) return st;
    // Keep what the file really holds.
    const int64_t row = shape[0];
    std::vector<uint8_t> buf(gguf::RowBytes(type, row));
    for (size_t r = 0; r < v.size() / row; ++r) {
      if (auto st = gguf::QuantizeRow(type, v.data() + r * row, buf.data(), row); !st.ok()) return st;
      if (auto st = gguf::DequantizeRow(type, buf.data(), v.data() + r * row, row); !st.ok()) return st;
    }
    weights->tensors[name] = std::move(v);
    return absl::OkStatus();
  };
  const int E = s.n_embd, hd = s.n_embd / s.n_head, KV = s.n_kv_head * hd, F = s.n_ff;
  const auto M = s.matrix_type;
  std::vector<absl::Status> st;
  st.push_back(add("token_embd.weight", {E, s.n_vocab}, M, Random(&rng, size_t(E) * s.n_vocab, 1.0f)));
  auto out_norm = Random(&rng, E, 0.2f);
  for (float& x : out_norm) x += 1.0f;
  st.push_back(add("output_norm.weight", {E}, gguf::GgmlType::kF32, out_norm));
  if (!s.tied_output) {
    st.push_back(add("output.weight", {E, s.n_vocab}, M, Random(&rng, size_t(E) * s.n_vocab, 0.3f)));
  }
  for (int l = 0; l < s.n_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    auto norm = Random(&rng, E, 0.1f);
    for (float& x : norm) x += 1.0f;
    st.push_back(add(p + "attn_norm.weight", {E}, gguf::GgmlType::kF32, norm));
    norm = Random(&rng, E, 0.1f);
    for (float& x : norm) x += 1.0f;
    st.push_back(add(p + "ffn_norm.weight", {E}, gguf::GgmlType::kF32, norm));
    const float si = 1.0f / std::sqrt(static_cast<float>(E));
    st.push_back(add(p + "attn_q.weight", {E, E}, M, Random(&rng, size_t(E) * E, si * 2)));
    st.push_back(add(p + "attn_k.weight", {E, KV}, M, Random(&rng, size_t(E) * KV, si * 2)));
    st.push_back(add(p + "attn_v.weight", {E, KV}, M, Random(&rng, size_t(E) * KV, si)));
    st.push_back(add(p + "attn_output.weight", {E, E}, M, Random(&rng, size_t(E) * E, si)));
    st.push_back(add(p + "ffn_gate.weight", {E, F}, M, Random(&rng, size_t(E) * F, si)));
    st.push_back(add(p + "ffn_up.weight", {E, F}, M, Random(&rng, size_t(E) * F, si)));
    st.push_back(add(p + "ffn_down.weight", {F, E}, M,
                     Random(&rng, size_t(F) * E, 1.0f / std::sqrt(static_cast<float>(F)))));
  }
  for (const auto& x : st) {
    if (!x.ok()) return x;
  }
  return w.Write(path);
}

}  // namespace kvserve::testing
