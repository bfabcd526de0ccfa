// Attention over a KV store that hands out many small spans (as a paged
// cache does), against a double-precision reference on the same f16 values.
#include "engine/model/attention.h"

#include <cmath>
#include <map>
#include <random>

#include "common/fp16.h"
#include "gtest/gtest.h"
#include "tests/engine/model/attention_test_util.h"

namespace kvserve::model {
namespace {

// Stores each sequence in spans of `span_len` positions, each with its own
// padded allocation, so attention must stitch spans together.
class SpannedKv : public kvcache::KvStore {
 public:
  SpannedKv(kvcache::KvShape shape, int span_len) : shape_(shape), span_len_(span_len) {}
  const kvcache::KvShape& shape() const override { return shape_; }

  void Write(int seq, int layer, int pos, int n, const float* k, const float* v) override {
    const int w = shape_.row_width();
    for (int j = 0; j < n; ++j) {
      Block& b = BlockFor(seq, layer, pos + j);
      const int off = (pos + j) % span_len_;
      for (int c = 0; c < w; ++c) {
        b.k[c * Stride() + off] = Fp32ToFp16(k[j * w + c]);
        b.v[off * w + c] = Fp32ToFp16(v[j * w + c]);
      }
    }
  }

  void Read(int seq, int layer, int end, std::vector<kvcache::KvSpan>* spans) const override {
    const auto& blocks = seqs_.at({seq, layer});
    for (int b = 0; b * span_len_ < end; ++b) {
      const int n = std::min(span_len_, end - b * span_len_);
      spans->push_back({b * span_len_, n, blocks[b].k.data(), Stride(), blocks[b].v.data()});
    }
  }

  float K(int seq, int layer, int pos, int c) const {
    const Block& b = seqs_.at({seq, layer})[pos / span_len_];
    return Fp16ToFp32(b.k[c * Stride() + pos % span_len_]);
  }
  float V(int seq, int layer, int pos, int c) const {
    const Block& b = seqs_.at({seq, layer})[pos / span_len_];
    return Fp16ToFp32(b.v[(pos % span_len_) * shape_.row_width() + c]);
  }

 private:
  struct Block {
    std::vector<uint16_t> k, v;
  };
  int Stride() const {
    return (span_len_ + kvcache::kKvSpanAlign - 1) / kvcache::kKvSpanAlign * kvcache::kKvSpanAlign;
  }
  Block& BlockFor(int seq, int layer, int pos) {
    auto& blocks = seqs_[{seq, layer}];
    while (static_cast<int>(blocks.size()) <= pos / span_len_) {
      // Fill with large finite garbage: padding and unwritten positions
      // must never influence a result.
      blocks.push_back({std::vector<uint16_t>(shape_.row_width() * Stride(), Fp32ToFp16(3e4f)),
                        std::vector<uint16_t>(shape_.row_width() * Stride(), Fp32ToFp16(-3e4f))});
    }
    return blocks[pos / span_len_];
  }
  kvcache::KvShape shape_;
  int span_len_;
  std::map<std::pair<int, int>, std::vector<Block>> seqs_;
};

ModelConfig Config() { return testing::SmallGqaConfig(); }
std::vector<float> Random(size_t n, uint64_t seed) { return testing::RandomNormal(n, seed); }

TEST(AttentionTest, MatchesReferenceAcrossSpansAndTiles) {
  const ModelConfig c = Config();
  const int kv_w = c.n_kv_head * c.head_dim, q_w = c.n_head * c.head_dim;
  for (int span_len : {16, 7, 100}) {
    SpannedKv kv({1, c.n_kv_head, c.head_dim}, span_len);
    // Two sequences of 70 and 23 positions.
    const std::vector<int> lens = {70, 23};
    for (int s = 0; s < 2; ++s) {
      auto k = Random(lens[s] * kv_w, 10 + s), v = Random(lens[s] * kv_w, 20 + s);
      kv.Write(s, 0, 0, lens[s], k.data(), v.data());
    }
    // A batch mixing the last 20 positions of sequence 0 and 3 of sequence 1.
    std::vector<int32_t> seq, pos;
    for (int p = 50; p < 70; ++p) seq.push_back(0), pos.push_back(p);
    for (int p = 20; p < 23; ++p) seq.push_back(1), pos.push_back(p);
    const int n = seq.size();
    auto q = Random(n * q_w, 99);
    std::vector<float> out(n * q_w);
    ThreadPool pool(2);
    Attention att(c);
    att.Compute(kv, 0, q.data(), seq.data(), pos.data(), n, out.data(), &pool);
    for (int i = 0; i < n; ++i) {
      for (int h = 0; h < c.n_head; ++h) {
        const int g = h / c.group_size();
        std::vector<double> sc(pos[i] + 1);
        double mx = -1e300;
        for (int t = 0; t <= pos[i]; ++t) {
          double dot = 0;
          for (int e = 0; e < c.head_dim; ++e) {
            dot += q[i * q_w + h * c.head_dim + e] * kv.K(seq[i], 0, t, g * c.head_dim + e);
          }
          sc[t] = dot / std::sqrt(static_cast<double>(c.head_dim));
          mx = std::max(mx, sc[t]);
        }
        double sum = 0;
        for (auto& x : sc) sum += (x = std::exp(x - mx));
        for (int e = 0; e < c.head_dim; ++e) {
          double want = 0;
          for (int t = 0; t <= pos[i]; ++t)
            want += sc[t] / sum * kv.V(seq[i], 0, t, g * c.head_dim + e);
          ASSERT_NEAR(out[i * q_w + h * c.head_dim + e], want, 2e-5)
              << "span " << span_len << " row " << i << " head " << h << " ch " << e;
        }
      }
    }
    // Row invariance: each row alone (a decode step) gives identical bits.
    for (int i = 0; i < n; ++i) {
      std::vector<float> one(q_w);
      att.Compute(kv, 0, q.data() + i * q_w, &seq[i], &pos[i], 1, one.data(), &pool);
      for (int e = 0; e < q_w; ++e) ASSERT_EQ(one[e], out[i * q_w + e]) << "row " << i;
    }
  }
}

}  // namespace
}  // namespace kvserve::model
