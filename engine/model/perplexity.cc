#include "engine/model/perplexity.h"

#include <chrono>
#include <cmath>
#include <memory>
#include <span>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "kvcache/contiguous_kv_cache.h"
#include "kvcache/paged_kv_cache.h"

namespace kvserve::model {

double TokenNll(const float* logits, int n_vocab, int32_t target) {
  double mx = logits[0];
  for (int i = 1; i < n_vocab; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
  double sum = 0;
  for (int i = 0; i < n_vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  return mx + std::log(sum) - logits[target];
}

absl::StatusOr<PerplexityResult> ComputePerplexity(ModelRunner* runner,
                                                   const std::vector<int32_t>& tokens,
                                                   const PerplexityOptions& opt) {
  const ModelConfig& c = runner->config();
  if (opt.ctx < 2) return absl::InvalidArgumentError("ctx must be at least 2");
  if (opt.batch < 1) return absl::InvalidArgumentError("batch must be at least 1");
  const int n_chunks = static_cast<int>(tokens.size() / opt.ctx);
  if (n_chunks == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("need at least ctx = ", opt.ctx, " tokens, the text has ", tokens.size()));
  }
  const auto t0 = std::chrono::steady_clock::now();
  kvcache::KvShape shape{c.n_layers, c.n_kv_head, c.head_dim};
  PerplexityResult r;
  double nll_sum = 0;
  Batch batch;
  std::vector<float> logits;
  if (opt.kv_compression) {
    if (auto st = kvcache::ValidateCompressionSpec(*opt.kv_compression); !st.ok()) return st;
  }
  const int bt = opt.block_tokens;
  for (int ch = 0; ch < n_chunks; ++ch) {
    kvcache::ContiguousKvCache contiguous(shape);
    std::unique_ptr<kvcache::PagedKvCache> paged;
    std::unique_ptr<kvcache::KvCompressor> compressor;
    kvcache::KvStore* kv = &contiguous;
    if (opt.kv_compression) {
      // Room for the whole chunk in f16, plus a slab per compressed tier.
      const size_t bytes = kvcache::BlockPool::BytesPerBlock(shape, bt) *
                           ((opt.ctx + bt - 1) / bt + kvcache::kNumKvTiers);
      auto made = kvcache::PagedKvCache::Create(shape, bytes, bt);
      if (!made.ok()) return made.status();
      paged = *std::move(made);
      auto comp = kvcache::KvCompressor::Create(paged.get(), opt.kv_compressor);
      if (!comp.ok()) return comp.status();
      compressor = *std::move(comp);
      compressor->AddSequence(0, *opt.kv_compression);
      kv = paged.get();
    } else if (auto s = contiguous.AddSequence(0, opt.ctx); !s.ok()) {
      return s;
    }
    const int32_t* chunk = tokens.data() + static_cast<size_t>(ch) * opt.ctx;
    for (int start = 0; start < opt.ctx; start += opt.batch) {
      const int end = std::min(opt.ctx, start + opt.batch);
      batch.Clear();
      const int window = opt.kv_compressor.observation_window;
      for (int j = start; j < end; ++j) {
        batch.Add(chunk[j], j, 0, j + 1 < opt.ctx, compressor != nullptr && j >= end - window);
      }
      if (compressor != nullptr) {
        batch.mass_sink = compressor.get();
        KV_CHECK_MSG(paged->Reserve(0, end), "the perplexity pool holds the whole chunk");
      }
      if (auto s = runner->Forward(batch, kv, &logits); !s.ok()) return s;
      if (compressor != nullptr) {
        const int seq = 0;
        compressor->EndStep(std::span<const int>(&seq, 1));
      }
      int row = 0;
      for (int j = start; j < end; ++j) {
        if (j + 1 >= opt.ctx) continue;
        nll_sum +=
            TokenNll(logits.data() + static_cast<size_t>(row) * c.n_vocab, c.n_vocab, chunk[j + 1]);
        ++row;
        ++r.n_scored;
      }
    }
    if (compressor != nullptr) {
      r.kv_bytes += static_cast<int64_t>(paged->SequenceBytes(0));
      r.kv_bytes_uncompressed += static_cast<int64_t>(paged->SequenceUncompressedBytes(0));
      r.kv_policy_seconds += compressor->counters().policy_seconds;
      for (int t = 0; t < kvcache::kNumKvTiers; ++t) {
        r.kv_tier_units[t] += paged->pool().units(kvcache::TierFromIndex(t));
      }
    }
    ++r.n_chunks;
    if (opt.progress) opt.progress(ch + 1, n_chunks, std::exp(nll_sum / r.n_scored));
  }
  r.mean_nll = nll_sum / r.n_scored;
  r.perplexity = std::exp(r.mean_nll);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace kvserve::model
