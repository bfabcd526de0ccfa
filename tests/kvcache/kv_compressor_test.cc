#include "kvcache/kv_compressor.h"

#include <climits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace kvserve::kvcache {
namespace {

// Two layers, 2 KV heads of 32: every tier has its own size.
constexpr KvShape kShape{2, 2, 32};

std::unique_ptr<PagedKvCache> MakeCache(int blocks) {
  auto kv = PagedKvCache::Create(kShape, blocks * BlockPool::BytesPerBlock(kShape, 16));
  EXPECT_TRUE(kv.ok()) << kv.status();
  return *std::move(kv);
}

void Fill(PagedKvCache* kv, int seq, int len, uint64_t seed) {
  ASSERT_TRUE(kv->Reserve(seq, len));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> k(static_cast<size_t>(len) * kShape.row_width()), v(k.size());
  for (auto& x : k) x = d(rng);
  for (auto& x : v) x = d(rng);
  for (int l = 0; l < kShape.n_layers; ++l) kv->Write(seq, l, 0, len, k.data(), v.data());
}

// Observations of one step: block b of every layer gets mass weights[b].
void Observe(KvCompressor* c, int seq, const std::vector<double>& weights) {
  for (int l = 0; l < kShape.n_layers; ++l) {
    for (int b = 0; b < static_cast<int>(weights.size()); ++b) {
      c->OnBlockMass(seq, l, b, weights[b], 4);
    }
  }
}

TEST(KvCompressorTest, ValidatesSpecsAndOptions) {
  EXPECT_TRUE(ValidateCompressionSpec({"attention-guided", 0.25}).ok());
  EXPECT_TRUE(ValidateCompressionSpec({"none", 1.0}).ok());
  EXPECT_FALSE(ValidateCompressionSpec({"attention-guided", 0}).ok());
  EXPECT_FALSE(ValidateCompressionSpec({"h2o", 1.5}).ok());
  const absl::Status bad = ValidateCompressionSpec({"lru", 0.5});
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("attention-guided"), std::string::npos) << bad;
  KvCompressorOptions o;
  EXPECT_TRUE(ValidateCompressorOptions(o).ok());
  o.beta = 1;
  EXPECT_FALSE(ValidateCompressorOptions(o).ok());
  o = {};
  o.ema_decay = 1;
  EXPECT_FALSE(ValidateCompressorOptions(o).ok());
  o = {};
  o.observation_window = 0;
  EXPECT_FALSE(ValidateCompressorOptions(o).ok());
  o = {};
  o.policy.alpha = 2;
  EXPECT_FALSE(ValidateCompressorOptions(o).ok());
}

TEST(KvCompressorTest, HoldsEachPolicyToItsRatioAndFreesPoolBytes) {
  for (std::string_view name : CompressionPolicyNames()) {
    SCOPED_TRACE(std::string(name));
    auto kv = MakeCache(64);
    auto c = *KvCompressor::Create(kv.get(), {});
    const int len = 40 * 16;  // 40 blocks: 1 sink + 4 recent protected
    Fill(kv.get(), 7, len, 1);
    const size_t full = kv->SequenceBytes(7);
    EXPECT_EQ(full, kv->SequenceUncompressedBytes(7));
    const int free_before = kv->pool().n_free();
    c->AddSequence(7, {std::string(name), 0.25});
    std::vector<double> w(40);
    for (int b = 0; b < 40; ++b) w[b] = (b * 37 % 11) + 0.5;
    Observe(c.get(), 7, w);
    const int ran[] = {7};
    c->EndStep(ran);
    const size_t bytes = kv->SequenceBytes(7);
    const size_t f16_unit = kv->pool().unit_bytes(KvTier::kF16);
    const size_t protected_bytes = 5 * f16_unit * kShape.n_layers;
    const size_t target =
        protected_bytes + static_cast<size_t>(0.25 * 35 * f16_unit) * kShape.n_layers;
    if (name == "none") {
      EXPECT_EQ(bytes, full);
      EXPECT_EQ(c->counters().assessments, 0);
    } else if (name == "quant-uniform") {
      EXPECT_LT(bytes, full);  // int2 may miss a 1/4 target: the baseline's nature
      EXPECT_EQ(kv->pool().units(KvTier::kEvicted), 0);
    } else {
      EXPECT_LE(bytes, target);
      EXPECT_GT(bytes, target * 8 / 10);  // it uses its budget, not much less
      // The bytes went back to the pool: more f16 blocks can be had.
      EXPECT_GT(kv->pool().n_free(), free_before);
    }
    EXPECT_EQ(kv->pool().used_bytes(), bytes);
    // The sink and the recent window are untouched.
    for (int l = 0; l < kShape.n_layers; ++l) {
      EXPECT_EQ(kv->Tier(7, l, 0), KvTier::kF16);
      for (int b = 36; b < 40; ++b) EXPECT_EQ(kv->Tier(7, l, b), KvTier::kF16);
    }
    EXPECT_TRUE(kv->CheckInvariants().ok()) << kv->CheckInvariants();
    // Not re-assessed until the sequence grows by a block.
    const int64_t n = c->counters().assessments;
    c->EndStep(ran);
    EXPECT_EQ(c->counters().assessments, n);
    c->RemoveSequence(7);
    kv->Free(7);
    EXPECT_EQ(kv->pool().used_bytes(), 0u);
    EXPECT_EQ(kv->pool().n_free(), 64);
  }
}

TEST(KvCompressorTest, AttentionGuidedKeepsTheBlocksThatGetAttention) {
  auto kv = MakeCache(64);
  auto c = *KvCompressor::Create(kv.get(), {});
  Fill(kv.get(), 1, 40 * 16, 2);
  c->AddSequence(1, {"attention-guided", 0.125});
  std::vector<double> w(40, 0.01);
  w[10] = w[20] = 3.0;  // two heavy hitters
  Observe(c.get(), 1, w);
  const int ran[] = {1};
  c->EndStep(ran);
  for (int l = 0; l < kShape.n_layers; ++l) {
    for (int b = 1; b < 36; ++b) {
      if (b == 10 || b == 20) continue;
      EXPECT_GE(kv->Tier(1, l, b), kv->Tier(1, l, 10)) << "layer " << l << " block " << b;
    }
    EXPECT_NE(kv->Tier(1, l, 10), KvTier::kEvicted);
    EXPECT_NE(kv->Tier(1, l, 20), KvTier::kEvicted);
  }
  EXPECT_GT(c->counters().moved_to[TierIndex(KvTier::kEvicted)], 0);
}

TEST(KvCompressorTest, ReclaimCompressesHarderUntilBlocksAreFree) {
  auto kv = MakeCache(48);
  auto c = *KvCompressor::Create(kv.get(), {});
  Fill(kv.get(), 1, 20 * 16, 3);
  Fill(kv.get(), 2, 20 * 16, 4);
  Fill(kv.get(), 3, 8 * 16, 5);
  c->AddSequence(1, {"attention-guided", 1.0});
  c->AddSequence(2, {"h2o", 1.0});
  c->AddSequence(3, {"none", 1.0});
  const int ran[] = {1, 2, 3};
  c->EndStep(ran);
  EXPECT_EQ(kv->pool().n_free(), 0);  // ratio 1: nothing to do
  EXPECT_TRUE(c->Reclaim(10));
  EXPECT_GE(kv->pool().n_free(), 10);
  EXPECT_LT(c->EffectiveRatio(1), 1.0);
  EXPECT_LT(c->EffectiveRatio(2), 1.0);
  EXPECT_EQ(c->EffectiveRatio(3), 1.0);  // "none" is never touched
  EXPECT_EQ(kv->SequenceBytes(3), kv->SequenceUncompressedBytes(3));
  EXPECT_GT(c->counters().reclaim_rounds, 0);
  // More than compression can ever free: every compressing sequence ends
  // at min_ratio and Reclaim says no.
  EXPECT_FALSE(c->Reclaim(48));
  EXPECT_DOUBLE_EQ(c->EffectiveRatio(1), c->options().min_ratio);
  EXPECT_TRUE(kv->CheckInvariants().ok()) << kv->CheckInvariants();
}

// ----------------------------------------------- cached and shared blocks

std::vector<int32_t> Prompt(int n) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = i * 7 + 1;
  return t;
}

// Units of seq's blocks [first, last) in `tier`, over all layers.
int CountTier(const PagedKvCache& kv, int seq, int first, int last, KvTier tier) {
  int n = 0;
  for (int l = 0; l < kShape.n_layers; ++l) {
    for (int b = first; b < last; ++b) n += kv.Tier(seq, l, b) == tier;
  }
  return n;
}

TEST(KvCompressorTest, CachedBlocksStayF16UntilPressureTakesThemOutOfTheIndex) {
  auto kv = MakeCache(64);
  auto c = *KvCompressor::Create(kv.get(), {});
  Fill(kv.get(), 1, 40 * 16, 1);
  ASSERT_EQ(kv->IndexPrefix(1, "s", Prompt(40 * 16)), 40);
  c->AddSequence(1, {"attention-guided", 0.25});
  std::vector<double> w(40);
  for (int b = 0; b < 40; ++b) w[b] = (b * 37 % 11) + 0.5;
  Observe(c.get(), 1, w);
  const int ran[] = {1};
  c->EndStep(ran);
  // The index promises exact KV: every block is pinned.
  EXPECT_EQ(kv->SequenceBytes(1), kv->SequenceUncompressedBytes(1));
  EXPECT_EQ(c->counters().assessments, 1);
  for (int t = 1; t < kNumKvTiers; ++t) EXPECT_EQ(c->counters().moved_to[t], 0);
  // Under pressure the blocks that must shrink leave the index (with the
  // rest of their chain) and compress; the sink block stays cached.
  const int free_before = kv->pool().n_free();
  EXPECT_TRUE(c->Reclaim(free_before + 10));
  EXPECT_GE(kv->pool().n_free(), free_before + 10);
  EXPECT_GT(c->counters().unindexed, 0);
  EXPECT_EQ(kv->prefix_cache().n_indexed(), 1);
  EXPECT_TRUE(kv->IsIndexed(1, 0));
  EXPECT_LT(kv->SequenceBytes(1), kv->SequenceUncompressedBytes(1));
  EXPECT_TRUE(kv->CheckInvariants().ok()) << kv->CheckInvariants();
}

// The case: two questions over one cached document. The document
// stays cached and f16 while memory lasts; under pressure both requests'
// plans agree, the blocks leave the cache and compress once, for both.
TEST(KvCompressorTest, ADocumentSharedByTwoRequestsCompressesJointlyUnderPressure) {
  auto kv = MakeCache(40);
  auto c = *KvCompressor::Create(kv.get(), {});
  const std::vector<int32_t> doc = Prompt(20 * 16);
  Fill(kv.get(), 1, 20 * 16, 8);
  ASSERT_EQ(kv->IndexPrefix(1, "t\0ag", doc), 20);
  kv->Free(1);
  for (int seq : {2, 3}) {
    std::vector<int32_t> blocks;
    ASSERT_EQ(kv->MatchPrefix("t\0ag", doc, 20 * 16, &blocks), 20 * 16);
    kv->AttachPrefix(seq, blocks);
    ASSERT_TRUE(kv->Reserve(seq, 22 * 16));
    std::vector<float> x(static_cast<size_t>(32) * kShape.row_width(), 0.1f * seq);
    for (int l = 0; l < kShape.n_layers; ++l) kv->Write(seq, l, 20 * 16, 32, x.data(), x.data());
    c->AddSequence(seq, {"attention-guided", 0.25});
    std::vector<double> w(22, 1.0);
    w[seq * 3] = 20;
    Observe(c.get(), seq, w);
  }
  const int ran[] = {2, 3};
  c->EndStep(ran);
  EXPECT_EQ(kv->prefix_cache().n_indexed(), 20);
  EXPECT_EQ(kv->pool().units(KvTier::kF16), 24 * kShape.n_layers);
  const int free_before = kv->pool().n_free();
  EXPECT_TRUE(c->Reclaim(free_before + 8));
  EXPECT_GT(c->counters().unindexed, 0);
  EXPECT_GT(c->counters().shared_moved, 0);
  EXPECT_LT(kv->prefix_cache().n_indexed(), 20);
  for (int l = 0; l < kShape.n_layers; ++l) {
    for (int b = 0; b < 20; ++b) EXPECT_EQ(kv->Tier(2, l, b), kv->Tier(3, l, b));
  }
  EXPECT_EQ(kv->SequenceBytes(2), kv->SequenceBytes(3));
  EXPECT_LT(kv->SequenceBytes(2), kv->SequenceUncompressedBytes(2));
  EXPECT_TRUE(kv->CheckInvariants().ok()) << kv->CheckInvariants();
  for (int seq : {2, 3}) {
    c->RemoveSequence(seq);
    kv->Free(seq);
  }
  kv->EvictUnused(INT_MAX);
  EXPECT_EQ(kv->pool().n_used(), 0);
}

TEST(KvCompressorTest, ReclaimEvictsUnusedCachedBlocksBeforeCompressingAnyone) {
  auto kv = MakeCache(48);
  auto c = *KvCompressor::Create(kv.get(), {});
  Fill(kv.get(), 1, 20 * 16, 1);
  ASSERT_EQ(kv->IndexPrefix(1, "s", Prompt(20 * 16)), 20);
  kv->Free(1);
  Fill(kv.get(), 2, 20 * 16, 2);
  c->AddSequence(2, {"attention-guided", 1.0});
  const int ran[] = {2};
  c->EndStep(ran);
  ASSERT_EQ(kv->pool().n_free(), 8);
  ASSERT_EQ(kv->n_evictable(), 20);
  EXPECT_TRUE(c->Reclaim(18));
  EXPECT_EQ(kv->pool().n_free(), 18);
  EXPECT_EQ(kv->n_evictable(), 10);
  EXPECT_EQ(c->counters().cached_evicted, 10);
  EXPECT_EQ(c->counters().reclaim_rounds, 0);
  EXPECT_EQ(c->EffectiveRatio(2), 1.0);
  // More than the cache holds: all of it goes, then compression.
  EXPECT_TRUE(c->Reclaim(34));
  EXPECT_EQ(kv->n_evictable(), 0);
  EXPECT_LT(c->EffectiveRatio(2), 1.0);
  EXPECT_TRUE(kv->CheckInvariants().ok()) << kv->CheckInvariants();
}

TEST(KvCompressorTest, ReclaimForASubsetTightensOnlyThoseSequences) {
  auto kv = MakeCache(48);
  auto c = *KvCompressor::Create(kv.get(), {});
  Fill(kv.get(), 1, 20 * 16, 3);
  Fill(kv.get(), 2, 20 * 16, 4);
  c->AddSequence(1, {"attention-guided", 1.0});
  c->AddSequence(2, {"attention-guided", 1.0});
  const int ran[] = {1, 2};
  c->EndStep(ran);
  const std::vector<int> only = {2};
  EXPECT_TRUE(c->Reclaim(16, only));
  EXPECT_GE(kv->pool().n_free(), 16);
  EXPECT_EQ(c->EffectiveRatio(1), 1.0);
  EXPECT_EQ(kv->SequenceBytes(1), kv->SequenceUncompressedBytes(1));
  EXPECT_LT(c->EffectiveRatio(2), 1.0);
  // A budget of bytes instead of free blocks (a tenant's).
  const size_t budget = kv->SequenceUncompressedBytes(1) / 3;
  const std::vector<int> first = {1};
  EXPECT_TRUE(c->ReclaimUntil(first, [&] { return kv->SequenceBytes(1) <= budget; }));
  EXPECT_LE(kv->SequenceBytes(1), budget);
  // Out of reach: every listed sequence ends at min_ratio, and it says so.
  EXPECT_FALSE(c->ReclaimUntil(first, [] { return false; }));
  EXPECT_DOUBLE_EQ(c->EffectiveRatio(1), c->options().min_ratio);
  EXPECT_TRUE(kv->CheckInvariants().ok()) << kv->CheckInvariants();
}

// Two holders with different policies: h2o only evicts, quant-uniform only
// quantizes (to int2 at this ratio). A shared block moves once both have
// planned it, to the higher precision of the two: never evicted, int2
// where h2o would drop it, f16 where h2o keeps it.
TEST(KvCompressorTest, SharedBlocksMoveOnlyWhenEveryHolderAgreesToTheHighestPrecisionWished) {
  auto kv = MakeCache(64);
  auto c = *KvCompressor::Create(kv.get(), {});
  Fill(kv.get(), 1, 20 * 16, 5);
  kv->Fork(1, 2);
  c->AddSequence(1, {"h2o", 0.25});
  c->AddSequence(2, {"quant-uniform", 0.25});
  std::vector<double> w(20, 0.1);
  w[5] = w[9] = 5.0;  // what h2o keeps
  Observe(c.get(), 1, w);
  const int first[] = {1};
  c->EndStep(first);
  // Only one holder has a plan: nothing moves.
  EXPECT_EQ(kv->SequenceBytes(1), kv->SequenceUncompressedBytes(1));
  EXPECT_EQ(c->counters().shared_moved, 0);
  const int second[] = {2};
  c->EndStep(second);
  EXPECT_GT(c->counters().shared_moved, 0);
  EXPECT_EQ(kv->pool().units(KvTier::kEvicted), 0);
  for (int l = 0; l < kShape.n_layers; ++l) {
    EXPECT_EQ(kv->Tier(1, l, 5), KvTier::kF16);
    EXPECT_EQ(kv->Tier(1, l, 9), KvTier::kF16);
    for (int b = 0; b < 20; ++b) {
      EXPECT_EQ(kv->Tier(1, l, b), kv->Tier(2, l, b));  // one block, both holders
      EXPECT_TRUE(kv->Tier(1, l, b) == KvTier::kF16 || kv->Tier(1, l, b) == KvTier::kInt2) << b;
    }
  }
  // Blocks 1..15 less the three h2o keeps (5, 9 and the newest, 15).
  EXPECT_EQ(CountTier(*kv, 1, 0, 20, KvTier::kInt2), 12 * kShape.n_layers);
  EXPECT_EQ(kv->SequenceBytes(1), kv->SequenceBytes(2));
  EXPECT_TRUE(kv->CheckInvariants().ok()) << kv->CheckInvariants();
  c->RemoveSequence(1);
  c->RemoveSequence(2);
  kv->Free(1);
  kv->Free(2);
  EXPECT_EQ(kv->pool().n_used(), 0);
}

// A holder that never asked for compression (policy "none", or not tracked
// at all) pins the blocks it shares, even under pressure; the other
// holder's own blocks still compress, held to its ratio.
TEST(KvCompressorTest, SharedBlocksNeverMoveUnderAHolderThatDidNotAsk) {
  for (bool tracked : {true, false}) {
    SCOPED_TRACE(tracked);
    auto kv = MakeCache(64);
    auto c = *KvCompressor::Create(kv.get(), {});
    Fill(kv.get(), 1, 20 * 16, 6);
    kv->Fork(1, 2);
    ASSERT_TRUE(kv->Reserve(1, 40 * 16));
    std::vector<float> x(static_cast<size_t>(20 * 16) * kShape.row_width(), 0.25f);
    for (int l = 0; l < kShape.n_layers; ++l) kv->Write(1, l, 20 * 16, 20 * 16, x.data(), x.data());
    c->AddSequence(1, {"attention-guided", 0.25});
    if (tracked) c->AddSequence(2, {"none", 1.0});
    Observe(c.get(), 1, std::vector<double>(40, 1.0));
    const int ran[] = {1, 2};
    c->EndStep(ran);
    EXPECT_FALSE(c->Reclaim(64));
    EXPECT_EQ(CountTier(*kv, 1, 0, 20, KvTier::kF16), 20 * kShape.n_layers);
    EXPECT_EQ(kv->SequenceBytes(2), kv->SequenceUncompressedBytes(2));
    // Its private blocks outside the recent window did shrink.
    EXPECT_LT(CountTier(*kv, 1, 20, 36, KvTier::kF16), 16 * kShape.n_layers);
    EXPECT_EQ(c->counters().shared_moved, 0);
    EXPECT_TRUE(kv->CheckInvariants().ok()) << kv->CheckInvariants();
  }
}

// Each holder plans a shared block with the attention of all its holders.
// Sequence 2 (40 blocks, 0..19 shared with sequence 1) values its private
// blocks above the shared ones; when sequence 1 gives shared block 10 much
// attention, sequence 2's h2o plan keeps block 10 too and so keeps one
// private block fewer.
TEST(KvCompressorTest, SharedBlockScoresSumTheAttentionOfEveryHolder) {
  int private_evicted[2] = {0, 0};
  for (int heavy = 0; heavy < 2; ++heavy) {
    SCOPED_TRACE(heavy);
    auto kv = MakeCache(64);
    auto c = *KvCompressor::Create(kv.get(), {});
    Fill(kv.get(), 1, 20 * 16, 7);
    kv->Fork(1, 2);
    ASSERT_TRUE(kv->Reserve(2, 40 * 16));
    std::vector<float> x(static_cast<size_t>(20 * 16) * kShape.row_width(), 0.5f);
    for (int l = 0; l < kShape.n_layers; ++l) kv->Write(2, l, 20 * 16, 20 * 16, x.data(), x.data());
    c->AddSequence(1, {"h2o", 0.25});
    c->AddSequence(2, {"h2o", 0.25});
    std::vector<double> w2(40, 1.0);
    for (int b = 0; b < 20; ++b) w2[b] = 0.5;
    Observe(c.get(), 2, w2);
    if (heavy) {
      std::vector<double> w1(20, 0.0);
      w1[10] = 1000;
      Observe(c.get(), 1, w1);
    }
    const int ran[] = {1, 2};
    c->EndStep(ran);
    private_evicted[heavy] = CountTier(*kv, 2, 20, 40, KvTier::kEvicted);
    for (int l = 0; l < kShape.n_layers; ++l) {
      // Both evict a shared block only where both planned to.
      EXPECT_EQ(kv->Tier(2, l, 3), KvTier::kEvicted);
      EXPECT_EQ(kv->Tier(2, l, 10), heavy ? KvTier::kF16 : KvTier::kEvicted);
      // Sequence 1's newest unprotected blocks, which it keeps.
      EXPECT_EQ(kv->Tier(2, l, 15), KvTier::kF16);
    }
    EXPECT_TRUE(kv->CheckInvariants().ok()) << kv->CheckInvariants();
  }
  EXPECT_EQ(private_evicted[0], 8 * kShape.n_layers);
  EXPECT_EQ(private_evicted[1], 9 * kShape.n_layers);
}

// An engine-like loop with the prefix cache, forks and compression all on:
// requests of two tenants and three specs over a few documents, prefill in
// chunks, decode, Reclaim under pressure, preemption and aborts. The cache's
// accounts hold after every step and every block is free at idle.
TEST(KvCompressorTest, RandomizedSharingAndCompressionKeepAccountsAndEndIdle) {
  const KvCompressionSpec specs[] = {{"none", 1.0}, {"attention-guided", 0.5}, {"h2o", 0.25}};
  for (uint64_t seed : {11u, 12u, 13u}) {
    SCOPED_TRACE(seed);
    std::mt19937_64 rng(seed);
    constexpr int kBlocks = 32;
    auto kv = MakeCache(kBlocks);
    KvCompressorOptions options;
    options.policy.recent_tokens = 16;
    auto c = *KvCompressor::Create(kv.get(), options);
    struct Request {
      std::string salt;
      KvCompressionSpec spec;
      std::vector<int32_t> tokens;
      int prompt_len = 0;
      int computed = 0;
    };
    std::map<int, Request> running;
    int next_seq = 0;
    int64_t forks = 0, reclaims = 0;
    auto write = [&](int seq, int from, int to) {
      std::vector<float> x(static_cast<size_t>(to - from) * kShape.row_width());
      std::normal_distribution<float> d;
      for (auto& v : x) v = d(rng);
      for (int l = 0; l < kShape.n_layers; ++l)
        kv->Write(seq, l, from, to - from, x.data(), x.data());
      std::vector<double> w((to + 15) / 16);
      for (auto& m : w) m = static_cast<double>(rng() % 100) / 10;
      Observe(c.get(), seq, w);
    };
    for (int step = 0; step < 600; ++step) {
      std::vector<int> ran;
      const int op = static_cast<int>(rng() % 12);
      if (op < 3) {
        Request r;
        const int tenant = static_cast<int>(rng() % 2);
        const int spec = static_cast<int>(rng() % 3);
        r.spec = specs[spec];
        r.salt = absl::StrCat("tenant", tenant, std::string(1, '\0'), spec);
        r.tokens = Prompt(16 * static_cast<int>(2 + rng() % 4));
        for (int i = 0; i < 5; ++i) r.tokens.push_back(static_cast<int32_t>(rng() % 3));
        r.prompt_len = static_cast<int>(r.tokens.size());
        std::vector<int32_t> blocks;
        const int matched = kv->MatchPrefix(r.salt, r.tokens, r.prompt_len - 1, &blocks);
        const int need = (r.prompt_len + 15) / 16 - matched / 16;
        if (need + kv->EvictableAmong(blocks) <= kv->n_available()) {
          const int seq = next_seq++;
          kv->AttachPrefix(seq, blocks);
          ASSERT_TRUE(kv->Reserve(seq, r.prompt_len));
          c->AddSequence(seq, r.spec);
          r.computed = matched;
          running[seq] = std::move(r);
        }
      } else if (op < 11 && !running.empty()) {
        auto it = std::next(running.begin(), static_cast<long>(rng() % running.size()));
        const int seq = it->first;
        Request& r = it->second;
        if (r.computed < r.prompt_len) {
          const int n = std::min(r.prompt_len - r.computed, 1 + static_cast<int>(rng() % 40));
          write(seq, r.computed, r.computed + n);
          r.computed += n;
          if (r.computed == r.prompt_len) {
            // Most prompts are cached before their first assessment
            // (pinned), some after it (then only their f16 start).
            if (rng() % 3 != 0) kv->IndexPrefix(seq, r.salt, r.tokens);
            ran.push_back(seq);
            c->EndStep(ran);
            ran.clear();
            kv->IndexPrefix(seq, r.salt, r.tokens);
          }
        } else if (rng() % 8 == 0 && kv->n_available() > 0) {
          // A second choice of the same request.
          const int child = next_seq++;
          kv->Fork(seq, child);
          c->AddSequence(child, r.spec);
          Request copy = r;
          running[child] = std::move(copy);
          ++forks;
        } else {
          if (!kv->CanAllocate(seq, r.computed + 1)) {
            ++reclaims;
            c->Reclaim(kv->pool().n_free() + kv->BlocksNeeded(seq, r.computed + 1));
          }
          if (kv->CanAllocate(seq, r.computed + 1)) {
            ASSERT_TRUE(kv->Reserve(seq, r.computed + 1));
            r.tokens.push_back(static_cast<int32_t>(rng() % 50));
            write(seq, r.computed, r.computed + 1);
            ++r.computed;
            ran.push_back(seq);
          } else {
            c->RemoveSequence(seq);  // preempted
            kv->Free(seq);
            running.erase(it);
          }
        }
      } else if (!running.empty()) {
        auto it = std::next(running.begin(), static_cast<long>(rng() % running.size()));
        c->RemoveSequence(it->first);
        kv->Free(it->first);
        running.erase(it);
      }
      c->EndStep(ran);
      const absl::Status st = kv->CheckInvariants();
      ASSERT_TRUE(st.ok()) << st << "\n" << kv->DebugString();
    }
    EXPECT_GT(forks, 0);
    EXPECT_GT(reclaims, 0);
    EXPECT_GT(kv->prefix_cache().counters().hits, 0);
    EXPECT_GT(c->counters().shared_moved + c->counters().unindexed, 0);
    for (const auto& [seq, r] : running) {
      c->RemoveSequence(seq);
      kv->Free(seq);
    }
    EXPECT_EQ(kv->pool().n_used(), kv->prefix_cache().n_indexed());
    kv->EvictUnused(INT_MAX);
    EXPECT_EQ(kv->pool().n_used(), 0);
    EXPECT_EQ(kv->pool().used_bytes(), 0u);
    EXPECT_EQ(kv->pool().n_free(), kBlocks);
    EXPECT_TRUE(kv->CheckInvariants().ok());
  }
}

}  // namespace
}  // namespace kvserve::kvcache
