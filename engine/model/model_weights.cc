#include "engine/model/model_weights.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/gguf/dequantize.h"

namespace kvserve::model {
namespace {

absl::StatusOr<std::vector<float>> Vector(const gguf::GgufFile& file, const std::string& name,
                                          int64_t n) {
  auto t = file.GetTensor(name, {n});
  if (!t.ok()) return t.status();
  std::vector<float> out(n);
  if (auto s = gguf::DequantizeRow((*t)->type, (*t)->data, out.data(), n); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(file.path(), ": tensor '", name, "': ", s.message()));
  }
  return out;
}

// A vector that may be absent (biases).
absl::StatusOr<std::vector<float>> OptionalVector(const gguf::GgufFile& file,
                                                  const std::string& name, int64_t n) {
  if (file.FindTensor(name) == nullptr) return std::vector<float>{};
  return Vector(file, name, n);
}

}  // namespace

absl::StatusOr<kernels::WeightView> ModelWeights::Matrix(const gguf::GgufFile& file,
                                                         const std::string& name, int64_t n_in,
                                                         int64_t n_out) {
  auto t = file.GetTensor(name, {n_in, n_out});
  if (!t.ok()) return t.status();
  const gguf::TensorInfo& info = **t;
  kernels::WeightView w;
  w.n_in = n_in;
  w.n_out = n_out;
  if (kernels::MatMulSupports(info.type) &&
      (gguf::BlockElements(info.type) == 1 || n_in % 32 == 0)) {
    w.type = info.type;
    w.data = info.data;
    w.row_bytes = gguf::RowBytes(info.type, n_in);
    return w;
  }
  // The kernel has no direct path for this encoding: dequantise once.
  auto buf = std::make_unique<std::vector<float>>(static_cast<size_t>(n_in * n_out));
  const size_t row_bytes = gguf::RowBytes(info.type, n_in);
  for (int64_t r = 0; r < n_out; ++r) {
    if (auto s = gguf::DequantizeRow(info.type, info.data + r * row_bytes, buf->data() + r * n_in,
                                     n_in);
        !s.ok()) {
      return absl::Status(s.code(), absl::StrCat(file.path(), ": tensor '", name, "': ", s.message()));
    }
  }
  w.type = gguf::GgmlType::kF32;
  w.data = reinterpret_cast<const uint8_t*>(buf->data());
  w.row_bytes = n_in * sizeof(float);
  converted_.push_back(std::move(buf));
  return w;
}

kernels::WeightView ModelWeights::Stack(const std::vector<const kernels::WeightView*>& parts) {
  const kernels::WeightView& first = *parts.front();
  int64_t rows = 0;
  for (const kernels::WeightView* p : parts) {
    if (p->type != first.type || p->n_in != first.n_in || p->row_bytes != first.row_bytes) return {};
    rows += p->n_out;
  }
  auto buf = std::make_unique<std::vector<uint8_t>>(static_cast<size_t>(rows) * first.row_bytes);
  uint8_t* dst = buf->data();
  for (const kernels::WeightView* p : parts) {
    std::memcpy(dst, p->data, static_cast<size_t>(p->n_out) * p->row_bytes);
    dst += static_cast<size_t>(p->n_out) * p->row_bytes;
  }
  kernels::WeightView w = first;
  w.n_out = rows;
  w.data = buf->data();
  stacked_.push_back(std::move(buf));
  return w;
}

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Load(const gguf::GgufFile& file,
                                                                 const ModelConfig& c) {
  std::unique_ptr<ModelWeights> w(new ModelWeights());
  auto embd = file.GetTensor("token_embd.weight", {c.n_embd, c.n_vocab});
  if (!embd.ok()) return embd.status();
  w->token_embd_ = *embd;
  if (!gguf::IsSupportedType(w->token_embd_->type)) {
    return absl::UnimplementedError(absl::StrCat(file.path(), ": token_embd.weight has unsupported type ",
                                                 std::string(gguf::TypeName(w->token_embd_->type))));
  }
  auto on = Vector(file, "output_norm.weight", c.n_embd);
  if (!on.ok()) return on.status();
  w->output_norm_ = std::move(*on);
  // Tied embeddings: without output.weight the output projection is the
  // embedding matrix itself (SmolLM2 and many small models).
  const char* out_name = file.FindTensor("output.weight") ? "output.weight" : "token_embd.weight";
  auto out = w->Matrix(file, out_name, c.n_embd, c.n_vocab);
  if (!out.ok()) return out.status();
  w->output_ = *out;
  if (file.FindTensor("rope_freqs.weight")) {
    auto rf = Vector(file, "rope_freqs.weight", c.rope_dim / 2);
    if (!rf.ok()) return rf.status();
    w->rope_freq_factors_ = std::move(*rf);
  }
  w->layers_.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = w->layers_[l];
    const std::string p = absl::StrCat("blk.", l, ".");
    auto vec = [&](const char* n, int64_t len, std::vector<float>* dst, bool optional) {
      auto v = optional ? OptionalVector(file, p + n, len) : Vector(file, p + n, len);
      if (!v.ok()) return v.status();
      *dst = std::move(*v);
      return absl::OkStatus();
    };
    auto mat = [&](const char* n, int64_t n_in, int64_t n_out, kernels::WeightView* dst) {
      auto m = w->Matrix(file, p + n, n_in, n_out);
      if (!m.ok()) return m.status();
      *dst = *m;
      return absl::OkStatus();
    };
    for (absl::Status s :
         {vec("attn_norm.weight", c.n_embd, &L.attn_norm, false),
          vec("ffn_norm.weight", c.n_embd, &L.ffn_norm, false),
          mat("attn_q.weight", c.n_embd, c.q_dim(), &L.wq),
          mat("attn_k.weight", c.n_embd, c.kv_dim(), &L.wk),
          mat("attn_v.weight", c.n_embd, c.kv_dim(), &L.wv),
          mat("attn_output.weight", c.q_dim(), c.n_embd, &L.wo),
          mat("ffn_gate.weight", c.n_embd, c.n_ff, &L.w_gate),
          mat("ffn_up.weight", c.n_embd, c.n_ff, &L.w_up),
          mat("ffn_down.weight", c.n_ff, c.n_embd, &L.w_down),
          vec("attn_q.bias", c.q_dim(), &L.bq, true), vec("attn_k.bias", c.kv_dim(), &L.bk, true),
          vec("attn_v.bias", c.kv_dim(), &L.bv, true)}) {
      if (!s.ok()) return s;
    }
    // Biases are added per part after the matmul, so stacking is unaffected.
    L.wqkv = w->Stack({&L.wq, &L.wk, &L.wv});
    L.w_gate_up = w->Stack({&L.w_gate, &L.w_up});
  }
  return w;
}

}  // namespace kvserve::model
