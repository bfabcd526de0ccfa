// WikiText-2 perplexity of our engine against llama.cpp's on the same tokens
// (tests/fixtures/perplexity_reference.json). The bar: within 1%.
#include <cmath>
#include <fstream>
#include <sstream>

#include "engine/model/llama_model.h"
#include "engine/model/perplexity.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/model_path.h"

namespace kvserve::model {
namespace {

TEST(ReferencePerplexityTest, WikiText2First4096TokensWithinOnePercentOfLlamaCpp) {
  const std::string path = testing::ModelPath();
  ASSERT_FALSE(path.empty()) << testing::ModelMissingMessage();
  std::ifstream fin("tests/fixtures/perplexity_reference.json");
  ASSERT_TRUE(fin.good()) << "missing tests/fixtures/perplexity_reference.json";
  const nlohmann::json ref = nlohmann::json::parse(fin);
  const std::string data = "../shared/data/wikitext-2-raw/wiki.test.raw";
  std::ifstream in(data, std::ios::binary);
  ASSERT_TRUE(in.good()) << "missing " << data << " (the shared evaluation data)";
  std::stringstream ss;
  ss << in.rdbuf();

  auto m = LlamaModel::Load(path, 2);
  ASSERT_TRUE(m.ok()) << m.status();
  auto tok = tokenizer::Tokenizer::FromGguf((*m)->file());
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::vector<int32_t> tokens = (*tok)->Encode(ss.str(), /*add_bos=*/false, /*parse_special=*/false);
  const size_t n = ref["n_tokens"].get<size_t>();
  ASSERT_GE(tokens.size(), n);
  const std::vector<int32_t> first16 = ref["first_16_ids"];
  for (size_t i = 0; i < first16.size(); ++i) ASSERT_EQ(tokens[i], first16[i]) << i;
  tokens.resize(n);

  for (const auto& r : ref["results"]) {
    const int ctx = r["ctx"];
    if (ctx != 1024) continue;  // ctx 4096 is reported in docs/ACCURACY.md, not tested (time)
    PerplexityOptions opt;
    opt.ctx = ctx;
    auto got = ComputePerplexity(m->get(), tokens, opt);
    ASSERT_TRUE(got.ok()) << got.status();
    const double want = r["ppl"];
    EXPECT_EQ(got->n_scored, r["n_scored"].get<int64_t>());
    std::printf("[perplexity] ctx %d: ours %.4f, llama.cpp %.4f, relative difference %.4f%%\n", ctx,
                got->perplexity, want, 100 * std::abs(got->perplexity - want) / want);
    EXPECT_LT(std::abs(got->perplexity - want) / want, 0.01);
  }
}

}  // namespace
}  // namespace kvserve::model
