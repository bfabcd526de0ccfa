#include "engine/model/sampler.h"

#include <map>

#include "gtest/gtest.h"

namespace kvserve::model {
namespace {

TEST(SamplerTest, GreedyTakesArgmaxAndLowestIdOnTies) {
  const float logits[5] = {0.1f, 2.0f, -1.0f, 2.0f, 1.5f};
  Sampler s({});
  EXPECT_EQ(s.Sample(logits, 5), 1);
}

TEST(SamplerTest, SameSeedSameSequenceDifferentSeedDiffers) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = 0.01f * i;
  auto draw = [&](uint64_t seed) {
    Sampler s({1.0f, 0, 1.0f, 0.0f, seed});
    std::vector<int> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.Sample(logits.data(), 100));
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

TEST(SamplerTest, TopKOneIsGreedy) {
  const float logits[4] = {0.0f, 0.5f, 0.4f, 0.1f};
  Sampler s({5.0f, 1, 1.0f, 0.0f, 9});
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s.Sample(logits, 4), 1);
}

TEST(SamplerTest, TopPKeepsOnlyTheNucleus) {
  // Probabilities ~ {0.64, 0.24, 0.09, 0.03}: top_p 0.7 keeps two tokens.
  const float logits[4] = {3.0f, 2.0f, 1.0f, -0.1f};
  Sampler s({1.0f, 0, 0.7f, 0.0f, 5});
  std::map<int, int> seen;
  for (int i = 0; i < 400; ++i) ++seen[s.Sample(logits, 4)];
  EXPECT_GT(seen[0], 0);
  EXPECT_GT(seen[1], 0);
  EXPECT_EQ(seen.count(2), 0u);
  EXPECT_EQ(seen.count(3), 0u);
}

TEST(SamplerTest, MinPDropsUnlikelyTokens) {
  const float logits[3] = {2.0f, 1.9f, -5.0f};
  Sampler s({1.0f, 0, 1.0f, 0.1f, 5});
  for (int i = 0; i < 300; ++i) EXPECT_NE(s.Sample(logits, 3), 2);
}

TEST(SamplerTest, FrequenciesFollowTheDistribution) {
  // p = softmax({0, ln 3}) = {0.25, 0.75}.
  const float logits[2] = {0.0f, std::log(3.0f)};
  Sampler s({1.0f, 0, 1.0f, 0.0f, 123});
  int ones = 0;
  const int n = 4000;
  for (int i = 0; i < n; ++i) ones += s.Sample(logits, 2);
  // 4000 draws: standard deviation sqrt(4000*0.1875) ~ 27; allow 5 sigma.
  EXPECT_NEAR(ones, 3000, 140);
}

}  // namespace
}  // namespace kvserve::model
