#include "engine/gguf/dequantize.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/fp16.h"
#include "engine/gguf/ggml_type.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/gguf/gguf_test_util.h"

namespace kvserve::gguf {
namespace {

using ::kvserve::gguf::testing::PutHalf;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

std::vector<float> Dequant(GgmlType t, const std::vector<uint8_t>& bytes, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n), -12345.0f);
  absl::Status s = DequantizeRow(t, bytes.data(), out.data(), n);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

// ---------------------------------------------------------------------------
// Plain float types.

TEST(GgufDequantizeTest, F32IsACopy) {
  const std::vector<float> v = {1.0f, -2.5f, 0.0f, 1e-30f};
  std::vector<uint8_t> bytes(v.size() * 4);
  std::memcpy(bytes.data(), v.data(), bytes.size());
  EXPECT_THAT(Dequant(GgmlType::kF32, bytes, 4), ElementsAreArray(v));
}

TEST(GgufDequantizeTest, F16AndBF16KnownBitPatterns) {
  // 0x3C00 = 1.0, 0xC000 = -2.0, 0x3555 ~ 1/3, 0x0001 = 2^-24 (subnormal).
  const uint16_t f16[] = {0x3C00, 0xC000, 0x3555, 0x0001};
  std::vector<uint8_t> bytes(sizeof f16);
  std::memcpy(bytes.data(), f16, sizeof f16);
  const std::vector<float> h = Dequant(GgmlType::kF16, bytes, 4);
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_EQ(h[1], -2.0f);
  EXPECT_EQ(h[2], 0.333251953125f);
  EXPECT_EQ(h[3], std::ldexp(1.0f, -24));

  // bf16 is the top half of an f32: 0x3F80 = 1.0, 0xC040 = -3.0, 0x4049 ~ 3.14.
  const uint16_t bf16[] = {0x3F80, 0xC040, 0x4049, 0x0000};
  std::memcpy(bytes.data(), bf16, sizeof bf16);
  const std::vector<float> b = Dequant(GgmlType::kBF16, bytes, 4);
  EXPECT_EQ(b[0], 1.0f);
  EXPECT_EQ(b[1], -3.0f);
  EXPECT_EQ(b[2], 3.140625f);
  EXPECT_EQ(b[3], 0.0f);
}

// ---------------------------------------------------------------------------
// 32-value blocks, built by hand. Value j < 16 lives in the low nibble of
// qs[j], value j + 16 in its high nibble.

TEST(GgufDequantizeTest, Q4_0) {
  std::vector<uint8_t> b(18);
  PutHalf(b.data(), 0.5f);
  for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const std::vector<float> y = Dequant(GgmlType::kQ4_0, b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], (j - 8) * 0.5f) << j;
    EXPECT_EQ(y[j + 16], (15 - j - 8) * 0.5f) << j;
  }
}

TEST(GgufDequantizeTest, Q4_1WithKnownScaleAndMin) {
  std::vector<uint8_t> b(20);
  PutHalf(b.data(), 0.5f);
  PutHalf(b.data() + 2, -1.0f);
  for (int j = 0; j < 16; ++j) b[4 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const std::vector<float> y = Dequant(GgmlType::kQ4_1, b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], j * 0.5f - 1.0f) << j;              // -1.0, -0.5, ... 6.5
    EXPECT_EQ(y[j + 16], (15 - j) * 0.5f - 1.0f) << j;  // 6.5 ... -1.0
  }
}

// Packs 32 five-bit values: low nibbles as in Q4, bit 4 of value j into bit j
// of the little-endian u32 qh.
void PackQ5(const int* q, uint8_t* qh, uint8_t* qs) {
  uint32_t h = 0;
  for (int j = 0; j < 16; ++j) {
    qs[j] = static_cast<uint8_t>((q[j] & 15) | ((q[j + 16] & 15) << 4));
  }
  for (int j = 0; j < 32; ++j) h |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
  std::memcpy(qh, &h, 4);
}

TEST(GgufDequantizeTest, Q5_0) {
  int q[32];
  for (int j = 0; j < 32; ++j) q[j] = (j * 13 + 5) % 32;  // a permutation of 0..31
  std::vector<uint8_t> b(22);
  PutHalf(b.data(), 0.25f);
  PackQ5(q, b.data() + 2, b.data() + 6);
  const std::vector<float> y = Dequant(GgmlType::kQ5_0, b, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], (q[j] - 16) * 0.25f) << j;
}

TEST(GgufDequantizeTest, Q5_1) {
  int q[32];
  for (int j = 0; j < 32; ++j) q[j] = (j * 7 + 3) % 32;
  std::vector<uint8_t> b(24);
  PutHalf(b.data(), 0.125f);
  PutHalf(b.data() + 2, 2.0f);
  PackQ5(q, b.data() + 4, b.data() + 8);
  const std::vector<float> y = Dequant(GgmlType::kQ5_1, b, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], q[j] * 0.125f + 2.0f) << j;
}

TEST(GgufDequantizeTest, Q8_0TwoBlocks) {
  std::vector<uint8_t> b(68);
  PutHalf(b.data(), 0.125f);
  PutHalf(b.data() + 34, -2.0f);
  for (int j = 0; j < 32; ++j) {
    b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j * 8 - 128));  // -128 .. 120
    b[36 + j] = static_cast<uint8_t>(static_cast<int8_t>(j - 16));
  }
  const std::vector<float> y = Dequant(GgmlType::kQ8_0, b, 64);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(y[j], (j * 8 - 128) * 0.125f) << j;
    EXPECT_EQ(y[32 + j], (j - 16) * -2.0f) << j;
  }
}

// ---------------------------------------------------------------------------
// K-quant super-blocks of 256 values, packed by hand from the GGML layouts
// with distinct scales per sub-block so that a misplaced field shows.

TEST(GgufDequantizeTest, Q2_K) {
  const float d = 0.5f, dmin = 0.25f;
  int sc[16], mn[16], q[256];
  for (int i = 0; i < 16; ++i) {
    sc[i] = (i * 5 + 1) % 16;
    mn[i] = (i * 3 + 2) % 16;
  }
  for (int v = 0; v < 256; ++v) q[v] = (v * 7 + v / 16) % 4;
  std::vector<uint8_t> b(84, 0);
  for (int i = 0; i < 16; ++i) b[i] = static_cast<uint8_t>(sc[i] | (mn[i] << 4));
  for (int v = 0; v < 256; ++v) {
    // 128-value halves use 32 bytes each; 32-value groups take 2-bit slots.
    const int half = v / 128, group = (v % 128) / 32, r = v % 32;
    b[16 + 32 * half + r] |= static_cast<uint8_t>(q[v] << (2 * group));
  }
  PutHalf(b.data() + 80, d);
  PutHalf(b.data() + 82, dmin);
  const std::vector<float> y = Dequant(GgmlType::kQ2_K, b, 256);
  for (int v = 0; v < 256; ++v) {
    EXPECT_EQ(y[v], d * sc[v / 16] * q[v] - dmin * mn[v / 16]) << v;
  }
}

TEST(GgufDequantizeTest, Q3_K) {
  const float d = 0.25f;
  int scale[16], q[256];
  for (int i = 0; i < 16; ++i) scale[i] = (i * 11 + 3) % 64 - 32;  // -32..31
  for (int v = 0; v < 256; ++v) q[v] = (v * 5 + v / 32) % 8 - 4;   // -4..3
  std::vector<uint8_t> b(110, 0);
  uint8_t* hmask = b.data();
  uint8_t* qs = b.data() + 32;
  uint8_t* scales = b.data() + 96;
  for (int i = 0; i < 16; ++i) {
    const int s6 = scale[i] + 32;
    scales[i % 8] |= static_cast<uint8_t>((s6 & 15) << (i < 8 ? 0 : 4));
    scales[8 + i % 4] |= static_cast<uint8_t>((s6 >> 4) << (2 * (i / 4)));
  }
  for (int v = 0; v < 256; ++v) {
    const int half = v / 128, group = (v % 128) / 32, r = v % 32;
    const int high = q[v] >= 0 ? 1 : 0;  // a clear high bit means "subtract 4"
    const int low = high ? q[v] : q[v] + 4;
    qs[32 * half + r] |= static_cast<uint8_t>(low << (2 * group));
    hmask[r] |= static_cast<uint8_t>(high << (v / 32));
  }
  PutHalf(b.data() + 108, d);
  const std::vector<float> y = Dequant(GgmlType::kQ3_K, b, 256);
  for (int v = 0; v < 256; ++v) EXPECT_EQ(y[v], d * scale[v / 16] * q[v]) << v;
}

// The 12-byte scale/min packing shared by Q4_K and Q5_K: eight 6-bit scales
// and mins; sub-blocks 4..7 keep their low nibbles in bytes 8..11 and their
// top two bits in the spare top bits of bytes 0..7.
void PackScaleMinK4(const int* sc, const int* mn, uint8_t* s) {
  std::memset(s, 0, 12);
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>(sc[j]);
    s[j + 4] = static_cast<uint8_t>(mn[j]);
  }
  for (int j = 4; j < 8; ++j) {
    s[j + 4] = static_cast<uint8_t>((sc[j] & 15) | ((mn[j] & 15) << 4));
    s[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
    s[j] |= static_cast<uint8_t>((mn[j] >> 4) << 6);
  }
}

TEST(GgufDequantizeTest, Q4_K) {
  const float d = 0.5f, dmin = 0.125f;
  int sc[8], mn[8], q[256];
  for (int i = 0; i < 8; ++i) {
    sc[i] = (i * 23 + 7) % 64;
    mn[i] = (i * 37 + 50) % 64;
  }
  for (int v = 0; v < 256; ++v) q[v] = (v * 3 + v / 32) % 16;
  std::vector<uint8_t> b(144, 0);
  PutHalf(b.data(), d);
  PutHalf(b.data() + 2, dmin);
  PackScaleMinK4(sc, mn, b.data() + 4);
  for (int v = 0; v < 256; ++v) {
    // 64-value chunks share 32 bytes: low nibbles first, then high nibbles.
    const int chunk = v / 64, hi = (v % 64) / 32, l = v % 32;
    b[16 + 32 * chunk + l] |= static_cast<uint8_t>(q[v] << (4 * hi));
  }
  const std::vector<float> y = Dequant(GgmlType::kQ4_K, b, 256);
  for (int v = 0; v < 256; ++v) {
    EXPECT_EQ(y[v], d * sc[v / 32] * q[v] - dmin * mn[v / 32]) << v;
  }
}

TEST(GgufDequantizeTest, Q5_K) {
  const float d = 0.25f, dmin = 0.5f;
  int sc[8], mn[8], q[256];
  for (int i = 0; i < 8; ++i) {
    sc[i] = (i * 29 + 60) % 64;
    mn[i] = (i * 13 + 1) % 64;
  }
  for (int v = 0; v < 256; ++v) q[v] = (v * 11 + v / 32) % 32;
  std::vector<uint8_t> b(176, 0);
  PutHalf(b.data(), d);
  PutHalf(b.data() + 2, dmin);
  PackScaleMinK4(sc, mn, b.data() + 4);
  for (int v = 0; v < 256; ++v) {
    const int chunk = v / 64, hi = (v % 64) / 32, l = v % 32;
    b[48 + 32 * chunk + l] |= static_cast<uint8_t>((q[v] & 15) << (4 * hi));
    b[16 + l] |= static_cast<uint8_t>((q[v] >> 4) << (v / 32));  // qh bit = sub-block
  }
  const std::vector<float> y = Dequant(GgmlType::kQ5_K, b, 256);
  for (int v = 0; v < 256; ++v) {
    EXPECT_EQ(y[v], d * sc[v / 32] * q[v] - dmin * mn[v / 32]) << v;
  }
}

TEST(GgufDequantizeTest, Q6_K) {
  const float d = 0.125f;
  int sc[16], q[256];
  for (int i = 0; i < 16; ++i) sc[i] = (i * 37 + 5) % 256 - 128;  // int8
  for (int v = 0; v < 256; ++v) q[v] = (v * 13 + v / 16) % 64 - 32;
  std::vector<uint8_t> b(210, 0);
  uint8_t* ql = b.data();
  uint8_t* qh = b.data() + 128;
  for (int v = 0; v < 256; ++v) {
    // Per 128-value half: 64 ql bytes and 32 qh bytes; group k of 32 values
    // takes nibble k/2 of ql[l + 32*(k%2)] and bits 2k..2k+1 of qh[l].
    const int u = q[v] + 32;
    const int half = v / 128, k = (v % 128) / 32, l = v % 32;
    ql[64 * half + l + 32 * (k % 2)] |= static_cast<uint8_t>((u & 15) << (4 * (k / 2)));
    qh[32 * half + l] |= static_cast<uint8_t>((u >> 4) << (2 * k));
  }
  for (int i = 0; i < 16; ++i) b[192 + i] = static_cast<uint8_t>(static_cast<int8_t>(sc[i]));
  PutHalf(b.data() + 208, d);
  const std::vector<float> y = Dequant(GgmlType::kQ6_K, b, 256);
  for (int v = 0; v < 256; ++v) EXPECT_EQ(y[v], d * sc[v / 16] * q[v]) << v;
}

// ---------------------------------------------------------------------------
// Reference vectors: pseudo-random blocks (with sane scale fields)
// dequantised once by the `gguf` Python package's numpy implementation; the
// constants below are its outputs. Guards against a layout misreading shared
// by the dequantiser and the hand packers above.

std::vector<uint8_t> PseudoRandomBlocks(GgmlType t, int n_blocks) {
  std::vector<uint8_t> b(BlockBytes(t) * n_blocks);
  uint32_t state = 12345u + static_cast<uint32_t>(t);
  for (uint8_t& x : b) {
    state = state * 1103515245u + 12345u;
    x = static_cast<uint8_t>(state >> 16);
  }
  // Half-precision scale fields get fixed, finite values.
  struct Field {
    size_t offset;
    uint16_t bits;
  };
  std::vector<Field> fields;
  switch (t) {
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ8_0:
      fields = {{0, 0x2E66}};
      break;
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_1:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
      fields = {{0, 0x2E66}, {2, 0xAC00}};
      break;
    case GgmlType::kQ2_K:
      fields = {{80, 0x2E66}, {82, 0x2C00}};
      break;
    case GgmlType::kQ3_K:
      fields = {{108, 0x2E66}};
      break;
    case GgmlType::kQ6_K:
      fields = {{208, 0x2E66}};
      break;
    default:
      break;
  }
  for (int i = 0; i < n_blocks; ++i) {
    for (const Field& f : fields) {
      std::memcpy(b.data() + i * BlockBytes(t) + f.offset, &f.bits, 2);
    }
  }
  return b;
}

struct Reference {
  GgmlType type;
  double weighted_sum;  // sum of y[i] * (i % 7 + 1) over two blocks
  float y[6];           // y at kProbe
};
constexpr int kProbe[6] = {0, 17, 33, 130, 255, 300};

class GgufReferenceTest : public ::testing::TestWithParam<Reference> {};

TEST_P(GgufReferenceTest, MatchesPythonGguf) {
  const Reference& ref = GetParam();
  const int64_t n = 2 * BlockElements(ref.type);
  const std::vector<float> y = Dequant(ref.type, PseudoRandomBlocks(ref.type, 2), n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(y[i]) * (i % 7 + 1);
  EXPECT_NEAR(sum, ref.weighted_sum, 1e-4 * (1 + std::fabs(ref.weighted_sum)));
  for (int k = 0; k < 6; ++k) {
    const int i = kProbe[k] % static_cast<int>(n);
    EXPECT_NEAR(y[i], ref.y[k], 1e-5f * (1 + std::fabs(ref.y[k]))) << "index " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllBlockTypes, GgufReferenceTest,
    ::testing::Values(
        Reference{GgmlType::kQ4_0,
                  1.999511719,
                  {-0.799804688f, 0.299926758f, 0.599853516f, -0.699829102f, -0.0999755859f,
                   -0.799804688f}},
        Reference{GgmlType::kQ4_1,
                  158.1450195,
                  {0.137451172f, 0.337402344f, 0.0374755859f, 1.23718262f, 0.237426758f, -0.0625f}},
        Reference{
            GgmlType::kQ5_0,
            21.89465332,
            {1.29968262f, 0.799804688f, 0.0999755859f, 0.599853516f, 0.0999755859f, 0.299926758f}},
        Reference{GgmlType::kQ5_1,
                  406.6843262,
                  {-0.0625f, 2.53686523f, 2.0369873f, 0.337402344f, 1.83703613f, 0.837280273f}},
        Reference{GgmlType::kQ8_0,
                  -108.2735596,
                  {8.29797363f, 2.29943848f, -11.3972168f, 4.09899902f, -1.79956055f, 4.19897461f}},
        Reference{GgmlType::kQ2_K,
                  1593.760986,
                  {0.537231445f, 3.88647461f, 3.94897461f, -0.5625f, 0.362182617f, 2.07434082f}},
        Reference{GgmlType::kQ3_K,
                  -249.1391602,
                  {1.3996582f, 6.29846191f, -1.09973145f, 3.59912109f, -1.09973145f, 5.09875488f}},
        Reference{GgmlType::kQ4_K,
                  54823.3075,
                  {37.9785156f, 51.7751465f, 4.66223145f, 20.6206055f, 35.2670898f, 14.2722168f}},
        Reference{GgmlType::kQ5_K,
                  109489.944,
                  {35.3040771f, 35.3040771f, 10.072876f, 33.9921875f, 83.9925537f, 42.3154297f}},
        Reference{
            GgmlType::kQ6_K,
            -10108.53149,
            {-134.367188f, -29.5927734f, 137.966309f, 22.3945312f, 69.9829102f, 31.1923828f}}),
    [](const ::testing::TestParamInfo<Reference>& info) {
      return std::string(TypeName(info.param.type));
    });

// ---------------------------------------------------------------------------
// Errors.

TEST(GgufDequantizeTest, RejectsPartialBlocksAndUnsupportedTypes) {
  std::vector<uint8_t> b(64);
  std::vector<float> y(64);
  absl::Status s = DequantizeRow(GgmlType::kQ4_0, b.data(), y.data(), 31);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("Q4_0"));
  s = DequantizeRow(GgmlType::kQ8_K, b.data(), y.data(), 256);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("Q8_K"));
  s = DequantizeRow(static_cast<GgmlType>(77), b.data(), y.data(), 32);
  EXPECT_THAT(s.message(), HasSubstr("77"));
  EXPECT_TRUE(DequantizeRow(GgmlType::kQ4_0, nullptr, nullptr, 0).ok());
}

// ---------------------------------------------------------------------------
// Quantisers: exact rounding on hand-picked values, then error bounds.

std::vector<uint8_t> Quant(GgmlType t, const std::vector<float>& x) {
  std::vector<uint8_t> out(RowBytes(t, static_cast<int64_t>(x.size())));
  absl::Status s = QuantizeRow(t, x.data(), out.data(), static_cast<int64_t>(x.size()));
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST(GgufQuantizeTest, Q8_0RoundsHalfAwayFromZero) {
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;  // amax 127 -> d = 1
  x[1] = 2.5f;
  x[2] = -2.5f;
  x[3] = 2.49f;
  x[4] = -127.0f;
  const std::vector<uint8_t> b = Quant(GgmlType::kQ8_0, x);
  EXPECT_EQ(Fp16ToFp32(testing::Peek<uint16_t>(b, 0)), 1.0f);
  EXPECT_EQ(static_cast<int8_t>(b[2]), 127);
  EXPECT_EQ(static_cast<int8_t>(b[3]), 3);
  EXPECT_EQ(static_cast<int8_t>(b[4]), -3);
  EXPECT_EQ(static_cast<int8_t>(b[5]), 2);
  EXPECT_EQ(static_cast<int8_t>(b[6]), -127);
}

TEST(GgufQuantizeTest, Q4_0MapsSignedMaxToMinusEight) {
  std::vector<float> x(32, 0.0f);
  x[0] = -8.0f;  // largest magnitude, negative -> d = 1
  x[1] = 7.0f;
  x[2] = 3.5f;   // 3.5 + 8.5 = 12 -> 4 after the offset: ties round up
  x[3] = -3.5f;  // -3.5 + 8.5 = 5 -> -3
  x[4] = 3.49f;
  x[16] = 7.9f;  // clamps at 15
  const std::vector<uint8_t> b = Quant(GgmlType::kQ4_0, x);
  EXPECT_EQ(Fp16ToFp32(testing::Peek<uint16_t>(b, 0)), 1.0f);
  auto q = [&](int j) { return j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4); };
  EXPECT_EQ(q(0), 0);
  EXPECT_EQ(q(1), 15);
  EXPECT_EQ(q(2), 12);
  EXPECT_EQ(q(3), 5);
  EXPECT_EQ(q(4), 11);
  EXPECT_EQ(q(5), 8);  // zero
  EXPECT_EQ(q(16), 15);

  // A positive maximum gives a negative scale.
  x.assign(32, 0.0f);
  x[0] = 8.0f;
  const std::vector<uint8_t> b2 = Quant(GgmlType::kQ4_0, x);
  EXPECT_EQ(Fp16ToFp32(testing::Peek<uint16_t>(b2, 0)), -1.0f);
  EXPECT_EQ(b2[2] & 15, 0);
}

TEST(GgufQuantizeTest, Q4_1UsesMinAndRange) {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = 1.0f + (j % 16);  // min 1, max 16 -> d = 1
  x[5] = 3.5f;                                          // (3.5-1)+0.5 = 3 -> 3
  x[6] = 3.49f;                                         // -> 2
  const std::vector<uint8_t> b = Quant(GgmlType::kQ4_1, x);
  EXPECT_EQ(Fp16ToFp32(testing::Peek<uint16_t>(b, 0)), 1.0f);
  EXPECT_EQ(Fp16ToFp32(testing::Peek<uint16_t>(b, 2)), 1.0f);
  auto q = [&](int j) { return j < 16 ? (b[4 + j] & 15) : (b[4 + j - 16] >> 4); };
  for (int j = 0; j < 32; ++j) {
    if (j == 5 || j == 6) continue;
    EXPECT_EQ(q(j), j % 16) << j;
  }
  EXPECT_EQ(q(5), 3);
  EXPECT_EQ(q(6), 2);
}

TEST(GgufQuantizeTest, ConstantAndZeroBlocksAreExact) {
  for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1}) {
    const std::vector<float> zeros(64, 0.0f);
    EXPECT_THAT(Dequant(t, Quant(t, zeros), 64), ElementsAreArray(zeros)) << TypeName(t);
  }
  const std::vector<float> ones(32, 1.0f);
  EXPECT_THAT(Dequant(GgmlType::kQ4_1, Quant(GgmlType::kQ4_1, ones), 32), ElementsAreArray(ones));
}

std::vector<float> RandomValues(int n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

TEST(GgufQuantizeTest, RoundTripErrorBounds) {
  const int n = 32 * 64;
  for (uint32_t seed = 1; seed <= 3; ++seed) {
    const std::vector<float> x = RandomValues(n, 0.02f * seed, seed);
    // Per-block reference quantities.
    for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1}) {
      const std::vector<float> y = Dequant(t, Quant(t, x), n);
      for (int blk = 0; blk < n / 32; ++blk) {
        float amax = 0, mn = x[blk * 32], mx = x[blk * 32];
        for (int j = 0; j < 32; ++j) {
          amax = std::max(amax, std::fabs(x[blk * 32 + j]));
          mn = std::min(mn, x[blk * 32 + j]);
          mx = std::max(mx, x[blk * 32 + j]);
        }
        // Half a step of rounding, plus the f16 rounding of the stored scale
        // (and min) which the quantiser does not see.
        float bound = 0;
        if (t == GgmlType::kQ8_0) bound = 0.5f * amax / 127 + amax * 1e-3f;
        if (t == GgmlType::kQ4_0) bound = amax / 8 * 1.01f;  // +max clamps to 7/8 of it
        if (t == GgmlType::kQ4_1) bound = 0.5f * (mx - mn) / 15 + (std::fabs(mn) + mx) * 2e-3f;
        for (int j = 0; j < 32; ++j) {
          const int i = blk * 32 + j;
          ASSERT_LE(std::fabs(y[i] - x[i]), bound)
              << TypeName(t) << " block " << blk << " value " << j << " x=" << x[i];
        }
      }
    }
    const std::vector<float> h = Dequant(GgmlType::kF16, Quant(GgmlType::kF16, x), n);
    const std::vector<float> b = Dequant(GgmlType::kBF16, Quant(GgmlType::kBF16, x), n);
    const std::vector<float> f = Dequant(GgmlType::kF32, Quant(GgmlType::kF32, x), n);
    for (int i = 0; i < n; ++i) {
      EXPECT_LE(std::fabs(h[i] - x[i]), std::fabs(x[i]) * std::ldexp(1.0f, -11) + 6e-8f);
      EXPECT_LE(std::fabs(b[i] - x[i]), std::fabs(x[i]) * std::ldexp(1.0f, -8));
      EXPECT_EQ(f[i], x[i]);
    }
  }
}

TEST(GgufQuantizeTest, NonFiniteInputDoesNotCrash) {
  std::vector<float> x(32, 1.0f);
  x[3] = std::nanf("");
  x[4] = INFINITY;
  for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1}) {
    std::vector<uint8_t> b(BlockBytes(t));
    EXPECT_TRUE(QuantizeRow(t, x.data(), b.data(), 32).ok());
  }
}

TEST(GgufQuantizeTest, RejectsOtherTypesAndPartialBlocks) {
  std::vector<float> x(256, 0.0f);
  std::vector<uint8_t> b(1024);
  absl::Status s = QuantizeRow(GgmlType::kQ4_K, x.data(), b.data(), 256);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("Q4_K"));
  EXPECT_EQ(QuantizeRow(GgmlType::kQ8_0, x.data(), b.data(), 33).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvserve::gguf
