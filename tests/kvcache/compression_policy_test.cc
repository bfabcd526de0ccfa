#include "kvcache/compression_policy.h"

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvserve::kvcache {
namespace {

using ::testing::HasSubstr;

// Roughly a (block, layer) unit of 16 tokens: f16, then int8/int4/int2 codes
// plus their group scales.
constexpr TierBytes kCosts = {1024, 544, 288, 160, 0};
constexpr KvTier kF16 = KvTier::kF16;
constexpr KvTier kInt8 = KvTier::kInt8;
constexpr KvTier kInt4 = KvTier::kInt4;
constexpr KvTier kInt2 = KvTier::kInt2;
constexpr KvTier kEv = KvTier::kEvicted;

absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

size_t Cost(KvTier t, const TierBytes& costs = kCosts) { return costs[TierIndex(t)]; }

// One layer's input, owning its arrays.
struct Case {
  int length = 0;
  int block_tokens = 16;
  std::vector<BlockScore> scores;
  std::vector<KvTier> current;
  size_t budget = 0;
  TierBytes costs = kCosts;
  std::vector<uint8_t> pinned;  // empty or [n_blocks]

  LayerInput input() const {
    return {length, block_tokens, scores, current, budget, &costs, pinned};
  }
};

// n full blocks of 16 tokens, all f16, unobserved, unlimited budget.
Case AllF16(int n_blocks) {
  Case c;
  c.length = n_blocks * 16;
  c.current.assign(n_blocks, kF16);
  c.budget = SIZE_MAX;
  return c;
}

BlockScore Observed(float ema, float last, double cumulative) {
  return BlockScore{ema, last, cumulative, 1};
}

std::unique_ptr<CompressionPolicy> Make(std::string_view name, const PolicyOptions& options = {}) {
  auto p = MakeCompressionPolicy(name, options);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *std::move(p) : nullptr;
}

std::vector<KvTier> Apply(const CompressionPolicy& p, const Case& c) {
  std::vector<KvTier> out = {kInt8};  // stale content Assign must replace
  p.Assign(c.input(), &out);
  return out;
}

std::string Show(const std::vector<KvTier>& tiers) {
  std::string s;
  for (KvTier t : tiers) absl::StrAppend(&s, s.empty() ? "" : " ", Sv(KvTierName(t)));
  return s;
}

double ScoreC(const PolicyOptions& o, const BlockScore& s) {
  return s.n_obs == 0 ? 0.0 : o.alpha * double{s.ema} + (1.0 - o.alpha) * double{s.last};
}

// attention-guided's objective: sum_b C_b * (1 - distortion[t_b]).
double Objective(const PolicyOptions& o, const Case& c, const std::vector<KvTier>& tiers) {
  double v = 0;
  for (size_t b = 0; b < tiers.size(); ++b) {
    const BlockScore s = b < c.scores.size() ? c.scores[b] : BlockScore{};
    v += ScoreC(o, s) * (1.0 - o.distortion[TierIndex(tiers[b])]);
  }
  return v;
}

// ---------------------------------------------------------------- factory

TEST(CompressionPolicyTest, FactoryMakesEveryName) {
  const std::vector<std::string_view> names = CompressionPolicyNames();
  EXPECT_THAT(names, ::testing::ElementsAre("none", "streaming", "h2o", "snapkv", "quant-uniform",
                                            "attention-guided"));
  for (std::string_view name : names) {
    auto p = MakeCompressionPolicy(name, PolicyOptions{});
    ASSERT_TRUE(p.ok()) << name << ": " << p.status();
    EXPECT_EQ((*p)->name(), name);
    EXPECT_EQ((*p)->compresses(), name != "none") << name;
  }
}

TEST(CompressionPolicyTest, FactoryRejectsUnknownNameListingValidOnes) {
  for (std::string_view bad : {"", "H2O", "snap-kv", "attention_guided"}) {
    auto p = MakeCompressionPolicy(bad, PolicyOptions{});
    ASSERT_FALSE(p.ok()) << bad;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(p.status().message()), HasSubstr(absl::StrCat("'", Sv(bad), "'")));
    for (std::string_view name : CompressionPolicyNames()) {
      EXPECT_THAT(std::string(p.status().message()), HasSubstr(std::string(name)));
    }
  }
}

TEST(CompressionPolicyTest, FactoryRejectsBadOptions) {
  PolicyOptions o;
  o.alpha = 2.f;
  auto p = MakeCompressionPolicy("attention-guided", o);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(p.status().message()), HasSubstr("alpha"));
}

TEST(CompressionPolicyTest, ValidatePolicyOptions) {
  EXPECT_TRUE(ValidatePolicyOptions(PolicyOptions{}).ok());
  struct Bad {
    PolicyOptions options;
    std::string expect;
  };
  std::vector<Bad> bad;
  auto with = [&](auto edit, std::string expect) {
    PolicyOptions o;
    edit(o);
    bad.push_back({o, expect});
  };
  with([](PolicyOptions& o) { o.sink_blocks = -1; }, "sink_blocks");
  with([](PolicyOptions& o) { o.recent_tokens = -16; }, "recent_tokens");
  with([](PolicyOptions& o) { o.alpha = -0.1f; }, "alpha");
  with([](PolicyOptions& o) { o.alpha = 1.5f; }, "alpha");
  with([](PolicyOptions& o) { o.alpha = std::nanf(""); }, "alpha");
  with([](PolicyOptions& o) { o.distortion = {0.f, 0.5f, 0.4f, 0.6f, 1.f}; }, "non-decreasing");
  with([](PolicyOptions& o) { o.distortion = {0.f, 0.1f, 0.2f, 1.5f, 1.f}; }, "distortion[int2]");
  with([](PolicyOptions& o) { o.distortion = {0.f, -0.1f, 0.2f, 0.3f, 1.f}; }, "distortion[int8]");
  with([](PolicyOptions& o) { o.distortion = {0.1f, 0.1f, 0.2f, 0.3f, 1.f}; }, "distortion[f16]");
  with(
      [](PolicyOptions& o) {
        o.distortion = {0.f, 0.1f, 0.2f, 0.3f, 0.9f};
      },
      "distortion[evicted]");
  with([](PolicyOptions& o) { o.uniform_tier = kF16; }, "uniform_tier");
  with([](PolicyOptions& o) { o.uniform_tier = kEv; }, "uniform_tier");
  for (const Bad& b : bad) {
    const absl::Status s = ValidatePolicyOptions(b.options);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b.expect;
    EXPECT_THAT(std::string(s.message()), HasSubstr(b.expect));
  }
  PolicyOptions ok;
  ok.sink_blocks = 0;
  ok.recent_tokens = 0;
  ok.alpha = 1.f;
  ok.distortion = {0.f, 0.f, 0.f, 1.f, 1.f};
  ok.uniform_tier = kInt8;
  EXPECT_TRUE(ValidatePolicyOptions(ok).ok());
}

// ------------------------------------------------------- protected blocks

TEST(CompressionPolicyTest, ProtectedBlocks) {
  PolicyOptions o;  // 1 sink block, 64 recent tokens
  // 100 positions in 7 blocks; the last 64 are [36, 100): blocks 2..6.
  std::vector<bool> got;
  for (int b = 0; b < 7; ++b) got.push_back(IsProtectedBlock(o, 100, 16, b));
  EXPECT_THAT(got, ::testing::ElementsAre(true, false, true, true, true, true, true));
  // Exactly on a block boundary: [32, 96) is blocks 2..5.
  got.clear();
  for (int b = 0; b < 6; ++b) got.push_back(IsProtectedBlock(o, 96, 16, b));
  EXPECT_THAT(got, ::testing::ElementsAre(true, false, true, true, true, true));

  o.sink_blocks = 0;
  o.recent_tokens = 0;
  // Without a window, only a partial last block is kept (it is being
  // written); a full one is not.
  EXPECT_FALSE(IsProtectedBlock(o, 96, 16, 5));
  EXPECT_TRUE(IsProtectedBlock(o, 97, 16, 6));
  EXPECT_FALSE(IsProtectedBlock(o, 97, 16, 5));
  o.recent_tokens = 1;
  EXPECT_TRUE(IsProtectedBlock(o, 96, 16, 5));
  EXPECT_FALSE(IsProtectedBlock(o, 96, 16, 4));
  o.sink_blocks = 3;
  EXPECT_TRUE(IsProtectedBlock(o, 96, 16, 2));
  EXPECT_FALSE(IsProtectedBlock(o, 96, 16, 3));
}

TEST(CompressionPolicyTest, AssignmentBytes) {
  const std::vector<KvTier> tiers = {kF16, kInt8, kInt4, kInt2, kEv, kF16};
  EXPECT_EQ(AssignmentBytes(tiers, kCosts), 2 * 1024u + 544 + 288 + 160);
  EXPECT_EQ(AssignmentBytes({}, kCosts), 0u);
}

// ------------------------------------------------------- the simple ones

TEST(CompressionPolicyTest, NoneChangesNothing) {
  auto p = Make("none");
  Case c = AllF16(5);
  c.current = {kF16, kInt4, kEv, kInt2, kF16};
  c.budget = 0;
  EXPECT_EQ(Apply(*p, c), c.current);
}

TEST(CompressionPolicyTest, StreamingKeepsTheNewestThatFit) {
  auto p = Make("streaming");  // sink 1, recent 64 tokens = 4 blocks
  Case c = AllF16(12);
  // Protected: block 0 and blocks 8..11; room for 3 more f16 blocks.
  c.budget = (5 + 3) * Cost(kF16) + Cost(kF16) - 1;
  std::vector<KvTier> want = {kF16, kEv, kEv, kEv, kEv, kF16, kF16, kF16, kF16, kF16, kF16, kF16};
  EXPECT_EQ(Apply(*p, c), want) << Show(Apply(*p, c));

  // An already-evicted block in the window costs nothing and stays evicted.
  c.current[6] = kEv;
  want = {kF16, kEv, kEv, kEv, kF16, kF16, kEv, kF16, kF16, kF16, kF16, kF16};
  EXPECT_EQ(Apply(*p, c), want) << Show(Apply(*p, c));

  // The window is contiguous: when block 5 does not fit, the older (and
  // cheaper) block 4 is not kept in its place.
  c.current = std::vector<KvTier>(12, kF16);
  c.current[4] = kInt2;
  c.budget = 5 * Cost(kF16) + 2 * Cost(kF16) + Cost(kInt2);
  want = {kF16, kEv, kEv, kEv, kEv, kEv, kF16, kF16, kF16, kF16, kF16, kF16};
  EXPECT_EQ(Apply(*p, c), want) << Show(Apply(*p, c));

  // Protected blocks alone exceed the budget: everything else evicted.
  c.budget = 2 * Cost(kF16);
  want = {kF16, kEv, kEv, kEv, kEv, kEv, kEv, kEv, kF16, kF16, kF16, kF16};
  EXPECT_EQ(Apply(*p, c), want) << Show(Apply(*p, c));
}

// Scores whose cumulative and latest orders disagree, to tell h2o from
// snapkv. Blocks 0 and 7 are protected (sink 1, recent 16).
Case RankedCase() {
  Case c = AllF16(8);
  c.scores = {
      Observed(0.9f, 0.90f, 50.0),  // 0, protected sink
      Observed(0.1f, 0.05f, 40.0),  // 1: heavy history, cold now
      Observed(0.3f, 0.60f, 10.0),  // 2: hot now
      Observed(0.2f, 0.10f, 30.0),  // 3
      Observed(0.2f, 0.50f, 5.0),   // 4
      Observed(0.2f, 0.20f, 20.0),  // 5
      Observed(0.2f, 0.30f, 1.0),   // 6
  };                                // block 7 unobserved (protected)
  c.budget = 5 * Cost(kF16);        // 2 protected + 3 kept
  return c;
}

PolicyOptions SmallWindow() {
  PolicyOptions o;
  o.recent_tokens = 16;
  return o;
}

TEST(CompressionPolicyTest, H2oKeepsHighestCumulative) {
  auto p = Make("h2o", SmallWindow());
  Case c = RankedCase();
  // Cumulative ranking of 1..6: 1 (40), 3 (30), 5 (20), 2, 4, 6.
  std::vector<KvTier> want = {kF16, kF16, kEv, kF16, kEv, kF16, kEv, kF16};
  EXPECT_EQ(Apply(*p, c), want) << Show(Apply(*p, c));
}

TEST(CompressionPolicyTest, SnapKvKeepsHighestLatest) {
  auto p = Make("snapkv", SmallWindow());
  Case c = RankedCase();
  // Latest ranking of 1..6: 2 (0.6), 4 (0.5), 6 (0.3), 5, 3, 1.
  std::vector<KvTier> want = {kF16, kEv, kF16, kEv, kF16, kEv, kF16, kF16};
  EXPECT_EQ(Apply(*p, c), want) << Show(Apply(*p, c));
}

TEST(CompressionPolicyTest, RankedEvictionTiesGoToTheNewerBlock) {
  for (std::string_view name : {"h2o", "snapkv"}) {
    auto p = Make(name, SmallWindow());
    Case c = AllF16(6);  // unobserved: all scores 0
    c.scores.resize(3, Observed(0.5f, 0.5f, 5.0));
    c.scores[1] = Observed(0.7f, 0.7f, 7.0);
    c.budget = 4 * Cost(kF16);  // 2 protected (0 and 5) + 2 kept
    // Block 1 ranks first, block 2 second; the unobserved 3 and 4 tie at 0.
    std::vector<KvTier> want = {kF16, kF16, kF16, kEv, kEv, kF16};
    EXPECT_EQ(Apply(*p, c), want) << name << ": " << Show(Apply(*p, c));
    c.budget = 5 * Cost(kF16);  // one more: of the tied 3 and 4, the newer
    want = {kF16, kF16, kF16, kEv, kF16, kF16};
    EXPECT_EQ(Apply(*p, c), want) << name << ": " << Show(Apply(*p, c));
  }
}

TEST(CompressionPolicyTest, QuantUniformTierChoice) {
  auto p = Make("quant-uniform", SmallWindow());
  Case c = AllF16(6);  // blocks 0 and 5 protected
  c.current[2] = kInt2;
  c.current[3] = kEv;
  const size_t fixed = 2 * Cost(kF16);
  // int4 fits: blocks 1 and 4 at int4, block 2 stays int2, 3 stays evicted.
  c.budget = fixed + 2 * Cost(kInt4) + Cost(kInt2);
  EXPECT_EQ(Apply(*p, c), (std::vector<KvTier>{kF16, kInt4, kInt2, kEv, kInt4, kF16}));
  // One byte less: int2 everywhere.
  c.budget -= 1;
  EXPECT_EQ(Apply(*p, c), (std::vector<KvTier>{kF16, kInt2, kInt2, kEv, kInt2, kF16}));
  // Even int2 misses: still int2, never evicted (the budget is exceeded).
  c.budget = fixed;
  EXPECT_EQ(Apply(*p, c), (std::vector<KvTier>{kF16, kInt2, kInt2, kEv, kInt2, kF16}));
  c.budget = 0;  // protected blocks alone miss it
  EXPECT_EQ(Apply(*p, c), (std::vector<KvTier>{kF16, kInt2, kInt2, kEv, kInt2, kF16}));

  // Preferring int8: falls to int4 before int2.
  PolicyOptions o = SmallWindow();
  o.uniform_tier = kInt8;
  auto p8 = Make("quant-uniform", o);
  c = AllF16(4);
  c.budget = 2 * Cost(kF16) + 2 * Cost(kInt8);
  EXPECT_EQ(Apply(*p8, c), (std::vector<KvTier>{kF16, kInt8, kInt8, kF16}));
  c.budget -= 1;
  EXPECT_EQ(Apply(*p8, c), (std::vector<KvTier>{kF16, kInt4, kInt4, kF16}));
}

// ------------------------------------------------------- attention-guided

TEST(CompressionPolicyTest, AttentionGuidedFullBudgetChangesNothing) {
  auto p = Make("attention-guided", SmallWindow());
  std::mt19937 rng(7);
  for (int iter = 0; iter < 200; ++iter) {
    const int n = 1 + static_cast<int>(rng() % 40);
    Case c = AllF16(n);
    for (int b = 0; b < n; ++b) {
      if (rng() % 3 == 0) c.current[b] = TierFromIndex(static_cast<int>(rng() % kNumKvTiers));
      if (rng() % 4 != 0 && b + 1 >= static_cast<int>(c.scores.size())) {
        c.scores.resize(b + 1);
        const float v = static_cast<float>(rng() % 1000) / 1000.f;
        c.scores[b] = Observed(v, v / 2, v * 10);
      }
    }
    c.budget = AssignmentBytes(c.current, c.costs);
    EXPECT_EQ(Apply(*p, c), c.current) << Show(c.current);
  }
}

TEST(CompressionPolicyTest, AttentionGuidedTinyBudgetEvictsLowestScoresFirst) {
  PolicyOptions o = SmallWindow();
  o.alpha = 1.f;  // C = ema
  auto p = Make("attention-guided", o);
  Case c = AllF16(10);  // blocks 0 and 9 protected
  const float ema[] = {0.f, 0.61f, 0.95f, 0.7f, 0.99f, 0.62f, 0.8f, 0.9f, 0.65f, 0.f};
  for (float e : ema) c.scores.push_back(Observed(e, 0.f, 0.0));
  // Room for three int2 blocks: with all scores in [0.6, 1) keeping a fourth
  // block at int2 is worth more than raising a kept one, so the three
  // highest (4, 2, 7) are kept at int2 and the rest evicted.
  c.budget = 2 * Cost(kF16) + 3 * Cost(kInt2) + 100;
  EXPECT_EQ(Apply(*p, c),
            (std::vector<KvTier>{kF16, kEv, kInt2, kEv, kInt2, kEv, kEv, kInt2, kEv, kF16}))
      << Show(Apply(*p, c));
  // Less than one int2 block beyond the protected ones: all evicted.
  c.budget = 2 * Cost(kF16) + Cost(kInt2) - 1;
  EXPECT_EQ(Apply(*p, c),
            (std::vector<KvTier>{kF16, kEv, kEv, kEv, kEv, kEv, kEv, kEv, kEv, kF16}));
}

TEST(CompressionPolicyTest, AttentionGuidedHighScoreGetsMoreBytes) {
  PolicyOptions o;
  o.sink_blocks = 0;
  o.recent_tokens = 0;
  auto p = Make("attention-guided", o);
  Case c = AllF16(2);
  c.scores = {Observed(1.f, 1.f, 0), Observed(0.05f, 0.05f, 0)};
  // Enough for f16 + int2, not for two f16 blocks.
  c.budget = Cost(kF16) + Cost(kInt8);
  const std::vector<KvTier> out = Apply(*p, c);
  EXPECT_LT(out[0], out[1]) << Show(out);
  EXPECT_NE(out[1], kEv) << Show(out);
  EXPECT_LE(AssignmentBytes(out, c.costs), c.budget);
}

TEST(CompressionPolicyTest, AttentionGuidedSpendsLeftoverOnUnobservedNewestFirst) {
  PolicyOptions o = SmallWindow();
  auto p = Make("attention-guided", o);
  Case c = AllF16(6);  // blocks 0 and 5 protected; 1..4 unobserved
  c.scores = {Observed(0.5f, 0.5f, 1.0)};
  c.budget = 2 * Cost(kF16) + 2 * Cost(kInt2);
  EXPECT_EQ(Apply(*p, c), (std::vector<KvTier>{kF16, kEv, kEv, kInt2, kInt2, kF16}));
  // Every unobserved block gets int2 before any is raised further.
  c.budget = 2 * Cost(kF16) + 4 * Cost(kInt2) + Cost(kInt4) - Cost(kInt2);
  EXPECT_EQ(Apply(*p, c), (std::vector<KvTier>{kF16, kInt2, kInt2, kInt2, kInt4, kF16}));
}

TEST(CompressionPolicyDeathTest, RejectsInputsBreakingTheContract) {
  auto p = Make("attention-guided");
  std::vector<KvTier> out;
  Case c = AllF16(3);
  c.current.pop_back();  // 48 positions need 3 blocks
  EXPECT_DEATH(p->Assign(c.input(), &out), "ceil");
  c = AllF16(3);
  c.scores.resize(4);
  EXPECT_DEATH(p->Assign(c.input(), &out), "more scores than blocks");
  c = AllF16(3);
  c.costs = {1024, 1024, 288, 160, 0};
  EXPECT_DEATH(p->Assign(c.input(), &out), "decrease strictly");
  c.costs = {1024, 544, 288, 160, 1};
  EXPECT_DEATH(p->Assign(c.input(), &out), "kEvicted");
  c = AllF16(3);
  c.pinned.assign(2, 1);
  EXPECT_DEATH(p->Assign(c.input(), &out), "pinned.size");
  LayerInput no_costs = AllF16(3).input();
  no_costs.costs = nullptr;
  EXPECT_DEATH(p->Assign(no_costs, &out), "costs");
}

TEST(CompressionPolicyTest, PinnedBlocksKeepTheirTierInEveryPolicy) {
  // Blocks 0 and 5 protected, 2 pinned (say, cached), with a high score
  // elsewhere so that a policy ignoring the pin would move it.
  Case c = AllF16(6);
  c.scores = {Observed(1, 1, 1), Observed(9, 9, 9), Observed(0, 0, 0),
              Observed(9, 9, 9), Observed(9, 9, 9), Observed(1, 1, 1)};
  c.pinned = {0, 0, 1, 0, 0, 0};
  c.budget = 3 * Cost(kF16);  // protected + pinned: nothing left for 1, 3, 4
  PolicyOptions o;
  o.recent_tokens = 16;
  for (std::string_view name : CompressionPolicyNames()) {
    SCOPED_TRACE(std::string(name));
    const std::vector<KvTier> out = Apply(*Make(name, o), c);
    EXPECT_EQ(out[2], kF16);
    if (name == "none") continue;
    for (int b : {1, 3, 4}) EXPECT_EQ(out[b], name == "quant-uniform" ? kInt2 : kEv) << b;
  }
}

// Random instances for the contract checks.
struct RandomCase {
  Case c;
  PolicyOptions options;
};

RandomCase MakeRandomCase(std::mt19937& rng, int max_blocks) {
  RandomCase r;
  Case& c = r.c;
  const int bts[] = {1, 4, 16};
  c.block_tokens = bts[rng() % 3];
  const int n = static_cast<int>(rng() % (max_blocks + 1));
  c.length = n == 0 ? 0 : n * c.block_tokens - static_cast<int>(rng() % c.block_tokens);
  for (int b = 0; b < n; ++b) {
    c.current.push_back(rng() % 10 < 7 ? kF16 : TierFromIndex(static_cast<int>(rng() % 5)));
  }
  const int n_scores = n == 0 ? 0 : static_cast<int>(rng() % (n + 1));
  for (int b = 0; b < n_scores; ++b) {
    BlockScore s;
    if (rng() % 5 != 0) {
      // Coarse values so that ties happen.
      s.ema = static_cast<float>(rng() % 8) / 8.f;
      s.last = static_cast<float>(rng() % 8) / 8.f;
      s.cumulative = static_cast<double>(rng() % 8);
      s.n_obs = 1 + static_cast<int>(rng() % 4);
    }
    c.scores.push_back(s);
  }
  if (rng() % 2 == 0) {
    // Random strictly decreasing costs.
    size_t v = 0;
    for (int t = kNumKvTiers - 2; t >= 0; --t) {
      v += 1 + rng() % 500;
      c.costs[t] = v;
    }
    c.costs[kNumKvTiers - 1] = 0;
  }
  std::vector<KvTier> all_f16(n, kF16);
  c.budget = static_cast<size_t>(rng() % (AssignmentBytes(all_f16, c.costs) * 11 / 10 + 1));
  r.options.sink_blocks = static_cast<int>(rng() % 3);
  const int recents[] = {0, 1, 16, 64};
  r.options.recent_tokens = recents[rng() % 4];
  r.options.alpha = static_cast<float>(rng() % 5) / 4.f;
  r.options.uniform_tier = TierFromIndex(1 + static_cast<int>(rng() % 3));
  if (rng() % 2 == 0) {
    // Random valid distortion: sorted values in [0, 1], ends fixed.
    std::array<float, kNumKvTiers> d;
    for (float& x : d) x = static_cast<float>(rng() % 11) / 10.f;
    std::sort(d.begin(), d.end());
    d[0] = 0.f;
    d[kNumKvTiers - 1] = 1.f;
    r.options.distortion = d;
  }
  return r;
}

TEST(CompressionPolicyTest, RandomisedContract) {
  std::mt19937 rng(12345);
  for (int iter = 0; iter < 3000; ++iter) {
    const RandomCase r = MakeRandomCase(rng, 48);
    Case c = r.c;
    const int n = static_cast<int>(c.current.size());
    // Every other case pins some blocks: they are held like protected ones.
    if (iter % 2 == 1) {
      c.pinned.resize(n);
      for (auto& p : c.pinned) p = rng() % 4 == 0;
    }
    size_t protected_bytes = 0;
    std::vector<bool> prot(n);
    for (int b = 0; b < n; ++b) {
      prot[b] = IsProtectedBlock(r.options, c.length, c.block_tokens, b) ||
                (!c.pinned.empty() && c.pinned[b]);
      if (prot[b]) protected_bytes += Cost(c.current[b], c.costs);
    }
    const bool feasible = protected_bytes <= c.budget;
    for (std::string_view name : CompressionPolicyNames()) {
      auto p = Make(name, r.options);
      const std::vector<KvTier> out = Apply(*p, c);
      SCOPED_TRACE(absl::StrCat(Sv(name), " iter ", iter, " current ", Show(c.current), " out ",
                                Show(out), " budget ", c.budget));
      ASSERT_EQ(out.size(), c.current.size());
      for (int b = 0; b < n; ++b) {
        EXPECT_GE(out[b], c.current[b]) << "block " << b;
        if (prot[b]) {
          EXPECT_EQ(out[b], c.current[b]) << "protected block " << b;
        }
      }
      const size_t bytes = AssignmentBytes(out, c.costs);
      if (name == "none") {
        EXPECT_EQ(out, c.current);
      } else if (name == "quant-uniform") {
        std::vector<KvTier> all_int2 = c.current;
        for (int b = 0; b < n; ++b) {
          if (!prot[b]) all_int2[b] = std::max(c.current[b], kInt2);
          // Never evicts, only ever one quantized tier.
          EXPECT_EQ(out[b] == kEv, c.current[b] == kEv) << "block " << b;
        }
        if (AssignmentBytes(all_int2, c.costs) <= c.budget) {
          EXPECT_LE(bytes, c.budget);
        }
        if (!feasible) {
          EXPECT_EQ(out, all_int2);
        }
      } else {
        if (feasible) {
          EXPECT_LE(bytes, c.budget);
        } else {
          for (int b = 0; b < n; ++b) {
            if (!prot[b]) {
              EXPECT_EQ(out[b], kEv) << "block " << b;
            }
          }
        }
        if (name != "attention-guided") {
          for (int b = 0; b < n; ++b) {
            EXPECT_TRUE(out[b] == c.current[b] || out[b] == kEv) << "eviction only, block " << b;
          }
        }
      }
    }
  }
}

TEST(CompressionPolicyTest, AttentionGuidedIsMonotoneInScore) {
  std::mt19937 rng(99);
  for (int iter = 0; iter < 1000; ++iter) {
    RandomCase r = MakeRandomCase(rng, 48);
    Case& c = r.c;
    std::fill(c.current.begin(), c.current.end(), kF16);
    auto p = Make("attention-guided", r.options);
    const std::vector<KvTier> out = Apply(*p, c);
    const int n = static_cast<int>(out.size());
    for (int a = 0; a < n; ++a) {
      if (IsProtectedBlock(r.options, c.length, c.block_tokens, a)) continue;
      const double ca = ScoreC(r.options, a < (int)c.scores.size() ? c.scores[a] : BlockScore{});
      for (int b = 0; b < n; ++b) {
        if (IsProtectedBlock(r.options, c.length, c.block_tokens, b)) continue;
        const double cb = ScoreC(r.options, b < (int)c.scores.size() ? c.scores[b] : BlockScore{});
        if (ca > cb) {
          EXPECT_LE(out[a], out[b]) << "iter " << iter << " blocks " << a << " (C " << ca
                                    << ") and " << b << " (C " << cb << "): " << Show(out);
        }
      }
    }
  }
}

// The best objective over every allowed assignment of the unprotected blocks.
double BruteForceBest(const PolicyOptions& o, const Case& c) {
  const int n = static_cast<int>(c.current.size());
  std::vector<KvTier> t = c.current;
  std::vector<int> free;
  for (int b = 0; b < n; ++b) {
    if (!IsProtectedBlock(o, c.length, c.block_tokens, b)) free.push_back(b);
  }
  double best = -1;
  auto rec = [&](auto&& self, size_t i) -> void {
    if (i == free.size()) {
      if (AssignmentBytes(t, c.costs) <= c.budget) best = std::max(best, Objective(o, c, t));
      return;
    }
    const int b = free[i];
    for (int k = TierIndex(c.current[b]); k < kNumKvTiers; ++k) {
      t[b] = TierFromIndex(k);
      self(self, i + 1);
    }
    t[b] = c.current[b];
  };
  rec(rec, 0);
  return best;
}

// Small random instances with finer scores than MakeRandomCase's and no
// recent window, so that most blocks are movable.
RandomCase MakeOptimisationCase(std::mt19937& rng, int max_blocks) {
  RandomCase r = MakeRandomCase(rng, max_blocks);
  r.options.recent_tokens = 0;
  r.options.sink_blocks = static_cast<int>(rng() % 2);
  Case& c = r.c;
  c.scores.resize(c.current.size());
  for (BlockScore& s : c.scores) {
    if (rng() % 6 == 0) continue;
    s = Observed(static_cast<float>(rng() % 1000) / 1000.f,
                 static_cast<float>(rng() % 1000) / 1000.f, 0);
  }
  return r;
}

// With at most 6 blocks every movable block is in the exactly solved core,
// so the result is optimal.
TEST(CompressionPolicyTest, AttentionGuidedMatchesBruteForceOnSmallInstances) {
  std::mt19937 rng(2024);
  int compared = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    RandomCase r = MakeOptimisationCase(rng, 6);
    r.options.score_floor = 0;  // the solver against the raw objective
    const double best = BruteForceBest(r.options, r.c);
    if (best < 0) continue;  // protected blocks miss the budget
    auto p = Make("attention-guided", r.options);
    const double got = Objective(r.options, r.c, Apply(*p, r.c));
    EXPECT_NEAR(got, best, 1e-9 * (1 + best)) << "iter " << iter;
    if (best > 0) ++compared;
  }
  EXPECT_GT(compared, 1000);
}

// The optimum by dynamic programming over the budget in bytes; for small
// integer costs.
double DpBest(const PolicyOptions& o, const Case& c) {
  size_t fixed_bytes = 0;
  double fixed_value = 0;
  std::vector<double> best(c.budget + 1, 0.0), next;  // [bytes] best value within bytes
  for (int b = 0; b < static_cast<int>(c.current.size()); ++b) {
    const double score = ScoreC(o, b < (int)c.scores.size() ? c.scores[b] : BlockScore{});
    const int floor = TierIndex(c.current[b]);
    if (IsProtectedBlock(o, c.length, c.block_tokens, b)) {
      fixed_bytes += c.costs[floor];
      fixed_value += score * (1.0 - o.distortion[floor]);
      continue;
    }
    next.assign(c.budget + 1, 0.0);
    for (size_t x = 0; x <= c.budget; ++x) {
      for (int t = floor; t < kNumKvTiers; ++t) {
        if (c.costs[t] <= x) {
          next[x] = std::max(next[x], best[x - c.costs[t]] + score * (1.0 - o.distortion[t]));
        }
      }
    }
    best.swap(next);
  }
  return fixed_bytes > c.budget ? -1 : best[c.budget - fixed_bytes] + fixed_value;
}

// Beyond the exact core the greedy is within a few percent of the optimum.
TEST(CompressionPolicyTest, AttentionGuidedNearOptimumOnMidSizeInstances) {
  std::mt19937 rng(77);
  double worst = 1;
  int compared = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    RandomCase r = MakeOptimisationCase(rng, 40);
    Case& c = r.c;
    if (iter % 2 == 0) {
      c.costs = {32, 17, 9, 5, 0};  // kCosts / 32
    } else {
      size_t v = 0;
      for (int t = kNumKvTiers - 2; t >= 0; --t) c.costs[t] = v += 1 + rng() % 20;
    }
    c.budget = rng() % (c.current.size() * c.costs[0] + 1);
    r.options.score_floor = 0;  // the solver against the raw objective
    const double best = DpBest(r.options, c);
    if (best <= 0) continue;
    auto p = Make("attention-guided", r.options);
    const std::vector<KvTier> out = Apply(*p, c);
    ASSERT_LE(AssignmentBytes(out, c.costs), c.budget);
    const double got = Objective(r.options, c, out);
    EXPECT_LE(got, best + 1e-9 * (1 + best));
    EXPECT_GE(got, 0.97 * best) << "iter " << iter;
    worst = std::min(worst, got / best);
    ++compared;
  }
  std::printf("mid-size instances: %d compared, worst objective / optimum %.4f\n", compared, worst);
  EXPECT_GT(compared, 700);
}

}  // namespace
}  // namespace kvserve::kvcache
