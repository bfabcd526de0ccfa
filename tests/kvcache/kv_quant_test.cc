#include "kvcache/kv_quant.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/fp16.h"
#include "gtest/gtest.h"

namespace kvserve::kvcache {
namespace {

constexpr KvTier kQuantTiers[] = {KvTier::kInt8, KvTier::kInt4, KvTier::kInt2};
constexpr KvQuantIsa kVectorIsas[] = {KvQuantIsa::kAvx2, KvQuantIsa::kAvx512};

int Qmax(KvTier t) { return (1 << KvTierBits(t)) - 1; }
// The documented value group: 64 (not at int2), 32, 16 or 8 channels, the
// first that divides head_dim; else head_dim itself.
int Group(int head_dim, KvTier tier) {
  for (int g : {64, 32, 16, 8}) {
    if (g == 64 && tier == KvTier::kInt2) continue;
    if (head_dim % g == 0) return g;
  }
  return head_dim;
}

// One f16 unit: k [row_width][bt], v [bt][row_width].
struct Unit {
  KvShape shape;
  int bt = 16;
  std::vector<uint16_t> k, v;

  Unit(const KvShape& s, int block_tokens)
      : shape(s),
        bt(block_tokens),
        k(static_cast<size_t>(s.row_width()) * block_tokens),
        v(static_cast<size_t>(s.row_width()) * block_tokens) {}
  uint16_t& K(int c, int j) { return k[static_cast<size_t>(c) * bt + j]; }
  uint16_t& V(int j, int c) { return v[static_cast<size_t>(j) * shape.row_width() + c]; }
};

// Gaussian values; every fourth K channel is an outlier channel with 8x the
// spread and an offset, as post-RoPE keys have.
Unit RandomUnit(const KvShape& shape, int bt, uint32_t seed) {
  Unit u(shape, bt);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  for (int c = 0; c < shape.row_width(); ++c) {
    const bool outlier = c % 4 == 1;
    for (int j = 0; j < bt; ++j) {
      u.K(c, j) = Fp32ToFp16(outlier ? 3.0f + 8.0f * n01(rng) : n01(rng));
    }
  }
  for (auto& x : u.v) x = Fp32ToFp16(n01(rng));
  return u;
}

std::vector<uint8_t> Quantize(const Unit& u, KvTier tier, int n_valid) {
  std::vector<uint8_t> q(KvUnitBytes(u.shape, u.bt, tier), 0xAB);
  QuantizeKvUnit(u.shape, u.bt, tier, n_valid, u.k.data(), u.v.data(), q.data());
  return q;
}

Unit Dequantize(const KvShape& shape, int bt, KvTier tier, const std::vector<uint8_t>& q) {
  Unit out(shape, bt);
  DequantizeKvUnit(shape, bt, tier, q.data(), out.k.data(), out.v.data());
  return out;
}

bool IsFiniteF16(uint16_t h) { return (h & 0x7C00u) != 0x7C00u; }

// The bound a value of a group with range [lo, hi] must meet: half a
// quantization step, plus the f16 rounding of the scale (relative 2^-11,
// slack to 2^-8) and of the output (half an ulp of the value), plus one
// smallest f16 subnormal for tiny ranges.
float Bound(float lo, float hi, float x, int qmax) {
  return (hi - lo) / qmax / 2 * (1.0f + 1.0f / 256) + std::fabs(x) / 1024 + 6e-8f * qmax;
}

struct ErrorStats {
  double k_err2 = 0, k_sig2 = 0, v_err2 = 0, v_sig2 = 0;
  double KRel() const { return std::sqrt(k_err2 / k_sig2); }
  double VRel() const { return std::sqrt(v_err2 / v_sig2); }
};

// Checks every valid value of `in` against its dequantized `out` with the
// group bounds, and accumulates squared errors.
void CheckErrors(Unit& in, Unit& out, KvTier tier, int n_valid, ErrorStats* stats) {
  const KvShape& s = in.shape;
  const int qmax = Qmax(tier), g = Group(s.head_dim, tier);
  for (int c = 0; c < s.row_width(); ++c) {
    float lo = INFINITY, hi = -INFINITY;
    for (int j = 0; j < n_valid; ++j) {
      lo = std::min(lo, Fp16ToFp32(in.K(c, j)));
      hi = std::max(hi, Fp16ToFp32(in.K(c, j)));
    }
    for (int j = 0; j < in.bt; ++j) {
      ASSERT_TRUE(IsFiniteF16(out.K(c, j))) << "K channel " << c << " token " << j;
      if (j >= n_valid) continue;
      const float x = Fp16ToFp32(in.K(c, j)), y = Fp16ToFp32(out.K(c, j));
      ASSERT_LE(std::fabs(x - y), Bound(lo, hi, x, qmax))
          << KvTierName(tier) << " K channel " << c << " token " << j << " range [" << lo << ", "
          << hi << "]";
      stats->k_err2 += (x - y) * (x - y);
      stats->k_sig2 += x * x;
    }
  }
  for (int j = 0; j < in.bt; ++j) {
    for (int c0 = 0; c0 < s.row_width(); c0 += g) {
      float lo = INFINITY, hi = -INFINITY;
      for (int c = c0; c < c0 + g; ++c) {
        lo = std::min(lo, Fp16ToFp32(in.V(j, c)));
        hi = std::max(hi, Fp16ToFp32(in.V(j, c)));
      }
      for (int c = c0; c < c0 + g; ++c) {
        ASSERT_TRUE(IsFiniteF16(out.V(j, c))) << "V token " << j << " channel " << c;
        if (j >= n_valid) continue;
        const float x = Fp16ToFp32(in.V(j, c)), y = Fp16ToFp32(out.V(j, c));
        ASSERT_LE(std::fabs(x - y), Bound(lo, hi, x, qmax))
            << KvTierName(tier) << " V token " << j << " channel " << c << " range [" << lo << ", "
            << hi << "]";
        stats->v_err2 += (x - y) * (x - y);
        stats->v_sig2 += x * x;
      }
    }
  }
}

TEST(KvQuantTest, UnitBytes) {
  const KvShape smol{30, 3, 64};
  EXPECT_EQ(KvUnitBytes(smol, 16, KvTier::kF16), 12288u);
  // Per head: K codes 64 * 16 * b / 8, K params 64 * 4, V codes the same as
  // K, V params 16 tokens * (1 group of 64, or 2 of 32 at int2) * 4.
  EXPECT_EQ(KvUnitBytes(smol, 16, KvTier::kInt8), 7104u);  // 3 * 2368
  EXPECT_EQ(KvUnitBytes(smol, 16, KvTier::kInt4), 4032u);  // 3 * 1344
  EXPECT_EQ(KvUnitBytes(smol, 16, KvTier::kInt2), 2688u);  // 3 * 896
  EXPECT_EQ(KvUnitBytes(smol, 16, KvTier::kEvicted), 0u);

  for (int d : {8, 16, 24, 64, 128, 256}) {
    for (int h = 1; h <= 4; ++h) {
      for (int bt : {16, 32, 48, 64}) {
        const KvShape s{1, h, d};
        size_t prev = KvUnitBytes(s, bt, KvTier::kF16);
        for (int t = 1; t < kNumKvTiers; ++t) {
          const size_t bytes = KvUnitBytes(s, bt, TierFromIndex(t));
          EXPECT_EQ(bytes % 64, 0u) << d << " " << h << " " << bt << " " << t;
          EXPECT_LT(bytes, prev) << d << " " << h << " " << bt << " " << t;
          prev = bytes;
        }
      }
    }
  }
}

TEST(KvQuantTest, LayoutOffsets) {
  const KvQuantLayout l = MakeKvQuantLayout({1, 3, 64}, 16, KvTier::kInt4);
  EXPECT_EQ(l.bits, 4);
  EXPECT_EQ(l.group, 64);
  EXPECT_EQ(l.k_code_bytes, 8);
  EXPECT_EQ(l.v_code_bytes, 32);
  EXPECT_EQ(l.k_params_offset, 512u);
  EXPECT_EQ(l.v_codes_offset, 768u);
  EXPECT_EQ(l.v_params_offset, 1280u);
  EXPECT_EQ(l.head_bytes, 1344u);
  EXPECT_EQ(l.unit_bytes, 4032u);
  EXPECT_EQ(MakeKvQuantLayout({1, 3, 64}, 16, KvTier::kInt2).group, 32);
  EXPECT_EQ(MakeKvQuantLayout({1, 1, 96}, 16, KvTier::kInt4).group, 32);
  EXPECT_EQ(MakeKvQuantLayout({1, 1, 40}, 16, KvTier::kInt4).group, 8);
  EXPECT_EQ(MakeKvQuantLayout({1, 1, 8}, 32, KvTier::kInt2).group, 8);
}

TEST(KvQuantDeathTest, RejectsBadShapes) {
  EXPECT_DEATH(MakeKvQuantLayout({1, 2, 68}, 16, KvTier::kInt8), "multiple of 8");
  EXPECT_DEATH(MakeKvQuantLayout({1, 2, 64}, 24, KvTier::kInt8), "multiple of 16");
  EXPECT_DEATH(MakeKvQuantLayout({1, 2, 64}, 16, KvTier::kF16), "quantized tier");
}

// Decodes a unit by reading the byte layout as the header documents it,
// independently of the library's code.
void DecodeAsDocumented(const KvShape& s, int bt, KvTier tier, const std::vector<uint8_t>& q,
                        Unit* out) {
  const int b = KvTierBits(tier), D = s.head_dim, g = Group(D, tier);
  const size_t head_bytes =
      2 * static_cast<size_t>(D) * bt * b / 8 + 4 * D + 4 * static_cast<size_t>(bt) * (D / g);
  auto code = [&](size_t run, int e) {
    return (q[run + e * b / 8] >> (e * b % 8)) & ((1 << b) - 1);
  };
  auto f16 = [&](size_t at) { return Fp16ToFp32(static_cast<uint16_t>(q[at] | q[at + 1] << 8)); };
  for (int h = 0; h < s.n_kv_heads; ++h) {
    const size_t base = h * head_bytes;
    const size_t k_params = base + static_cast<size_t>(D) * bt * b / 8;
    const size_t v_codes = k_params + 4 * D;
    const size_t v_params = v_codes + static_cast<size_t>(bt) * D * b / 8;
    for (int i = 0; i < D; ++i) {
      const float scale = f16(k_params + 4 * i), min = f16(k_params + 4 * i + 2);
      for (int j = 0; j < bt; ++j) {
        const int c = code(base + static_cast<size_t>(i) * bt * b / 8, j);
        out->K(h * D + i, j) = Fp32ToFp16(std::fma(static_cast<float>(c), scale, min));
      }
    }
    for (int j = 0; j < bt; ++j) {
      for (int i = 0; i < D; ++i) {
        const size_t p = v_params + (static_cast<size_t>(j) * (D / g) + i / g) * 4;
        const int c = code(v_codes + static_cast<size_t>(j) * D * b / 8, i);
        out->V(j, h * D + i) = Fp32ToFp16(std::fma(static_cast<float>(c), f16(p), f16(p + 2)));
      }
    }
  }
  for (size_t at = s.n_kv_heads * head_bytes; at < q.size(); ++at) {
    EXPECT_EQ(q[at], 0) << "padding byte " << at;
  }
}

// (tier index, head_dim, n_kv_heads, block_tokens)
class KvQuantShapeTest : public testing::TestWithParam<std::tuple<int, int, int, int>> {
 protected:
  KvTier tier() const { return TierFromIndex(std::get<0>(GetParam())); }
  KvShape shape() const { return {1, std::get<2>(GetParam()), std::get<1>(GetParam())}; }
  int bt() const { return std::get<3>(GetParam()); }
};

TEST_P(KvQuantShapeTest, RoundTripWithinGroupBounds) {
  Unit in = RandomUnit(shape(), bt(), 7);
  Unit out = Dequantize(shape(), bt(), tier(), Quantize(in, tier(), bt()));
  ErrorStats stats;
  CheckErrors(in, out, tier(), bt(), &stats);
}

TEST_P(KvQuantShapeTest, MatchesDocumentedLayout) {
  Unit in = RandomUnit(shape(), bt(), 8);
  const std::vector<uint8_t> q = Quantize(in, tier(), bt() - 3);
  Unit ours = Dequantize(shape(), bt(), tier(), q);
  Unit documented(shape(), bt());
  DecodeAsDocumented(shape(), bt(), tier(), q, &documented);
  EXPECT_EQ(ours.k, documented.k);
  EXPECT_EQ(ours.v, documented.v);
}

TEST_P(KvQuantShapeTest, HeadDequantEqualsUnitSlice) {
  Unit in = RandomUnit(shape(), bt(), 9);
  const std::vector<uint8_t> q = Quantize(in, tier(), bt());
  Unit full = Dequantize(shape(), bt(), tier(), q);
  const int D = shape().head_dim;
  std::vector<uint16_t> k(static_cast<size_t>(D) * bt()), v(k.size());
  for (int h = 0; h < shape().n_kv_heads; ++h) {
    DequantizeKvHead(shape(), bt(), tier(), q.data(), h, k.data(), v.data());
    for (int i = 0; i < D; ++i) {
      for (int j = 0; j < bt(); ++j) {
        ASSERT_EQ(k[i * bt() + j], full.K(h * D + i, j)) << "head " << h;
        ASSERT_EQ(v[j * D + i], full.V(j, h * D + i)) << "head " << h;
      }
    }
  }
}

// Data that exercises the corner cases: constant groups, a partial block,
// extreme ranges, non-finite inputs.
Unit NastyUnit(const KvShape& shape, int bt, uint32_t seed) {
  Unit u = RandomUnit(shape, bt, seed);
  const int rw = shape.row_width();
  for (int j = 0; j < bt; ++j) {
    u.K(0, j) = Fp32ToFp16(0.75f);                            // constant channel
    if (rw > 2) u.K(2, j) = (j % 2) ? 0x7BFF : 0xFBFF;        // +-65504
    if (rw > 3) u.K(3, j) = Fp32ToFp16(1e-6f * (j % 3));      // subnormal range
    u.V(j, rw - 1) = (j % 5 == 0) ? 0x7E00 : u.V(j, rw - 1);  // NaN
    // Minimum 0 reached as both +0 and -0, in order-sensitive patterns.
    if (rw > 5) u.K(5, j) = (j % 3 == 0) ? 0x0000 : (j % 3 == 1) ? 0x8000 : 0x3C00;
    u.V(j, 2) = (j % 2) ? 0x8000 : 0x0000;
    u.V(j, 0) = (j % 2) ? 0x0000 : 0x8000;
  }
  u.K(1, 3) = 0x7C00;                                             // +inf
  u.K(1, 4) = 0xFC00;                                             // -inf
  for (int c = 0; c < std::min(rw, 64); ++c) u.V(1, c) = 0x3C00;  // constant 1.0 groups
  return u;
}

TEST_P(KvQuantShapeTest, VectorKernelsMatchScalarBitForBit) {
  const KvShape s = shape();
  const int D = s.head_dim;
  int compared = 0;
  for (KvQuantIsa isa : kVectorIsas) {
    if (!KvQuantIsaUsable(isa, D)) continue;
    for (int n_valid : {bt(), bt() - 1, 9, 1}) {
      for (uint32_t seed : {1u, 2u}) {
        Unit in = seed == 1 ? RandomUnit(s, bt(), 11) : NastyUnit(s, bt(), 12);
        const size_t bytes = KvUnitBytes(s, bt(), tier());
        std::vector<uint8_t> q_ref(bytes, 0xCD), q_vec(bytes, 0x11);
        QuantizeKvUnitWithIsa(KvQuantIsa::kScalar, s, bt(), tier(), n_valid, in.k.data(),
                              in.v.data(), q_ref.data());
        QuantizeKvUnitWithIsa(isa, s, bt(), tier(), n_valid, in.k.data(), in.v.data(),
                              q_vec.data());
        ASSERT_EQ(q_ref, q_vec) << "isa " << static_cast<int>(isa) << " n_valid " << n_valid;
        std::vector<uint16_t> k_ref(static_cast<size_t>(D) * bt()), v_ref(k_ref.size());
        std::vector<uint16_t> k_vec(k_ref.size(), 1), v_vec(k_ref.size(), 1);
        for (int h = 0; h < s.n_kv_heads; ++h) {
          DequantizeKvHeadWithIsa(KvQuantIsa::kScalar, s, bt(), tier(), q_ref.data(), h,
                                  k_ref.data(), v_ref.data());
          DequantizeKvHeadWithIsa(isa, s, bt(), tier(), q_ref.data(), h, k_vec.data(),
                                  v_vec.data());
          ASSERT_EQ(k_ref, k_vec) << "isa " << static_cast<int>(isa) << " head " << h;
          ASSERT_EQ(v_ref, v_vec) << "isa " << static_cast<int>(isa) << " head " << h;
          ++compared;
        }
      }
    }
  }
  if (compared == 0) GTEST_SKIP() << "no vector kernel usable on this CPU for head_dim " << D;
}

TEST_P(KvQuantShapeTest, NastyInputsDecodeFinite) {
  const int n_valid = bt() - 2;
  Unit in = NastyUnit(shape(), bt(), 5);
  Unit out = Dequantize(shape(), bt(), tier(), Quantize(in, tier(), n_valid));
  for (uint16_t x : out.k) ASSERT_TRUE(IsFiniteF16(x));
  for (uint16_t x : out.v) ASSERT_TRUE(IsFiniteF16(x));
  // Constant groups are exact; the +-65504 channel keeps its ends within
  // the bound.
  for (int j = 0; j < n_valid; ++j) EXPECT_EQ(out.K(0, j), Fp32ToFp16(0.75f)) << j;
  for (int c = 0; c < std::min(shape().row_width(), 64); ++c) EXPECT_EQ(out.V(1, c), 0x3C00);
  if (shape().row_width() > 2) {
    for (int j = 0; j < n_valid; ++j) {
      const float x = Fp16ToFp32(in.K(2, j)), y = Fp16ToFp32(out.K(2, j));
      EXPECT_LE(std::fabs(x - y), Bound(-65504, 65504, x, Qmax(tier()))) << j;
    }
  }
  // Non-finite inputs: NaN reads as 0 and +-inf as +-65504.
  const float inf_pos = Fp16ToFp32(out.K(1, 3)), inf_neg = Fp16ToFp32(out.K(1, 4));
  EXPECT_GT(inf_pos, 30000.0f);
  EXPECT_LT(inf_neg, -30000.0f);
}

std::string ShapeName(const testing::TestParamInfo<std::tuple<int, int, int, int>>& info) {
  return std::string(KvTierName(TierFromIndex(std::get<0>(info.param)))) + "_d" +
         std::to_string(std::get<1>(info.param)) + "_h" + std::to_string(std::get<2>(info.param)) +
         "_bt" + std::to_string(std::get<3>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Shapes, KvQuantShapeTest,
                         testing::Combine(testing::Values(1, 2, 3), testing::Values(8, 16, 64, 128),
                                          testing::Values(1, 2, 3, 4), testing::Values(16, 32)),
                         ShapeName);

TEST(KvQuantTest, ConstantGroupsDecodeExactly) {
  const KvShape s{1, 2, 64};
  for (KvTier tier : kQuantTiers) {
    for (uint16_t value : {uint16_t{0x0000}, uint16_t{0x3E00}, uint16_t{0xC49A}, uint16_t{0x7BFF},
                           uint16_t{0xFBFF}, uint16_t{0x0001}}) {
      Unit in(s, 16);
      std::fill(in.k.begin(), in.k.end(), value);
      std::fill(in.v.begin(), in.v.end(), value);
      Unit out = Dequantize(s, 16, tier, Quantize(in, tier, 16));
      EXPECT_EQ(out.k, in.k) << KvTierName(tier) << " " << value;
      EXPECT_EQ(out.v, in.v) << KvTierName(tier) << " " << value;
    }
  }
}

TEST(KvQuantTest, PartialBlockIgnoresInvalidTokens) {
  const KvShape s{1, 3, 64};
  constexpr int kBt = 32;
  for (KvTier tier : kQuantTiers) {
    for (int n_valid : {1, 5, 16, 31}) {
      Unit clean = RandomUnit(s, kBt, 21);
      for (int j = n_valid; j < kBt; ++j) {
        for (int c = 0; c < s.row_width(); ++c) clean.K(c, j) = clean.V(j, c) = 0;
      }
      Unit dirty = clean;
      for (int j = n_valid; j < kBt; ++j) {
        for (int c = 0; c < s.row_width(); ++c) {
          dirty.K(c, j) = Fp32ToFp16(60000.0f);
          dirty.V(j, c) = Fp32ToFp16(-50000.0f + c);
        }
      }
      const std::vector<uint8_t> q = Quantize(dirty, tier, n_valid);
      // The invalid tokens change no byte, whichever kernel quantizes.
      for (KvQuantIsa isa : {KvQuantIsa::kScalar, KvQuantIsa::kAvx2}) {
        if (!KvQuantIsaUsable(isa, s.head_dim)) continue;
        std::vector<uint8_t> q_clean(q.size());
        QuantizeKvUnitWithIsa(isa, s, kBt, tier, n_valid, clean.k.data(), clean.v.data(),
                              q_clean.data());
        EXPECT_EQ(q, q_clean) << KvTierName(tier) << " " << n_valid;
      }
      Unit out = Dequantize(s, kBt, tier, q);
      ErrorStats stats;
      CheckErrors(dirty, out, tier, n_valid, &stats);  // bounds from valid tokens only
      if (n_valid > 1) {
        EXPECT_LT(stats.KRel(), tier == KvTier::kInt2 ? 0.6 : 0.15);
      }
    }
  }
}

// Measures relative RMS error on Gaussian data (plus outlier key channels)
// for the SmolLM2 shape, and prints it for choosing distortion constants.
TEST(KvQuantTest, RelativeRmsErrorIsOrdered) {
  const KvShape s{1, 3, 64};
  double k_prev = 0, v_prev = 0;
  for (KvTier tier : kQuantTiers) {
    ErrorStats stats;
    for (uint32_t seed = 0; seed < 20; ++seed) {
      Unit in = RandomUnit(s, 16, 100 + seed);
      Unit out = Dequantize(s, 16, tier, Quantize(in, tier, 16));
      CheckErrors(in, out, tier, 16, &stats);
    }
    std::printf("[ rms ] %-5s relative RMS error: K %.5f  V %.5f  (K+V %.5f)\n",
                std::string(KvTierName(tier)).c_str(), stats.KRel(), stats.VRel(),
                std::sqrt((stats.k_err2 + stats.v_err2) / (stats.k_sig2 + stats.v_sig2)));
    EXPECT_GT(stats.KRel(), k_prev) << KvTierName(tier);
    EXPECT_GT(stats.VRel(), v_prev) << KvTierName(tier);
    k_prev = stats.KRel();
    v_prev = stats.VRel();
    if (tier == KvTier::kInt8) {
      EXPECT_LT(stats.KRel(), 0.01);
      EXPECT_LT(stats.VRel(), 0.01);
    } else if (tier == KvTier::kInt4) {
      EXPECT_LT(stats.KRel(), 0.12);
      EXPECT_LT(stats.VRel(), 0.12);
    } else {
      EXPECT_LT(stats.KRel(), 0.5);
      EXPECT_LT(stats.VRel(), 0.5);
    }
  }
}

// Prints the per-call cost of the kernels (no assertion on it).
TEST(KvQuantTest, ReportsKernelSpeed) {
  const KvShape s{1, 3, 64};
  const Unit in = RandomUnit(s, 16, 3);
  std::vector<uint16_t> k(64 * 16), v(64 * 16);
  for (KvTier tier : kQuantTiers) {
    const std::vector<uint8_t> q = Quantize(in, tier, 16);
    for (KvQuantIsa isa : {KvQuantIsa::kScalar, KvQuantIsa::kAvx2, KvQuantIsa::kAvx512}) {
      if (!KvQuantIsaUsable(isa, s.head_dim)) continue;
      constexpr int kIters = 3000;
      const auto t0 = std::chrono::steady_clock::now();
      for (int it = 0; it < kIters; ++it) {
        DequantizeKvHeadWithIsa(isa, s, 16, tier, q.data(), it % 3, k.data(), v.data());
      }
      const auto t1 = std::chrono::steady_clock::now();
      std::vector<uint8_t> dst(q.size());
      constexpr int kQIters = 300;
      for (int it = 0; it < kQIters; ++it) {
        QuantizeKvUnitWithIsa(isa, s, 16, tier, 16, in.k.data(), in.v.data(), dst.data());
      }
      const auto t2 = std::chrono::steady_clock::now();
      std::printf(
          "[ speed ] %-5s isa %d: DequantizeKvHead(d64, bt16) %.0f ns/call, "
          "QuantizeKvUnit(3 heads) %.0f ns/call\n",
          std::string(KvTierName(tier)).c_str(), static_cast<int>(isa),
          std::chrono::duration<double, std::nano>(t1 - t0).count() / kIters,
          std::chrono::duration<double, std::nano>(t2 - t1).count() / kQIters);
      // The timed calls computed the right thing.
      std::vector<uint16_t> k_ref(k.size()), v_ref(v.size());
      DequantizeKvHeadWithIsa(KvQuantIsa::kScalar, s, 16, tier, q.data(), (kIters - 1) % 3,
                              k_ref.data(), v_ref.data());
      EXPECT_EQ(k, k_ref);
      EXPECT_EQ(v, v_ref);
      EXPECT_EQ(dst, q);
    }
  }
}

}  // namespace
}  // namespace kvserve::kvcache
