#include "kvcache/block_scores.h"

#include "gtest/gtest.h"

namespace kvserve::kvcache {
namespace {

TEST(BlockScoresTest, StartsEmpty) {
  BlockScores s(3, 0.5f);
  EXPECT_EQ(s.n_layers(), 3);
  EXPECT_FLOAT_EQ(s.ema_decay(), 0.5f);
  for (int l = 0; l < 3; ++l) {
    EXPECT_EQ(s.n_blocks(l), 0);
    EXPECT_TRUE(s.layer(l).empty());
  }
  s.EndStep();  // nothing pending: no effect
  EXPECT_EQ(s.n_blocks(0), 0);
}

TEST(BlockScoresTest, TwoStepsByHand) {
  BlockScores s(2, 0.75f);
  // Step 1: block 0 of layer 0 seen by two tiles, block 2 once; block 1 not.
  s.Observe(0, 0, 1.0, 4);
  s.Observe(0, 2, 0.5, 2);
  s.Observe(0, 0, 0.6, 4);
  s.EndStep();
  ASSERT_EQ(s.n_blocks(0), 3);
  EXPECT_EQ(s.n_blocks(1), 0);
  auto l0 = s.layer(0);
  // m = (1.0 + 0.6) / (4 + 4) = 0.2; first observation: ema = m.
  EXPECT_FLOAT_EQ(l0[0].ema, 0.2f);
  EXPECT_FLOAT_EQ(l0[0].last, 0.2f);
  EXPECT_DOUBLE_EQ(l0[0].cumulative, 1.6);
  EXPECT_EQ(l0[0].n_obs, 1);
  // Block 1 was never observed: default.
  EXPECT_EQ(l0[1].ema, 0.f);
  EXPECT_EQ(l0[1].last, 0.f);
  EXPECT_EQ(l0[1].cumulative, 0.0);
  EXPECT_EQ(l0[1].n_obs, 0);
  EXPECT_FLOAT_EQ(l0[2].ema, 0.25f);
  EXPECT_FLOAT_EQ(l0[2].last, 0.25f);
  EXPECT_DOUBLE_EQ(l0[2].cumulative, 0.5);
  EXPECT_EQ(l0[2].n_obs, 1);

  // Step 2: block 0 again (m = 0.6 / 6 = 0.1), block 1 for the first time
  // (m = 0.9 / 3 = 0.3), block 2 not at all, layer 1 block 1 once.
  s.Observe(0, 0, 0.3, 3);
  s.Observe(0, 1, 0.9, 3);
  s.Observe(1, 1, 0.2, 1);
  s.Observe(0, 0, 0.3, 3);
  s.EndStep();
  l0 = s.layer(0);
  ASSERT_EQ(l0.size(), 3u);
  EXPECT_FLOAT_EQ(l0[0].ema, 0.75f * 0.2f + 0.25f * 0.1f);  // 0.175
  EXPECT_FLOAT_EQ(l0[0].last, 0.1f);
  EXPECT_DOUBLE_EQ(l0[0].cumulative, 1.6 + 0.6);
  EXPECT_EQ(l0[0].n_obs, 2);
  EXPECT_FLOAT_EQ(l0[1].ema, 0.3f);  // first observation, not decayed from 0
  EXPECT_FLOAT_EQ(l0[1].last, 0.3f);
  EXPECT_DOUBLE_EQ(l0[1].cumulative, 0.9);
  EXPECT_EQ(l0[1].n_obs, 1);
  // Not observed in step 2: unchanged.
  EXPECT_FLOAT_EQ(l0[2].ema, 0.25f);
  EXPECT_FLOAT_EQ(l0[2].last, 0.25f);
  EXPECT_DOUBLE_EQ(l0[2].cumulative, 0.5);
  EXPECT_EQ(l0[2].n_obs, 1);
  auto l1 = s.layer(1);
  ASSERT_EQ(l1.size(), 2u);
  EXPECT_EQ(l1[0].n_obs, 0);
  EXPECT_FLOAT_EQ(l1[1].last, 0.2f);
  EXPECT_EQ(l1[1].n_obs, 1);

  // Step 3 with no observation of block 0: an empty step changes nothing.
  s.EndStep();
  EXPECT_EQ(s.layer(0)[0].n_obs, 2);
  EXPECT_FLOAT_EQ(s.layer(0)[0].ema, 0.175f);
}

TEST(BlockScoresTest, NormalisesByQueriesButCumulativeIsRaw) {
  // The same mass spread over twice the queries is half the mean fraction,
  // while the H2O statistic sums raw mass.
  BlockScores s(1, 0.f);
  s.Observe(0, 0, 2.0, 10);
  s.Observe(0, 1, 2.0, 20);
  s.EndStep();
  EXPECT_FLOAT_EQ(s.layer(0)[0].last, 0.2f);
  EXPECT_FLOAT_EQ(s.layer(0)[1].last, 0.1f);
  EXPECT_DOUBLE_EQ(s.layer(0)[0].cumulative, 2.0);
  EXPECT_DOUBLE_EQ(s.layer(0)[1].cumulative, 2.0);
}

TEST(BlockScoresTest, ZeroDecayTracksLast) {
  BlockScores s(1, 0.f);
  const double masses[] = {0.5, 0.1, 0.7};
  for (double m : masses) {
    s.Observe(0, 0, m, 1);
    s.EndStep();
    EXPECT_FLOAT_EQ(s.layer(0)[0].ema, static_cast<float>(m));
    EXPECT_FLOAT_EQ(s.layer(0)[0].last, static_cast<float>(m));
  }
  EXPECT_DOUBLE_EQ(s.layer(0)[0].cumulative, 1.3);
  EXPECT_EQ(s.layer(0)[0].n_obs, 3);
}

TEST(BlockScoresTest, PendingBlockReadsAsDefaultUntilEndStep) {
  BlockScores s(1, 0.5f);
  s.Observe(0, 4, 1.0, 2);
  ASSERT_EQ(s.n_blocks(0), 5);
  EXPECT_EQ(s.layer(0)[4].n_obs, 0);
  EXPECT_EQ(s.layer(0)[4].cumulative, 0.0);
  s.EndStep();
  EXPECT_EQ(s.layer(0)[4].n_obs, 1);
  EXPECT_FLOAT_EQ(s.layer(0)[4].last, 0.5f);
}

TEST(BlockScoresTest, ClearForgetsScoresAndPendingStep) {
  BlockScores s(2, 0.5f);
  s.Observe(0, 3, 1.0, 1);
  s.EndStep();
  s.Observe(1, 2, 1.0, 1);  // pending, dropped by Clear
  s.Clear();
  EXPECT_EQ(s.n_blocks(0), 0);
  EXPECT_EQ(s.n_blocks(1), 0);
  s.EndStep();
  EXPECT_EQ(s.n_blocks(1), 0);
  // Usable again afterwards, starting fresh.
  s.Observe(0, 0, 0.4, 2);
  s.EndStep();
  EXPECT_EQ(s.layer(0)[0].n_obs, 1);
  EXPECT_FLOAT_EQ(s.layer(0)[0].ema, 0.2f);
  EXPECT_DOUBLE_EQ(s.layer(0)[0].cumulative, 0.4);
}

TEST(BlockScoresDeathTest, RejectsMisuse) {
  EXPECT_DEATH(BlockScores(0, 0.5f), "layer");
  EXPECT_DEATH(BlockScores(1, 1.f), "ema_decay");
  EXPECT_DEATH(BlockScores(1, -0.1f), "ema_decay");
  BlockScores s(2, 0.5f);
  EXPECT_DEATH(s.Observe(2, 0, 1.0, 1), "layer");
  EXPECT_DEATH(s.Observe(0, -1, 1.0, 1), "block");
  EXPECT_DEATH(s.Observe(0, 0, 1.0, 0), "n_queries");
  EXPECT_DEATH(s.Observe(0, 0, -1.0, 1), "mass");
  EXPECT_DEATH(s.layer(5), "");
}

}  // namespace
}  // namespace kvserve::kvcache
