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
  holders_dirty_ = true;
}

void KvCompressor::RemoveSequence(int seq) {
  seqs_.erase(seq);
  holders_dirty_ = true;
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
  holders_dirty_ = true;  // the tables may have changed since the last call
  bool any = false;
  for (int seq : ran) {
    auto it = seqs_.find(seq);
    if (it == seqs_.end() || !it->second.policy->compresses() || !cache_->HasSequence(seq))
      continue;
    if (cache_->NumBlocks(seq) == it->second.assessed_blocks) continue;
    Assess(seq, it->second, /*pressure=*/false);
    any = true;
  }
  if (any) counters_.policy_seconds += Seconds(t0);
}

bool KvCompressor::Reclaim(int blocks) { return ReclaimImpl(blocks, {}, /*all=*/true); }

bool KvCompressor::Reclaim(int blocks, std::span<const int> only_seqs) {
  return ReclaimImpl(blocks, only_seqs, /*all=*/false);
}

bool KvCompressor::ReclaimImpl(int blocks, std::span<const int> only_seqs, bool all) {
  const auto t0 = std::chrono::steady_clock::now();
  auto enough = [&] { return cache_->pool().n_free() >= blocks; };
  // Cached blocks no sequence uses go first: they cost no running sequence
  // anything.
  if (!enough()) {
    counters_.cached_evicted += cache_->EvictUnused(blocks - cache_->pool().n_free());
  }
  std::vector<int> only(only_seqs.begin(), only_seqs.end());
  const bool ok = Tighten(all ? nullptr : &only, enough);
  counters_.policy_seconds += Seconds(t0);
  return ok;
}

bool KvCompressor::ReclaimUntil(std::span<const int> only_seqs, absl::FunctionRef<bool()> done) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int> only(only_seqs.begin(), only_seqs.end());
  const bool ok = Tighten(&only, done);
  counters_.policy_seconds += Seconds(t0);
  return ok;
}

bool KvCompressor::Tighten(const std::vector<int>* only, absl::FunctionRef<bool()> done) {
  holders_dirty_ = true;  // the tables may have changed since the last call
  std::vector<int> order;
  if (only != nullptr) {
    order = *only;
    std::sort(order.begin(), order.end());
    order.erase(std::unique(order.begin(), order.end()), order.end());
  } else {
    for (const auto& [seq, t] : seqs_) order.push_back(seq);
  }
  bool ok = done();
  while (!ok) {
    bool tightened = false;
    for (int seq : order) {
      auto it = seqs_.find(seq);
      if (it == seqs_.end()) continue;
      Tracked& t = it->second;
      if (!t.policy->compresses() || !cache_->HasSequence(seq)) continue;
      if (t.ratio <= options_.min_ratio) continue;
      t.ratio = std::max(options_.min_ratio, t.ratio * (1.0 - options_.beta));
      Assess(seq, t, /*pressure=*/true);
      tightened = true;
      if (done()) break;
    }
    if (!tightened) break;
    ++counters_.reclaim_rounds;
    ok = done();
  }
  return ok;
}

void KvCompressor::UpdateHolders() {
  if (!holders_dirty_) return;
  holders_.clear();
  for (const auto& [seq, t] : seqs_) {
    if (!cache_->HasSequence(seq)) continue;
    const int n = cache_->NumBlocks(seq);
    for (int b = 0; b < n; ++b) {
      const int32_t id = cache_->BlockId(seq, b);
      if (cache_->pool().ref_count(id) > 1) holders_[id].push_back({seq, b});
    }
  }
  holders_dirty_ = false;
}

std::optional<KvTier> KvCompressor::JointTier(int32_t id, int layer) const {
  const int n_holders =
      cache_->pool().ref_count(id) - (cache_->prefix_cache().Contains(id) ? 1 : 0);
  auto it = holders_.find(id);
  // A holder this compressor does not track has asked for nothing.
  if (it == holders_.end() || static_cast<int>(it->second.size()) != n_holders) {
    return std::nullopt;
  }
  const int n_layers = cache_->shape().n_layers;
  KvTier joint = KvTier::kEvicted;
  for (const Holder& h : it->second) {
    const Tracked& t = seqs_.at(h.seq);
    if (!t.policy->compresses()) return std::nullopt;
    if (h.block >= static_cast<int>(t.wish_ids.size()) || t.wish_ids[h.block] != id) {
      return std::nullopt;
    }
    joint = std::min(joint, t.wish[static_cast<size_t>(h.block) * n_layers + layer]);
  }
  return joint;
}

void KvCompressor::Assess(int seq, Tracked& t, bool pressure) {
  ++counters_.assessments;
  const int n_blocks = cache_->NumBlocks(seq);
  t.assessed_blocks = n_blocks;
  const int length = cache_->Length(seq);
  if (length == 0) return;
  const int bt = cache_->block_tokens();
  const int n_written = (length + bt - 1) / bt;
  const int n_layers = cache_->shape().n_layers;
  const BlockPool& pool = cache_->pool();
  const PrefixCache& index = cache_->prefix_cache();
  UpdateHolders();
  // Blocks seq does not hold alone: the policy plans them too (its plan is
  // its wish), unless they cannot move at all now, which pins them.
  pinned_.assign(n_written, 0);
  t.wish_ids.assign(n_written, -1);
  t.wish.assign(static_cast<size_t>(n_written) * n_layers, KvTier::kF16);
  bool shared_scores = false;
  for (int b = 0; b < n_written; ++b) {
    const int32_t id = cache_->BlockId(seq, b);
    const int refs = pool.ref_count(id);
    if (refs == 1) continue;
    t.wish_ids[b] = id;
    const bool indexed = index.Contains(id);
    const int n_holders = refs - (indexed ? 1 : 0);
    shared_scores |= n_holders > 1;
    // A cached block keeps its exact KV for future hits unless memory is
    // short; a partial shared block will be copied and written.
    bool movable = (!indexed || pressure) && length >= (b + 1) * bt;
    if (movable) {
      auto h = holders_.find(id);
      movable = h != holders_.end() && static_cast<int>(h->second.size()) == n_holders;
      for (size_t i = 0; movable && i < h->second.size(); ++i) {
        movable = seqs_.at(h->second[i].seq).policy->compresses();
      }
    }
    pinned_[b] = movable ? 0 : 1;
  }
  protected_.clear();
  for (int b = 0; b < n_written; ++b) {
    if (pinned_[b] || IsProtectedBlock(options_.policy, length, bt, b)) protected_.push_back(b);
  }
  const int n_protected = static_cast<int>(protected_.size());
  for (int l = 0; l < n_layers; ++l) {
    cache_->Tiers(seq, l, &current_);
    // Reserved blocks past the written positions are not the policy's.
    current_.resize(n_written);
    // The ratio holds the blocks outside the protected window (sinks,
    // recent tokens, pinned blocks); those stay as they are at their own
    // cost. Holding the whole sequence to the ratio would, while it is
    // short, leave nothing for the rest and evict its early blocks for good.
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
    if (shared_scores) {
      // A shared block is worth the attention of every sequence holding it.
      joint_scores_.assign(in.scores.begin(), in.scores.end());
      joint_scores_.resize(std::max<size_t>(joint_scores_.size(), n_written));
      for (int b = 0; b < n_written; ++b) {
        if (t.wish_ids[b] < 0) continue;
        auto h = holders_.find(t.wish_ids[b]);
        if (h == holders_.end()) continue;
        for (const Holder& other : h->second) {
          if (other.seq == seq) continue;
          const Tracked& o = seqs_.at(other.seq);
          if (o.scores == nullptr) continue;
          const std::span<const BlockScore> os = o.scores->layer(l);
          if (other.block >= static_cast<int>(os.size())) continue;
          BlockScore& j = joint_scores_[b];
          const BlockScore& x = os[other.block];
          j.ema += x.ema;
          j.last += x.last;
          j.cumulative += x.cumulative;
          j.n_obs += x.n_obs;
        }
      }
      joint_scores_.resize(n_written);
      in.scores = joint_scores_;
    }
    in.current = current_;
    in.pinned = pinned_;
    in.budget_bytes = budget;
    in.costs = &costs_;
    t.policy->Assign(in, &target_);
    for (int b = 0; b < n_written; ++b) {
      if (t.wish_ids[b] >= 0) t.wish[static_cast<size_t>(b) * n_layers + l] = target_[b];
    }
    // Evictions first: they free the bytes the quantized copies need.
    for (int pass = 0; pass < 2; ++pass) {
      for (int b = 0; b < n_written; ++b) {
        KvTier to = target_[b];
        if (to <= current_[b]) continue;
        const int32_t id = cache_->BlockId(seq, b);
        const bool shared = pool.ref_count(id) > 1;
        if (shared) {
          // Every holder has a say; the block takes the highest precision
          // any of them wished.
          const std::optional<KvTier> joint = JointTier(id, l);
          if (!joint.has_value() || *joint <= current_[b]) continue;
          to = *joint;
        }
        if ((to == KvTier::kEvicted) != (pass == 0)) continue;
        if (shared && index.Contains(id)) {
          // Pressure (otherwise the block was pinned): the cache gives it up.
          cache_->Unindex(seq, b);
          ++counters_.unindexed;
        }
        const bool ok = pool.ref_count(id) == 1 ? cache_->Compress(seq, l, b, to)
                                                : cache_->CompressShared(seq, l, b, to);
        if (ok) {
          ++counters_.moved_to[TierIndex(to)];
          if (pool.ref_count(id) > 1) ++counters_.shared_moved;
        } else {
          ++counters_.failed;
        }
      }
    }
  }
}

}  // namespace kvserve::kvcache
