// Attention over a paged cache whose blocks sit in mixed tiers (f16, int8,
// int4, int2, evicted), and the per-block attention mass it reports, against
// a double-precision reference that dequantizes first and leaves evicted
// positions out.
#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "common/fp16.h"
#include "common/thread_pool.h"
#include "engine/model/attention.h"
#include "gtest/gtest.h"
#include "kvcache/kv_quant.h"
#include "kvcache/paged_kv_cache.h"
#include "tests/engine/model/attention_test_util.h"

namespace kvserve::model {
namespace {

using kvcache::KvTier;

ModelConfig Config() { return testing::SmallGqaConfig(); }
std::vector<float> Random(size_t n, uint64_t seed) { return testing::RandomNormal(n, seed); }

class MassRecorder : public kvcache::AttentionMassSink {
 public:
  void OnBlockMass(int seq, int layer, int block, double mass, double n_queries) override {
    auto& e = got[{seq, block}];
    e.first += mass;
    e.second += n_queries;
    EXPECT_EQ(layer, 0);
  }
  std::map<std::pair<int, int>, std::pair<double, double>> got;
};

// Every present position of `seq` as f32 K/V (dequantized where packed).
struct Cached {
  std::vector<int> pos;                  // present positions, increasing
  std::vector<int> block;                // their block
  std::vector<std::vector<float>> k, v;  // [present][row_width]
};

Cached ReadBack(const kvcache::PagedKvCache& kv, int seq, int end) {
  const kvcache::KvShape& sh = kv.shape();
  const int w = sh.row_width(), bt = kv.block_tokens();
  std::vector<kvcache::KvSpan> spans;
  kv.Read(seq, 0, end, &spans);
  Cached c;
  std::vector<uint16_t> kd(w * bt), vd(w * bt);
  for (const auto& sp : spans) {
    const uint16_t* k = sp.k;
    const uint16_t* v = sp.v;
    if (sp.packed != nullptr) {
      kvcache::DequantizeKvUnit(sh, bt, sp.tier, sp.packed, kd.data(), vd.data());
      k = kd.data();
      v = vd.data();
    }
    for (int j = 0; j < sp.n; ++j) {
      c.pos.push_back(sp.pos0 + j);
      c.block.push_back(sp.block);
      std::vector<float> kr(w), vr(w);
      for (int ch = 0; ch < w; ++ch) {
        kr[ch] = Fp16ToFp32(k[ch * sp.k_stride + j]);
        vr[ch] = Fp16ToFp32(v[j * w + ch]);
      }
      c.k.push_back(kr);
      c.v.push_back(vr);
    }
  }
  return c;
}

TEST(AttentionTiersTest, MixedTiersMatchDequantizedReferenceAndReportMass) {
  const ModelConfig c = Config();
  const int kv_w = c.n_kv_head * c.head_dim, q_w = c.n_head * c.head_dim, G = c.group_size();
  const kvcache::KvShape shape{1, c.n_kv_head, c.head_dim};
  auto made = kvcache::PagedKvCache::Create(shape, 64 << 20);
  ASSERT_TRUE(made.ok()) << made.status();
  kvcache::PagedKvCache& kv = **made;
  const int len = 100;  // 7 blocks, the last partial
  ASSERT_TRUE(kv.Reserve(0, len));
  auto k = Random(len * kv_w, 1), v = Random(len * kv_w, 2);
  kv.Write(0, 0, 0, len, k.data(), v.data());
  const size_t before = kv.pool().used_bytes();
  ASSERT_TRUE(kv.Compress(0, 0, 1, KvTier::kInt8));
  ASSERT_TRUE(kv.Compress(0, 0, 2, KvTier::kInt4));
  ASSERT_TRUE(kv.Compress(0, 0, 3, KvTier::kInt2));
  ASSERT_TRUE(kv.Compress(0, 0, 4, KvTier::kEvicted));
  ASSERT_TRUE(kv.Compress(0, 0, 5, KvTier::kInt8));
  ASSERT_TRUE(kv.Compress(0, 0, 5, KvTier::kInt2));  // tiers move down step by step
  EXPECT_LT(kv.pool().used_bytes(), before);
  EXPECT_EQ(kv.SequenceUncompressedBytes(0), 7 * kv.pool().bytes_per_block());
  ASSERT_TRUE(kv.CheckInvariants().ok());

  // Queries: the last 20 positions (two tiles), all observed.
  const int n = 20;
  std::vector<int32_t> seq(n, 0), pos(n);
  for (int i = 0; i < n; ++i) pos[i] = len - n + i;
  auto q = Random(n * q_w, 3);
  std::vector<uint8_t> observe(n, 1);
  observe[3] = 0;  // one row not observed
  ThreadPool pool(2);
  Attention att(c);
  std::vector<float> out(n * q_w);
  MassRecorder sink;
  att.Compute(kv, 0, q.data(), seq.data(), pos.data(), n, out.data(), &pool, observe.data(), &sink);

  const Cached cached = ReadBack(kv, 0, len);
  for (int p = 64; p < 80; ++p) {  // block 4 is evicted
    EXPECT_EQ(std::count(cached.pos.begin(), cached.pos.end(), p), 0);
  }
  std::map<int, std::pair<double, double>> want_mass;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  for (int i = 0; i < n; ++i) {
    for (int h = 0; h < c.n_head; ++h) {
      const int g = h / G;
      std::vector<double> s;
      std::vector<size_t> idx;
      for (size_t t = 0; t < cached.pos.size(); ++t) {
        if (cached.pos[t] > pos[i]) break;
        double dot = 0;
        for (int d = 0; d < c.head_dim; ++d) {
          dot += static_cast<double>(q[i * q_w + h * c.head_dim + d]) *
                 cached.k[t][g * c.head_dim + d];
        }
        s.push_back(dot * scale);
        idx.push_back(t);
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      std::map<int, double> block_w;
      for (int d = 0; d < c.head_dim; ++d) {
        double o = 0;
        for (size_t t = 0; t < s.size(); ++t)
          o += s[t] / sum * cached.v[idx[t]][g * c.head_dim + d];
        EXPECT_NEAR(out[i * q_w + h * c.head_dim + d], o, 2e-4) << "row " << i << " head " << h;
      }
      if (!observe[i]) continue;
      for (size_t t = 0; t < s.size(); ++t) block_w[cached.block[idx[t]]] += s[t] / sum;
      for (const auto& [b, wgt] : block_w) {
        want_mass[b].first += wgt;
        want_mass[b].second += 1;
      }
    }
  }
  ASSERT_EQ(sink.got.size(), want_mass.size());
  for (const auto& [b, m] : want_mass) {
    const auto& got = sink.got.at({0, b});
    EXPECT_NEAR(got.first, m.first, 1e-4) << "block " << b;
    EXPECT_EQ(got.second, m.second) << "block " << b;
  }
  EXPECT_EQ(sink.got.count({0, 4}), 0u);  // evicted: no mass
}

TEST(AttentionTiersTest, Int8IsCloseToF16) {
  // The same cache before and after moving every full block but the last
  // to int8: outputs stay within int8's error.
  const ModelConfig c = Config();
  const int kv_w = c.n_kv_head * c.head_dim, q_w = c.n_head * c.head_dim;
  const kvcache::KvShape shape{1, c.n_kv_head, c.head_dim};
  auto made = kvcache::PagedKvCache::Create(shape, 64 << 20);
  ASSERT_TRUE(made.ok());
  kvcache::PagedKvCache& kv = **made;
  const int len = 128;
  ASSERT_TRUE(kv.Reserve(0, len));
  auto k = Random(len * kv_w, 4), v = Random(len * kv_w, 5);
  kv.Write(0, 0, 0, len, k.data(), v.data());
  std::vector<int32_t> seq(1, 0), pos(1, len - 1);
  auto q = Random(q_w, 6);
  ThreadPool pool(1);
  Attention att(c);
  std::vector<float> f16(q_w), int8(q_w);
  att.Compute(kv, 0, q.data(), seq.data(), pos.data(), 1, f16.data(), &pool);
  for (int b = 0; b < 7; ++b) ASSERT_TRUE(kv.Compress(0, 0, b, KvTier::kInt8));
  att.Compute(kv, 0, q.data(), seq.data(), pos.data(), 1, int8.data(), &pool);
  double err = 0, ref = 0;
  for (int i = 0; i < q_w; ++i) {
    err += (f16[i] - int8[i]) * (f16[i] - int8[i]);
    ref += f16[i] * f16[i];
  }
  EXPECT_LT(std::sqrt(err / ref), 0.02);
}

}  // namespace
}  // namespace kvserve::model
