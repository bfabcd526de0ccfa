#include "kvcache/kv_compressor.h"

#include <random>
#include <vector>

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

}  // namespace
}  // namespace kvserve::kvcache
