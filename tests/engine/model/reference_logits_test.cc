// Our forward pass on the real SmolLM2 file against llama.cpp's logits for
// the same token ids (tests/fixtures/logits_reference.json, made by
// scripts/make_reference_fixtures.py).
#include <algorithm>
#include <cmath>
#include <fstream>

#include "engine/model/llama_model.h"
#include "engine/model/perplexity.h"
#include "engine/model/sampler.h"
#include "gtest/gtest.h"
#include "kvcache/contiguous_kv_cache.h"
#include "nlohmann/json.hpp"
#include "tests/support/model_path.h"

namespace kvserve::model {
namespace {

// What "matching" can mean here. Both engines quantise activations to 8 bits
// per 32 values before every matmul, so a 1e-6 relative difference anywhere
// (the order of an f32 sum, f16 rounding inside llama.cpp's attention) flips
// some quantised values by one step and the flip propagates through 30
// layers. We measured that floor directly: perturbing our own activations by
// 1e-6 relative before quantisation moves our log-probabilities (top-20
// tokens, these 1,256 positions) by median 0.066, p99 0.365, max 1.07 and
// flips the argmax at 4% of positions, all of them near-ties. Ours against
// llama.cpp measured median 0.066, p99 0.366, max 1.70 (docs/ACCURACY.md):
// the same distribution. The bounds below sit above that floor; a real
// defect (wrong RoPE pairing, a missing norm, an off-by-one position) moves
// log-probabilities by whole nats at most positions.
constexpr double kMedianLogProbTolerance = 0.12;
constexpr double kP99LogProbTolerance = 0.6;
constexpr double kMaxLogProbTolerance = 2.5;
constexpr double kTop1LogProbTolerance = 0.75;
// Reference top-1/top-2 margins below this are numerical ties (the argmax
// flips within the noise floor above); there our choice must be one of the
// reference's tokens within this distance of its best.
constexpr double kTieMargin = 0.75;

struct Prompt {
  std::string name;
  std::vector<int32_t> ids;
  std::vector<std::vector<int32_t>> top_ids;
  std::vector<std::vector<double>> top_logits;
  std::vector<double> logsumexp;
};

std::vector<Prompt> LoadFixture() {
  std::ifstream in("tests/fixtures/logits_reference.json");
  EXPECT_TRUE(in.good()) << "missing tests/fixtures/logits_reference.json";
  if (!in.good()) return {};
  nlohmann::json j = nlohmann::json::parse(in);
  std::vector<Prompt> out;
  for (const auto& p : j["prompts"]) {
    out.push_back({p["name"], p["ids"], p["top_ids"], p["top_logits"], p["logsumexp"]});
  }
  return out;
}

class ReferenceLogitsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = testing::ModelPath();
    ASSERT_FALSE(path.empty()) << testing::ModelMissingMessage();
    auto m = LlamaModel::Load(path, 2);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = m->release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  static LlamaModel* model_;
};
LlamaModel* ReferenceLogitsTest::model_ = nullptr;

TEST_F(ReferenceLogitsTest, LogitsMatchLlamaCpp) {
  ASSERT_NE(model_, nullptr);
  const auto prompts = LoadFixture();
  ASSERT_GE(prompts.size(), 3u);
  const ModelConfig& c = model_->config();
  std::vector<double> diffs;
  int positions = 0, near_ties = 0, top1_agree = 0;
  double top1_max = 0;
  for (const Prompt& p : prompts) {
    kvcache::ContiguousKvCache kv({c.n_layers, c.n_kv_head, c.head_dim});
    ASSERT_TRUE(kv.AddSequence(0, p.ids.size()).ok());
    std::vector<float> all, logits;
    Batch b;
    for (size_t start = 0; start < p.ids.size(); start += 512) {
      b.Clear();
      for (size_t i = start; i < std::min(p.ids.size(), start + 512); ++i) b.Add(p.ids[i], i, 0, true);
      ASSERT_TRUE(model_->Forward(b, &kv, &logits).ok());
      all.insert(all.end(), logits.begin(), logits.end());
    }
    ASSERT_EQ(all.size(), p.ids.size() * c.n_vocab);
    for (size_t j = 0; j < p.ids.size(); ++j) {
      const float* row = all.data() + j * c.n_vocab;
      double mx = row[0], sum = 0;
      for (int t = 1; t < c.n_vocab; ++t) mx = std::max(mx, static_cast<double>(row[t]));
      for (int t = 0; t < c.n_vocab; ++t) sum += std::exp(row[t] - mx);
      const double lse = mx + std::log(sum);
      for (size_t r = 0; r < p.top_ids[j].size(); ++r) {
        const double ours = row[p.top_ids[j][r]] - lse;
        const double theirs = p.top_logits[j][r] - p.logsumexp[j];
        diffs.push_back(std::abs(ours - theirs));
        if (r == 0) {
          top1_max = std::max(top1_max, diffs.back());
          ASSERT_LE(diffs.back(), kTop1LogProbTolerance) << p.name << " position " << j;
        }
      }
      const int32_t ours = ArgMax(row, c.n_vocab);
      top1_agree += ours == p.top_ids[j][0];
      if (p.top_logits[j][0] - p.top_logits[j][1] > kTieMargin) {
        ASSERT_EQ(ours, p.top_ids[j][0]) << p.name << " position " << j;
      } else {
        ++near_ties;
        bool tied = false;
        for (size_t r = 0; r < p.top_ids[j].size(); ++r) {
          tied |= p.top_ids[j][r] == ours && p.top_logits[j][0] - p.top_logits[j][r] <= kTieMargin;
        }
        ASSERT_TRUE(tied) << p.name << " position " << j << ": our argmax " << ours
                          << " is not among the reference's tied tokens";
      }
      ++positions;
    }
  }
  std::sort(diffs.begin(), diffs.end());
  const double median = diffs[diffs.size() / 2];
  const double p99 = diffs[diffs.size() * 99 / 100];
  const double mx = diffs.back();
  std::printf(
      "[reference] %d positions; |log-prob diff| over top-20: median %.4f, p99 %.4f, max %.4f; "
      "top-1 log-prob max %.4f; argmax agreement %d/%d (near ties: %d)\n",
      positions, median, p99, mx, top1_max, top1_agree, positions, near_ties);
  EXPECT_LE(median, kMedianLogProbTolerance);
  EXPECT_LE(p99, kP99LogProbTolerance);
  EXPECT_LE(mx, kMaxLogProbTolerance);
}

}  // namespace
}  // namespace kvserve::model
