#include "kvcache/kv_compressor.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace kvserve::kvcache {
namespace {

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

absl::Status ValidateCompressorOptions(const KvCompressorOptions& o) {
  // Named as the server's options (--kv-alpha is kv_alpha), so that a
  // config error says which option to fix.
  const struct {
    const char* name;
    bool ok;
    const char* range;
    double value;
  } checks[] = {
      {"kv_sink_blocks", o.policy.sink_blocks >= 0, ">= 0", double(o.policy.sink_blocks)},
      {"kv_recent_tokens", o.policy.recent_tokens >= 0, ">= 0", double(o.policy.recent_tokens)},
      {"kv_alpha", o.policy.alpha >= 0 && o.policy.alpha <= 1, "in [0, 1]", o.policy.alpha},
      {"kv_ema_decay", o.ema_decay >= 0 && o.ema_decay < 1, "in [0, 1)", o.ema_decay},
      {"kv_observation_window", o.observation_window >= 1, ">= 1", double(o.observation_window)},
      {"kv_beta", o.beta > 0 && o.beta < 1, "in (0, 1)", o.beta},
      {"kv_min_ratio", o.min_ratio > 0 && o.min_ratio <= 1, "in (0, 1]", o.min_ratio},
  };
  for (const auto& c : checks) {
    if (!c.ok) {
      return absl::InvalidArgumentError(
          absl::StrCat(c.name, ": must be ", c.range, ", got ", c.value));
    }
  }
  // The rest of the policy options (distortion, uniform tier, score floor).
  return ValidatePolicyOptions(o.policy);
}

absl::StatusOr<std::unique_ptr<KvCompressor>> KvCompressor::Create(
    PagedKvCache* cache, const KvCompressorOptions& options) {
  KV_CHECK(cache != nullptr);
  if (absl::Status st = ValidateCompressorOptions(options); !st.ok()) return st;
  std::unordered_map<std::string, std::unique_ptr<CompressionPolicy>> policies;
  for (std::string_view name : CompressionPolicyNames()) {
    auto p = MakeCompressionPolicy(name, options.policy);
    if (!p.ok()) return p.status();
    policies.emplace(std::string(name), *std::move(p));
  }
  return std::unique_ptr<KvCompressor>(new KvCompressor(cache, options, std::move(policies)));
}

KvCompressor::KvCompressor(
    PagedKvCache* cache, const KvCompressorOptions& options,
    std::unordered_map<std::string, std::unique_ptr<CompressionPolicy>> policies)
    : cache_(cache), options_(options), policies_(std::move(policies)) {
  for (int t = 0; t < kNumKvTiers; ++t) costs_[t] = cache_->pool().unit_bytes(TierFromIndex(t));
}

absl::Status ValidateCompressionSpec(const KvCompressionSpec& spec) {
  if (!IsCompressionPolicy(spec.policy)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_compression.policy '", spec.policy,
                     "' is unknown; valid policies: ", CompressionPolicyNameList()));
  }
  if (!(spec.ratio > 0 && spec.ratio <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_compression.ratio must be in (0, 1], got ", spec.ratio));
  }
  return absl::OkStatus();
}

void KvCompressor::AddSequence(int seq, const KvCompressionSpec& spec) {
  KV_CHECK_MSG(ValidateCompressionSpec(spec).ok(), "AddSequence with an invalid spec");
  Tracked t;
  t.spec = spec;
  t.policy = policies_.at(spec.policy).get();
  t.ratio = spec.ratio;
  if (t.policy->compresses()) {
    t.scores = std::make_unique<BlockScores>(cache_->shape().n_layers, options_.ema_decay);
  }
  seqs_[seq] = std::move(t);
}

void KvCompressor::RemoveSequence(int seq) {
  seqs_.erase(seq);
  observed_.erase(std::remove(observed_.begin(), observed_.end(), seq), observed_.end());
}

bool KvCompressor::Compresses(int seq) const {
  auto it = seqs_.find(seq);
  return it != seqs_.end() && it->second.policy->compresses();
}

double KvCompressor::EffectiveRatio(int seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? 1.0 : it->second.ratio;
}

void KvCompressor::OnBlockMass(int seq, int layer, int block, double mass, double n_queries) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end() || it->second.scores == nullptr) return;
  it->second.scores->Observe(layer, block, mass, n_queries);
  if (!it->second.observed) {
    it->second.observed = true;
    observed_.push_back(seq);
  }
}

void KvCompressor::EndStep(std::span<const int> ran) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int seq : observed_) {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) continue;
    it->second.scores->EndStep();
    it->second.observed = false;
  }
  observed_.clear();
  bool any = false;
  for (int seq : ran) {
    auto it = seqs_.find(seq);
    if (it == seqs_.end() || !it->second.policy->compresses() || !cache_->HasSequence(seq))
      continue;
    if (cache_->NumBlocks(seq) == it->second.assessed_blocks) continue;
    Assess(seq, it->second);
    any = true;
  }
  if (any) counters_.policy_seconds += Seconds(t0);
}

bool KvCompressor::Reclaim(int blocks) {
  const auto t0 = std::chrono::steady_clock::now();
  bool ok = cache_->pool().n_free() >= blocks;
  while (!ok) {
    bool tightened = false;
    for (auto& [seq, t] : seqs_) {
      if (!t.policy->compresses() || !cache_->HasSequence(seq)) continue;
      if (t.ratio <= options_.min_ratio) continue;
      t.ratio = std::max(options_.min_ratio, t.ratio * (1.0 - options_.beta));
      Assess(seq, t);
      tightened = true;
      if (cache_->pool().n_free() >= blocks) break;
    }
    if (!tightened) break;
    ++counters_.reclaim_rounds;
    ok = cache_->pool().n_free() >= blocks;
  }
  counters_.policy_seconds += Seconds(t0);
  return ok;
}

void KvCompressor::Assess(int seq, Tracked& t) {
  ++counters_.assessments;
  const int n_blocks = cache_->NumBlocks(seq);
  t.assessed_blocks = n_blocks;
  const int length = cache_->Length(seq);
  if (length == 0) return;
  const int bt = cache_->block_tokens();
  const int n_written = (length + bt - 1) / bt;
  protected_.clear();
  for (int b = 0; b < n_written; ++b) {
    if (IsProtectedBlock(options_.policy, length, bt, b)) protected_.push_back(b);
  }
  const int n_protected = static_cast<int>(protected_.size());
  for (int l = 0; l < cache_->shape().n_layers; ++l) {
    cache_->Tiers(seq, l, &current_);
    // Reserved blocks past the written positions are not the policy's.
    current_.resize(n_written);
    // The ratio holds the blocks outside the protected window (sinks,
    // recent tokens); those stay as they are at their own cost. Holding the
    // whole sequence to the ratio would, while it is short, leave nothing
    // for the rest and evict its early blocks for good.
    size_t protected_bytes = 0;
    for (int b : protected_) protected_bytes += costs_[TierIndex(current_[b])];
    const size_t budget =
        protected_bytes +
        static_cast<size_t>(t.ratio * static_cast<double>(n_written - n_protected) *
                            static_cast<double>(costs_[TierIndex(KvTier::kF16)]));
    LayerInput in;
    in.length = length;
    in.block_tokens = bt;
    in.scores = t.scores->layer(l);
    in.current = current_;
    in.budget_bytes = budget;
    in.costs = &costs_;
    t.policy->Assign(in, &target_);
    // Evictions first: they free the bytes the quantized copies need.
    for (int pass = 0; pass < 2; ++pass) {
      for (int b = 0; b < n_written; ++b) {
        const KvTier to = target_[b];
        if (to <= current_[b] || (to == KvTier::kEvicted) != (pass == 0)) continue;
        if (!cache_->IsPrivate(seq, b)) continue;
        if (cache_->Compress(seq, l, b, to)) {
          ++counters_.moved_to[TierIndex(to)];
        } else {
          ++counters_.failed;
        }
      }
    }
  }
}

}  // namespace kvserve::kvcache
