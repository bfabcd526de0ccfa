#include "engine/model/ops.h"

#include <cmath>

#include "gtest/gtest.h"

namespace kvserve::model {
namespace {

ModelConfig RopeConfig(RopeStyle style) {
  ModelConfig c;
  c.head_dim = 8;
  c.rope_dim = 8;
  c.rope_base = 10000.0f;
  c.rope_style = style;
  return c;
}

TEST(RopeTest, NormalStyleRotatesAdjacentPairs) {
  Rope rope(RopeConfig(RopeStyle::kNormal), {});
  float x[8] = {1, 0, 1, 0, 1, 0, 1, 0};
  rope.Apply(x, 1, 3);
  for (int i = 0; i < 4; ++i) {
    const double th = 3 * std::pow(10000.0, -2.0 * i / 8);
    EXPECT_NEAR(x[2 * i], std::cos(th), 1e-6);
    EXPECT_NEAR(x[2 * i + 1], std::sin(th), 1e-6);
  }
}

TEST(RopeTest, NeoxStyleRotatesHalves) {
  Rope rope(RopeConfig(RopeStyle::kNeox), {});
  float x[8] = {1, 1, 1, 1, 0, 0, 0, 0};
  rope.Apply(x, 1, 5);
  for (int i = 0; i < 4; ++i) {
    const double th = 5 * std::pow(10000.0, -2.0 * i / 8);
    EXPECT_NEAR(x[i], std::cos(th), 1e-6);
    EXPECT_NEAR(x[i + 4], std::sin(th), 1e-6);
  }
}

TEST(RopeTest, PositionZeroIsIdentityAndNormIsKept) {
  Rope rope(RopeConfig(RopeStyle::kNormal), {});
  float x[16] = {1, 2, 3, 4, 5, 6, 7, 8, -1, -2, -3, -4, -5, -6, -7, -8};
  float y[16];
  std::copy(x, x + 16, y);
  rope.Apply(y, 2, 0);
  for (int i = 0; i < 16; ++i) EXPECT_FLOAT_EQ(x[i], y[i]);
  rope.Apply(y, 2, 1234);
  double n0 = 0, n1 = 0;
  for (int i = 0; i < 16; ++i) n0 += x[i] * x[i], n1 += y[i] * y[i];
  EXPECT_NEAR(n0, n1, 1e-3);
}

TEST(RopeTest, FrequencyFactorsSlowRotation) {
  ModelConfig c = RopeConfig(RopeStyle::kNormal);
  Rope rope(c, {1, 1, 1, 4});
  float x[8] = {0, 0, 0, 0, 0, 0, 1, 0};
  rope.Apply(x, 1, 100);
  const double th = 100 * std::pow(10000.0, -6.0 / 8) / 4;
  EXPECT_NEAR(x[6], std::cos(th), 1e-6);
  EXPECT_NEAR(x[7], std::sin(th), 1e-6);
}

TEST(RmsNormTest, MatchesDefinition) {
  const float x[4] = {1, -2, 3, -4};
  const float w[4] = {1, 0.5f, 2, 1};
  float y[4];
  RmsNorm(x, w, 4, 1e-5f, y);
  const double r = 1.0 / std::sqrt((1 + 4 + 9 + 16) / 4.0 + 1e-5);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[i], x[i] * r * w[i], 1e-6);
}

TEST(SiluMulTest, MatchesDefinition) {
  const float g[3] = {-2, 0, 3};
  const float u[3] = {1, 5, -2};
  float y[3];
  SiluMul(g, u, 3, y);
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(y[i], g[i] / (1 + std::exp(-g[i])) * u[i], 1e-6);
}

}  // namespace
}  // namespace kvserve::model
