#include "kvcache/compression_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <queue>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/check.h"

namespace kvserve::kvcache {
namespace {

constexpr std::string_view kNone = "none";
constexpr std::string_view kStreaming = "streaming";
constexpr std::string_view kH2o = "h2o";
constexpr std::string_view kSnapKv = "snapkv";
constexpr std::string_view kQuantUniform = "quant-uniform";
constexpr std::string_view kAttentionGuided = "attention-guided";

constexpr int kEvictedIndex = TierIndex(KvTier::kEvicted);

// Abseil here is built with its own string_view type, which StrCat needs.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

void CheckInput(const LayerInput& in, const std::vector<KvTier>* out) {
  KV_CHECK(out != nullptr);
  KV_CHECK_MSG(in.costs != nullptr, "LayerInput::costs is null");
  KV_CHECK_MSG(in.block_tokens > 0, "block_tokens must be > 0");
  KV_CHECK_MSG(in.length >= 0, "length must be >= 0");
  const size_t n_blocks =
      (static_cast<size_t>(in.length) + in.block_tokens - 1) / static_cast<size_t>(in.block_tokens);
  KV_CHECK_MSG(in.current.size() == n_blocks, "current.size() != ceil(length / block_tokens)");
  KV_CHECK_MSG(in.scores.size() <= n_blocks, "more scores than blocks");
  KV_CHECK_MSG(in.pinned.empty() || in.pinned.size() == n_blocks, "pinned.size() != n_blocks");
  const TierBytes& c = *in.costs;
  KV_CHECK_MSG(c[kEvictedIndex] == 0, "costs[kEvicted] must be 0");
  for (int t = 1; t < kEvictedIndex; ++t) {
    KV_CHECK_MSG(c[t] < c[t - 1] && c[t] > 0, "tier costs must decrease strictly to kEvicted");
  }
}

const BlockScore& ScoreOf(const LayerInput& in, size_t b) {
  static const BlockScore kUnobserved;
  return b < in.scores.size() ? in.scores[b] : kUnobserved;
}

size_t CostOf(const LayerInput& in, KvTier t) { return (*in.costs)[TierIndex(t)]; }

// What every policy starts from: out = current, the protected mask and the
// bytes left for the unprotected blocks.
struct Frame {
  std::vector<uint8_t> is_protected;  // [n_blocks]
  bool feasible = true;               // the protected blocks fit the budget
  size_t free_bytes = 0;              // budget - protected bytes, if feasible
};

Frame Prepare(const PolicyOptions& options, const LayerInput& in, std::vector<KvTier>* out) {
  CheckInput(in, out);
  const int n = static_cast<int>(in.current.size());
  out->assign(in.current.begin(), in.current.end());
  Frame f;
  f.is_protected.resize(n);
  size_t protected_bytes = 0;
  for (int b = 0; b < n; ++b) {
    f.is_protected[b] = IsProtectedBlock(options, in.length, in.block_tokens, b) ||
                        (!in.pinned.empty() && in.pinned[b] != 0);
    if (f.is_protected[b]) protected_bytes += CostOf(in, in.current[b]);
  }
  f.feasible = protected_bytes <= in.budget_bytes;
  f.free_bytes = f.feasible ? in.budget_bytes - protected_bytes : 0;
  return f;
}

// Unprotected blocks that still hold data, the only ones a policy can move.
bool Movable(const Frame& f, const LayerInput& in, int b) {
  return !f.is_protected[b] && in.current[b] != KvTier::kEvicted;
}

class NonePolicy final : public CompressionPolicy {
 public:
  std::string_view name() const override { return kNone; }
  bool compresses() const override { return false; }
  void Assign(const LayerInput& in, std::vector<KvTier>* out) const override {
    CheckInput(in, out);
    out->assign(in.current.begin(), in.current.end());
  }
};

// StreamingLLM at block granularity: the kept window is contiguous in
// position, so the scan stops at the first block that does not fit rather
// than skipping it to fit an older one.
class StreamingPolicy final : public CompressionPolicy {
 public:
  explicit StreamingPolicy(const PolicyOptions& options) : options_(options) {}
  std::string_view name() const override { return kStreaming; }
  void Assign(const LayerInput& in, std::vector<KvTier>* out) const override {
    const Frame f = Prepare(options_, in, out);
    size_t left = f.free_bytes;
    bool window_closed = !f.feasible;
    for (int b = static_cast<int>(in.current.size()) - 1; b >= 0; --b) {
      if (!Movable(f, in, b)) continue;
      const size_t cost = CostOf(in, in.current[b]);
      if (!window_closed && cost <= left) {
        left -= cost;
      } else {
        window_closed = true;
        (*out)[b] = KvTier::kEvicted;
      }
    }
  }

 private:
  PolicyOptions options_;
};

// H2O and SnapKV: keep the unprotected blocks of highest statistic, as they
// are, while they fit; evict the rest. A block that does not fit is skipped
// and lower-ranked cheaper ones may still be kept (only possible when
// current tiers differ).
class RankedEvictionPolicy final : public CompressionPolicy {
 public:
  enum class Statistic { kCumulative, kLast };
  RankedEvictionPolicy(const PolicyOptions& options, Statistic stat, std::string_view name)
      : options_(options), stat_(stat), name_(name) {}
  std::string_view name() const override { return name_; }
  void Assign(const LayerInput& in, std::vector<KvTier>* out) const override {
    const Frame f = Prepare(options_, in, out);
    std::vector<std::pair<double, int>> ranked;  // (statistic, block)
    for (int b = 0; b < static_cast<int>(in.current.size()); ++b) {
      if (!Movable(f, in, b)) continue;
      const BlockScore& s = ScoreOf(in, b);
      ranked.emplace_back(stat_ == Statistic::kCumulative ? s.cumulative : double{s.last}, b);
    }
    // Highest statistic first; at equal statistic the newer block.
    std::sort(ranked.begin(), ranked.end(), std::greater<>());
    size_t left = f.free_bytes;
    for (const auto& [stat, b] : ranked) {
      const size_t cost = CostOf(in, in.current[b]);
      if (f.feasible && cost <= left) {
        left -= cost;
      } else {
        (*out)[b] = KvTier::kEvicted;
      }
    }
  }

 private:
  PolicyOptions options_;
  Statistic stat_;
  std::string_view name_;
};

// KIVI-like: one quantized tier for every unprotected block. Tries the
// preferred tier, then each lower quantized tier, and settles for kInt2 even
// when that misses the budget: the baseline never evicts.
class QuantUniformPolicy final : public CompressionPolicy {
 public:
  explicit QuantUniformPolicy(const PolicyOptions& options) : options_(options) {}
  std::string_view name() const override { return kQuantUniform; }
  void Assign(const LayerInput& in, std::vector<KvTier>* out) const override {
    const Frame f = Prepare(options_, in, out);
    const int n = static_cast<int>(in.current.size());
    auto lowered = [&](int b, KvTier t) { return std::max(in.current[b], t); };
    KvTier chosen = KvTier::kInt2;
    if (f.feasible) {
      for (int t = TierIndex(options_.uniform_tier); t < TierIndex(KvTier::kInt2); ++t) {
        size_t bytes = 0;
        for (int b = 0; b < n; ++b) {
          if (!f.is_protected[b]) bytes += CostOf(in, lowered(b, TierFromIndex(t)));
        }
        if (bytes <= f.free_bytes) {
          chosen = TierFromIndex(t);
          break;
        }
      }
    }
    for (int b = 0; b < n; ++b) {
      if (!f.is_protected[b]) (*out)[b] = lowered(b, chosen);
    }
  }

 private:
  PolicyOptions options_;
};

// Ours. Maximises sum_b C_b * (1 - distortion[t_b]) under the budget (a
// multiple-choice knapsack; every block has the same tier costs) in four
// passes over the movable blocks (unprotected, not already evicted):
//  1. Greedy by gain per byte. Every movable block starts evicted and offers
//     its best upgrade: the highest gain per byte over all tiers it may
//     still move to that fit the bytes left, at equal ratio the smaller
//     step. A max-heap keyed by (ratio, newer block) takes the best offer;
//     the block then offers its next upgrade. An offer that no longer fits
//     is recomputed against the bytes left (it can only get worse, so the
//     heap stays a valid upper bound). Only positive gains take part.
//  2. Core refinement. The greedy loses only at the margin, where a step
//     that does not fit leaves bytes unused (a real loss when the layer has
//     few blocks). The kCoreBlocks blocks closest to the margin (the
//     cheapest to lower and the most valuable to raise, per byte) are
//     re-solved exactly, with the others fixed, by a Pareto (bytes, value)
//     dynamic programme. With at most kCoreBlocks movable blocks the result
//     is optimal.
//  3. Bytes still left can only buy zero-gain upgrades: unobserved blocks
//     (C = 0) and steps between tiers of equal distortion. They go to the
//     same greedy with a secondary value (1 + C_b) * v(t), where v(t) =
//     (1 - distortion[t]) plus a small per-tier-step term, so every step
//     gains something and higher scores still go first: zero-score blocks
//     all get int2, newest first, before any is raised further, and a budget
//     that fits every block as it is changes nothing.
//  4. Among blocks with the same current tier, the chosen tiers are handed
//     out again in score order (the best tier to the highest score, newer
//     first at equal score). Same bytes, objective never lower, and it
//     guarantees that a higher-score block never ends below a lower-score
//     one that started at the same tier.
class AttentionGuidedPolicy final : public CompressionPolicy {
 public:
  explicit AttentionGuidedPolicy(const PolicyOptions& options) : options_(options) {}
  std::string_view name() const override { return kAttentionGuided; }
  void Assign(const LayerInput& in, std::vector<KvTier>* out) const override;

 private:
  PolicyOptions options_;
};

// Re-solved exactly in pass 2: at most C(kCoreBlocks + 4, 4) = 1001 Pareto
// states per block, a few tens of microseconds.
constexpr int kCoreBlocks = 10;
// Pass 3's per-tier-step value, small against any distortion difference
// that matters.
constexpr double kTierStepValue = 1e-3;

struct Offer {
  double ratio;  // gain per byte
  int block;
  int to;        // tier index
  size_t bytes;  // added bytes
  // Max-heap order: best ratio, then the newer block.
  bool operator<(const Offer& o) const {
    return ratio != o.ratio ? ratio < o.ratio : block < o.block;
  }
};

// The working state of one AttentionGuidedPolicy::Assign call.
class GuidedSolver {
 public:
  GuidedSolver(const PolicyOptions& options, const LayerInput& in, const Frame& frame)
      : in_(in), cost_(*in.costs), d_(options.distortion), left_(frame.free_bytes) {
    const int n = static_cast<int>(in.current.size());
    score_.assign(n, 0.0);
    tier_.resize(n);
    for (int b = 0; b < n; ++b) {
      tier_[b] = TierIndex(in.current[b]);
      if (!Movable(frame, in, b)) continue;
      const BlockScore& s = ScoreOf(in, b);
      if (s.n_obs > 0) score_[b] = options.alpha * double{s.ema} + (1.0 - options.alpha) * s.last;
      tier_[b] = kEvictedIndex;
      movable_.push_back(b);
    }
    if (options.score_floor > 0 && !movable_.empty()) {
      double mean = 0;
      for (int b : movable_) mean += score_[b];
      mean /= static_cast<double>(movable_.size());
      for (int b : movable_) score_[b] += options.score_floor * mean;
    }
  }

  void Greedy(bool by_score);
  void RefineCore();
  void Rearrange();
  void Write(std::vector<KvTier>* out) const {
    for (int b : movable_) (*out)[b] = TierFromIndex(tier_[b]);
  }

 private:
  int Floor(int b) const { return TierIndex(in_.current[b]); }
  double Value(int b, int t) const { return score_[b] * (1.0 - d_[t]); }
  double PlainValue(int t) const { return (1.0 - d_[t]) + kTierStepValue * (kEvictedIndex - t); }
  // Block b's best upgrade that adds at most max_bytes.
  std::optional<Offer> BestOffer(int b, bool by_score, size_t max_bytes) const;

  const LayerInput& in_;
  const TierBytes& cost_;
  const std::array<float, kNumKvTiers>& d_;
  size_t left_;                // bytes still free
  std::vector<double> score_;  // [n_blocks] C_b
  std::vector<int> tier_;      // [n_blocks] working tier index
  std::vector<int> movable_;   // ascending
};

std::optional<Offer> GuidedSolver::BestOffer(int b, bool by_score, size_t max_bytes) const {
  std::optional<Offer> best;
  const int from = tier_[b];
  for (int to = from - 1; to >= Floor(b); --to) {
    const size_t bytes = cost_[to] - cost_[from];
    if (bytes > max_bytes) continue;
    const double gain = by_score ? Value(b, to) - Value(b, from)
                                 : (1.0 + score_[b]) * (PlainValue(to) - PlainValue(from));
    if (!(gain > 0)) continue;
    const double ratio = gain / static_cast<double>(bytes);
    if (!best || ratio > best->ratio) best = Offer{ratio, b, to, bytes};
  }
  return best;
}

void GuidedSolver::Greedy(bool by_score) {
  std::vector<Offer> offers;
  offers.reserve(movable_.size());
  for (int b : movable_) {
    if (auto o = BestOffer(b, by_score, left_)) offers.push_back(*o);
  }
  std::priority_queue<Offer> heap(std::less<Offer>(), std::move(offers));
  while (!heap.empty()) {
    const Offer o = heap.top();
    heap.pop();
    if (o.bytes <= left_) {
      tier_[o.block] = o.to;
      left_ -= o.bytes;
    }
    if (auto next = BestOffer(o.block, by_score, left_)) heap.push(*next);
  }
}

void GuidedSolver::RefineCore() {
  // Pick the core: alternately the block cheapest to lower (least value lost
  // per byte freed) and the block most valuable to raise (ignoring the
  // budget), each list best first, newer first at equal ratio.
  std::vector<std::pair<double, int>> lower, raise;  // (ratio, block)
  for (int b : movable_) {
    if (score_[b] <= 0) continue;  // no value to move either way
    double loss = -1;
    for (int to = tier_[b] + 1; to <= kEvictedIndex; ++to) {
      const double r =
          (Value(b, tier_[b]) - Value(b, to)) / static_cast<double>(cost_[tier_[b]] - cost_[to]);
      if (loss < 0 || r < loss) loss = r;
    }
    if (loss >= 0) lower.emplace_back(-loss, b);
    if (auto o = BestOffer(b, /*by_score=*/true, SIZE_MAX)) raise.emplace_back(o->ratio, b);
  }
  if (raise.empty()) return;  // nothing could gain
  auto top = [](std::vector<std::pair<double, int>>& v, size_t k) {
    k = std::min(k, v.size());
    std::partial_sort(v.begin(), v.begin() + k, v.end(), std::greater<>());
    v.resize(k);
  };
  top(lower, kCoreBlocks);
  top(raise, kCoreBlocks);
  std::vector<int> core;
  for (size_t i = 0; core.size() < kCoreBlocks && (i < lower.size() || i < raise.size()); ++i) {
    for (const auto* list : {&lower, &raise}) {
      if (i >= list->size() || core.size() >= kCoreBlocks) continue;
      const int b = (*list)[i].second;
      if (std::find(core.begin(), core.end(), b) == core.end()) core.push_back(b);
    }
  }

  // Pareto DP over the core: after block i, the assignments of core[0..i]
  // that are not dominated (no other is as cheap and worth as much).
  size_t budget = left_;
  double current_value = 0;
  for (int b : core) {
    budget += cost_[tier_[b]];
    current_value += Value(b, tier_[b]);
  }
  struct State {
    size_t bytes;
    double value;
    int parent;  // index in the previous stage
    int tier;
  };
  std::vector<std::vector<State>> stages(core.size() + 1);
  stages[0] = {State{0, 0.0, -1, -1}};
  std::vector<State> next;
  for (size_t i = 0; i < core.size(); ++i) {
    const int b = core[i];
    next.clear();
    for (int p = 0; p < static_cast<int>(stages[i].size()); ++p) {
      const State& s = stages[i][p];
      for (int t = Floor(b); t <= kEvictedIndex; ++t) {
        const size_t bytes = s.bytes + cost_[t];
        if (bytes <= budget) next.push_back(State{bytes, s.value + Value(b, t), p, t});
      }
    }
    std::sort(next.begin(), next.end(), [](const State& x, const State& y) {
      return x.bytes != y.bytes ? x.bytes < y.bytes : x.value > y.value;
    });
    for (const State& s : next) {
      if (stages[i + 1].empty() || s.value > stages[i + 1].back().value) {
        stages[i + 1].push_back(s);
      }
    }
  }
  // The last state is the most valuable (values rise with bytes). Take it
  // only if it beats the greedy by more than rounding, so ties keep the
  // greedy's choice.
  const std::vector<State>& last = stages.back();
  if (last.empty() || !(last.back().value > current_value + 1e-12 * (1.0 + current_value))) {
    return;
  }
  int p = static_cast<int>(last.size()) - 1;
  for (size_t i = core.size(); i > 0; --i) {
    const State& s = stages[i][p];
    tier_[core[i - 1]] = s.tier;
    p = s.parent;
  }
  left_ = budget - last.back().bytes;
}

void GuidedSolver::Rearrange() {
  // Per starting tier: the blocks in rank order and the tiers best first.
  std::vector<int> blocks;
  std::vector<int> tiers;
  for (int floor = 0; floor < kEvictedIndex; ++floor) {
    blocks.clear();
    tiers.clear();
    for (int b : movable_) {
      if (Floor(b) != floor) continue;
      blocks.push_back(b);
      tiers.push_back(tier_[b]);
    }
    std::sort(blocks.begin(), blocks.end(),
              [&](int x, int y) { return score_[x] != score_[y] ? score_[x] > score_[y] : x > y; });
    std::sort(tiers.begin(), tiers.end());
    for (size_t i = 0; i < blocks.size(); ++i) tier_[blocks[i]] = tiers[i];
  }
}

void AttentionGuidedPolicy::Assign(const LayerInput& in, std::vector<KvTier>* out) const {
  const Frame f = Prepare(options_, in, out);
  if (!f.feasible) {
    for (int b = 0; b < static_cast<int>(in.current.size()); ++b) {
      if (!f.is_protected[b]) (*out)[b] = KvTier::kEvicted;
    }
    return;
  }
  GuidedSolver solver(options_, in, f);
  solver.Greedy(/*by_score=*/true);
  solver.RefineCore();
  solver.Greedy(/*by_score=*/false);
  solver.Rearrange();
  solver.Write(out);
}

}  // namespace

CompressionPolicy::~CompressionPolicy() = default;

absl::Status ValidatePolicyOptions(const PolicyOptions& o) {
  if (o.sink_blocks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sink_blocks must be >= 0, got ", o.sink_blocks));
  }
  if (o.recent_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("recent_tokens must be >= 0, got ", o.recent_tokens));
  }
  if (!(o.score_floor >= 0.f && std::isfinite(o.score_floor))) {
    return absl::InvalidArgumentError(
        absl::StrCat("score_floor must be a finite number >= 0, got ", o.score_floor));
  }
  if (!(o.alpha >= 0.f && o.alpha <= 1.f)) {
    return absl::InvalidArgumentError(absl::StrCat("alpha must be in [0, 1], got ", o.alpha));
  }
  for (int t = 0; t < kNumKvTiers; ++t) {
    const float v = o.distortion[t];
    const std::string_view tier = KvTierName(TierFromIndex(t));
    if (!(v >= 0.f && v <= 1.f)) {
      return absl::InvalidArgumentError(
          absl::StrCat("distortion[", Sv(tier), "] must be in [0, 1], got ", v));
    }
    if (t > 0 && v < o.distortion[t - 1]) {
      return absl::InvalidArgumentError(
          absl::StrCat("distortion must be non-decreasing from f16 to evicted, but distortion[",
                       Sv(tier), "] = ", v, " < distortion[", Sv(KvTierName(TierFromIndex(t - 1))),
                       "] = ", o.distortion[t - 1]));
    }
  }
  if (o.distortion[TierIndex(KvTier::kF16)] != 0.f) {
    return absl::InvalidArgumentError(
        absl::StrCat("distortion[f16] must be 0, got ", o.distortion[TierIndex(KvTier::kF16)]));
  }
  if (o.distortion[kEvictedIndex] != 1.f) {
    return absl::InvalidArgumentError(
        absl::StrCat("distortion[evicted] must be 1, got ", o.distortion[kEvictedIndex]));
  }
  if (!IsQuantized(o.uniform_tier)) {
    return absl::InvalidArgumentError(absl::StrCat("uniform_tier must be int8, int4 or int2, got ",
                                                   Sv(KvTierName(o.uniform_tier))));
  }
  return absl::OkStatus();
}

std::vector<std::string_view> CompressionPolicyNames() {
  return {kNone, kStreaming, kH2o, kSnapKv, kQuantUniform, kAttentionGuided};
}

bool IsCompressionPolicy(std::string_view name) {
  const std::vector<std::string_view> names = CompressionPolicyNames();
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string CompressionPolicyNameList() {
  std::string out;
  for (std::string_view n : CompressionPolicyNames()) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", Sv(n));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<CompressionPolicy>> MakeCompressionPolicy(
    std::string_view name, const PolicyOptions& options) {
  if (absl::Status s = ValidatePolicyOptions(options); !s.ok()) return s;
  using Stat = RankedEvictionPolicy::Statistic;
  if (name == kNone) return std::make_unique<NonePolicy>();
  if (name == kStreaming) return std::make_unique<StreamingPolicy>(options);
  if (name == kH2o) return std::make_unique<RankedEvictionPolicy>(options, Stat::kCumulative, kH2o);
  if (name == kSnapKv) return std::make_unique<RankedEvictionPolicy>(options, Stat::kLast, kSnapKv);
  if (name == kQuantUniform) return std::make_unique<QuantUniformPolicy>(options);
  if (name == kAttentionGuided) return std::make_unique<AttentionGuidedPolicy>(options);
  return absl::InvalidArgumentError(absl::StrCat("unknown compression policy '", Sv(name),
                                                 "'; valid names: ", CompressionPolicyNameList()));
}

bool IsProtectedBlock(const PolicyOptions& options, int length, int block_tokens, int block) {
  KV_CHECK(block_tokens > 0 && length >= 0);
  const int64_t n_blocks = (int64_t{length} + block_tokens - 1) / block_tokens;
  KV_CHECK(block >= 0 && block < n_blocks);
  if (block < options.sink_blocks) return true;
  const int64_t end = std::min<int64_t>(int64_t{block + 1} * block_tokens, length);
  if (end > int64_t{length} - options.recent_tokens) return true;
  // The last block while partially filled: still being written.
  return block == n_blocks - 1 && length % block_tokens != 0;
}

size_t AssignmentBytes(std::span<const KvTier> tiers, const TierBytes& costs) {
  size_t bytes = 0;
  for (KvTier t : tiers) bytes += costs[TierIndex(t)];
  return bytes;
}

}  // namespace kvserve::kvcache
