#include "engine/model/llama_model.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/gguf/dequantize.h"
#include "engine/model/device.h"

namespace kvserve::model {

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const std::string& path, int n_threads,
                                                             std::string_view device) {
  std::unique_ptr<LlamaModel> m(new LlamaModel());
  auto file = gguf::GgufFile::Open(path);
  if (!file.ok()) return file.status();
  m->file_ = std::move(*file);
  auto config = ReadModelConfig(*m->file_);
  if (!config.ok()) return config.status();
  m->config_ = *config;
  if (m->config_.rope_dim > 1024) {
    return absl::UnimplementedError(absl::StrCat(path, ": rope dimension ", m->config_.rope_dim,
                                                 " exceeds the supported 1024"));
  }
  auto weights = ModelWeights::Load(*m->file_, m->config_);
  if (!weights.ok()) return weights.status();
  m->weights_ = std::move(*weights);
  if (n_threads <= 0)
    n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  m->pool_ = std::make_unique<ThreadPool>(n_threads);
  auto backend = MakeMatMulBackend(device, m->pool_.get());
  if (!backend.ok()) return backend.status();
  m->backend_ = std::move(*backend);
  for (const kernels::WeightView* w : m->UsedMatrices()) {
    absl::Status s = m->backend_->Prepare(*w);
    if (!s.ok()) return s;
  }
  m->rope_ = std::make_unique<Rope>(m->config_, m->weights_->rope_freq_factors());
  m->attention_ = std::make_unique<Attention>(m->config_);
  return m;
}

void LlamaModel::RowPass(int n, const std::function<void(int)>& fn) {
  // One row is not worth waking the pool for.
  if (n == 1) return fn(0);
  pool_->ParallelFor(n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) fn(static_cast<int>(i));
  });
}

std::vector<const kernels::WeightView*> LlamaModel::UsedMatrices() const {
  std::vector<const kernels::WeightView*> used;
  for (const LayerWeights& L : weights_->layers()) {
    if (L.wqkv.data != nullptr) {
      used.push_back(&L.wqkv);
    } else {
      used.insert(used.end(), {&L.wq, &L.wk, &L.wv});
    }
    used.push_back(&L.wo);
    if (L.w_gate_up.data != nullptr) {
      used.push_back(&L.w_gate_up);
    } else {
      used.insert(used.end(), {&L.w_gate, &L.w_up});
    }
    used.push_back(&L.w_down);
  }
  used.push_back(&weights_->output());
  return used;
}

absl::Status LlamaModel::MatMul(const kernels::WeightView& w, const float* x, int n, float* y) {
  return backend_->MatMul(w, x, n, y);
}

// Returns the status of a matmul that failed (a device error).
#define KV_RETURN_IF_ERROR(expr)             \
  do {                                       \
    absl::Status kv_status_ = (expr);        \
    if (!kv_status_.ok()) return kv_status_; \
  } while (0)

absl::Status LlamaModel::Forward(const Batch& b, kvcache::KvStore* kv, std::vector<float>* logits) {
  const ModelConfig& c = config_;
  const int n = b.size();
  if (b.positions.size() != b.tokens.size() || b.seq_ids.size() != b.tokens.size() ||
      b.logits.size() != b.tokens.size() ||
      (!b.observe.empty() && b.observe.size() != b.tokens.size())) {
    return absl::InvalidArgumentError("batch vectors have different lengths");
  }
  for (int i = 0; i < n; ++i) {
    if (b.tokens[i] < 0 || b.tokens[i] >= c.n_vocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", b.tokens[i], " is outside the vocabulary [0, ", c.n_vocab, ")"));
    }
    if (b.positions[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("negative position ", b.positions[i]));
    }
  }
  logits->clear();
  if (n == 0) return absl::OkStatus();
  const uint8_t* observe = b.observe.empty() ? nullptr : b.observe.data();

  const int E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim(), F = c.n_ff;
  x_.resize(static_cast<size_t>(n) * E);
  h_.resize(static_cast<size_t>(n) * E);
  q_.resize(static_cast<size_t>(n) * Q);
  k_.resize(static_cast<size_t>(n) * KV);
  v_.resize(static_cast<size_t>(n) * KV);
  att_.resize(static_cast<size_t>(n) * Q);
  gate_.resize(static_cast<size_t>(n) * F);
  up_.resize(static_cast<size_t>(n) * F);
  qkv_.resize(static_cast<size_t>(n) * (Q + 2 * KV));
  gate_up_.resize(static_cast<size_t>(n) * 2 * F);

  const gguf::TensorInfo& embd = weights_->token_embd();
  const size_t embd_row = gguf::RowBytes(embd.type, E);
  for (int i = 0; i < n; ++i) {
    absl::Status s = gguf::DequantizeRow(embd.type, embd.data + b.tokens[i] * embd_row,
                                         x_.data() + static_cast<size_t>(i) * E, E);
    if (!s.ok()) return s;
  }

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = weights_->layers()[l];
    RowPass(n, [&](int i) { RmsNorm(&x_[i * E], L.attn_norm.data(), E, c.rms_eps, &h_[i * E]); });
    if (L.wqkv.data != nullptr) {
      KV_RETURN_IF_ERROR(MatMul(L.wqkv, h_.data(), n, qkv_.data()));
    } else {
      KV_RETURN_IF_ERROR(MatMul(L.wq, h_.data(), n, q_.data()));
      KV_RETURN_IF_ERROR(MatMul(L.wk, h_.data(), n, k_.data()));
      KV_RETURN_IF_ERROR(MatMul(L.wv, h_.data(), n, v_.data()));
    }
    RowPass(n, [&](int i) {
      if (L.wqkv.data != nullptr) {
        const float* row = &qkv_[static_cast<size_t>(i) * (Q + 2 * KV)];
        std::memcpy(&q_[i * Q], row, Q * sizeof(float));
        std::memcpy(&k_[i * KV], row + Q, KV * sizeof(float));
        std::memcpy(&v_[i * KV], row + Q + KV, KV * sizeof(float));
      }
      if (!L.bq.empty()) AddInPlace(&q_[i * Q], L.bq.data(), Q);
      if (!L.bk.empty()) AddInPlace(&k_[i * KV], L.bk.data(), KV);
      if (!L.bv.empty()) AddInPlace(&v_[i * KV], L.bv.data(), KV);
      rope_->Apply(&q_[i * Q], c.n_head, b.positions[i]);
      rope_->Apply(&k_[i * KV], c.n_kv_head, b.positions[i]);
    });
    // Runs of consecutive rows of one sequence are written with one call.
    for (int i = 0; i < n;) {
      int j = i + 1;
      while (j < n && b.seq_ids[j] == b.seq_ids[i] && b.positions[j] == b.positions[j - 1] + 1) ++j;
      kv->Write(b.seq_ids[i], l, b.positions[i], j - i, &k_[i * KV], &v_[i * KV]);
      i = j;
    }
    attention_->Compute(*kv, l, q_.data(), b.seq_ids.data(), b.positions.data(), n, att_.data(),
                        pool_.get(), observe, b.mass_sink);
    KV_RETURN_IF_ERROR(MatMul(L.wo, att_.data(), n, h_.data()));
    RowPass(n, [&](int i) {
      AddInPlace(&x_[i * E], &h_[i * E], E);
      RmsNorm(&x_[i * E], L.ffn_norm.data(), E, c.rms_eps, &h_[i * E]);
    });
    if (L.w_gate_up.data != nullptr) {
      KV_RETURN_IF_ERROR(MatMul(L.w_gate_up, h_.data(), n, gate_up_.data()));
      RowPass(n, [&](int i) {
        const float* row = &gate_up_[static_cast<size_t>(i) * 2 * F];
        SiluMul(row, row + F, F, &gate_[i * F]);
      });
    } else {
      KV_RETURN_IF_ERROR(MatMul(L.w_gate, h_.data(), n, gate_.data()));
      KV_RETURN_IF_ERROR(MatMul(L.w_up, h_.data(), n, up_.data()));
      RowPass(n, [&](int i) { SiluMul(&gate_[i * F], &up_[i * F], F, &gate_[i * F]); });
    }
    KV_RETURN_IF_ERROR(MatMul(L.w_down, gate_.data(), n, h_.data()));
    RowPass(n, [&](int i) { AddInPlace(&x_[i * E], &h_[i * E], E); });
  }

  int n_out = 0;
  for (int i = 0; i < n; ++i) n_out += b.logits[i] ? 1 : 0;
  if (n_out == 0) return absl::OkStatus();
  out_rows_.resize(static_cast<size_t>(n_out) * E);
  for (int i = 0, r = 0; i < n; ++i) {
    if (!b.logits[i]) continue;
    RmsNorm(&x_[i * E], weights_->output_norm().data(), E, c.rms_eps, &out_rows_[r * E]);
    ++r;
  }
  logits->resize(static_cast<size_t>(n_out) * c.n_vocab);
  KV_RETURN_IF_ERROR(MatMul(weights_->output(), out_rows_.data(), n_out, logits->data()));
  return absl::OkStatus();
}

}  // namespace kvserve::model
