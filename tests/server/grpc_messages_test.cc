// The wire <-> engine mapping of the gRPC front end without a server: the
// per-request KV compression spec and its checks, and the KV byte counts in
// the usage of streamed and collected responses.
#include "server/grpc_messages.h"

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/check.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvcache/compression_policy.h"

namespace kvserve::server {
namespace {

using ::testing::HasSubstr;

// A byte-level vocabulary of a few letters: enough for text prompts; the
// tests below mostly send token ids.
std::unique_ptr<tokenizer::Tokenizer> LetterTokenizer() {
  tokenizer::Vocab v;
  v.tokens = {"<s>", "</s>", "a", "b", "c", "d"};
  v.bos_id = 0;
  v.eos_id = 1;
  auto t = tokenizer::Tokenizer::Create(std::move(v));
  KV_CHECK_MSG(t.ok(), "the test vocabulary is valid");
  return *std::move(t);
}

class GrpcMessagesTest : public ::testing::Test {
 protected:
  static v1::GenerateRequest Request() {
    v1::GenerateRequest r;
    r.set_model("tiny");
    for (int id : {2, 3, 4}) r.mutable_prompt_tokens()->add_ids(id);
    return r;
  }

  static v1::GenerateRequest WithKv(std::string policy, double ratio) {
    v1::GenerateRequest r = Request();
    r.mutable_kv_compression()->set_policy(std::move(policy));
    r.mutable_kv_compression()->set_ratio(ratio);
    return r;
  }

  absl::StatusOr<engine::GenerationRequest> Convert(const v1::GenerateRequest& r) {
    return ToGenerationRequest(r, "tiny", *tokenizer_, "req-1");
  }

  static engine::StreamEvent Final(int choice, int64_t kv_bytes, int64_t kv_uncompressed) {
    engine::StreamEvent e;
    e.choice = choice;
    e.tokens = {5};
    e.text = "d";
    e.finish = engine::FinishReason::kLength;
    e.prompt_tokens = 3;
    e.completion_tokens = 1;
    e.kv_bytes = kv_bytes;
    e.kv_bytes_uncompressed = kv_uncompressed;
    return e;
  }

  std::unique_ptr<tokenizer::Tokenizer> tokenizer_ = LetterTokenizer();
};

TEST_F(GrpcMessagesTest, NoKvCompressionLeavesTheServerDefault) {
  auto g = Convert(Request());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_FALSE(g->kv_compression.has_value());
}

TEST_F(GrpcMessagesTest, KvCompressionMapsPolicyAndRatio) {
  auto g = Convert(WithKv("attention-guided", 0.25));
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_TRUE(g->kv_compression.has_value());
  EXPECT_EQ(g->kv_compression->policy, "attention-guided");
  EXPECT_EQ(g->kv_compression->ratio, 0.25);
}

TEST_F(GrpcMessagesTest, PrefillChunkTokensReachesTheRequest) {
  v1::GenerateRequest r = WithKv("snapkv", 0.5);
  r.mutable_kv_compression()->set_prefill_chunk_tokens(64);
  auto g = Convert(r);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->prefill_chunk_tokens, 64);
  r.mutable_kv_compression()->set_prefill_chunk_tokens(3000000000u);
  EXPECT_EQ(Convert(r).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(GrpcMessagesTest, EveryKnownPolicyAndTheRatioBoundsAreAccepted) {
  for (std::string_view name : kvcache::CompressionPolicyNames()) {
    for (double ratio : {1.0, 0.5, 1e-6}) {
      auto g = Convert(WithKv(std::string(name), ratio));
      ASSERT_TRUE(g.ok()) << name << " " << ratio << ": " << g.status();
      EXPECT_EQ(g->kv_compression->policy, name);
      EXPECT_EQ(g->kv_compression->ratio, ratio);
    }
  }
}

// proto3 zero values are "unset": they reach the engine as "" / 0, which it
// replaces with its configured defaults.
TEST_F(GrpcMessagesTest, UnsetHalvesPassThroughForTheEngineToFill) {
  auto policy_only = Convert(WithKv("h2o", 0));
  ASSERT_TRUE(policy_only.ok()) << policy_only.status();
  EXPECT_EQ(policy_only->kv_compression->policy, "h2o");
  EXPECT_EQ(policy_only->kv_compression->ratio, 0);

  auto ratio_only = Convert(WithKv("", 0.5));
  ASSERT_TRUE(ratio_only.ok()) << ratio_only.status();
  EXPECT_EQ(ratio_only->kv_compression->policy, "");
  EXPECT_EQ(ratio_only->kv_compression->ratio, 0.5);

  v1::GenerateRequest empty = Request();
  empty.mutable_kv_compression();
  auto both = Convert(empty);
  ASSERT_TRUE(both.ok()) << both.status();
  ASSERT_TRUE(both->kv_compression.has_value());
  EXPECT_EQ(both->kv_compression->policy, "");
  EXPECT_EQ(both->kv_compression->ratio, 0);
}

TEST_F(GrpcMessagesTest, UnknownPolicyIsInvalidArgumentNamingTheFieldAndTheChoices) {
  for (const char* bad : {"lru", "H2O", "attention_guided", " none"}) {
    auto g = Convert(WithKv(bad, 0.5));
    ASSERT_FALSE(g.ok()) << bad;
    EXPECT_TRUE(absl::IsInvalidArgument(g.status())) << g.status();
    EXPECT_THAT(g.status().message(), HasSubstr("kv_compression.policy"));
    EXPECT_THAT(g.status().message(), HasSubstr(std::string("'") + bad + "'"));
    EXPECT_THAT(g.status().message(), HasSubstr("attention-guided"));
  }
}

TEST_F(GrpcMessagesTest, RatioOutsideZeroOneIsInvalidArgumentNamingTheField) {
  for (double bad : {-0.25, 1.0000001, 4.0, std::numeric_limits<double>::quiet_NaN(),
                     std::numeric_limits<double>::infinity()}) {
    auto g = Convert(WithKv("attention-guided", bad));
    ASSERT_FALSE(g.ok()) << bad;
    EXPECT_TRUE(absl::IsInvalidArgument(g.status())) << g.status();
    EXPECT_THAT(g.status().message(), HasSubstr("kv_compression.ratio")) << bad;
  }
  // Also without a policy: the ratio is checked on its own.
  auto g = Convert(WithKv("", 2.0));
  ASSERT_FALSE(g.ok());
  EXPECT_THAT(g.status().message(), HasSubstr("kv_compression.ratio"));
}

TEST_F(GrpcMessagesTest, StreamedFinalMessageCarriesKvBytesAndRatio) {
  engine::StreamEvent final_event = Final(0, 300, 1200);
  final_event.cached_tokens = 16;
  v1::GenerateResponse last = ToGenerateResponse(final_event, *tokenizer_, "req-1");
  ASSERT_TRUE(last.has_usage());
  EXPECT_EQ(last.usage().cached_tokens(), 16);
  EXPECT_EQ(last.usage().prompt_tokens(), 3);
  EXPECT_EQ(last.usage().completion_tokens(), 1);
  EXPECT_EQ(last.usage().kv_bytes(), 300);
  EXPECT_EQ(last.usage().kv_bytes_uncompressed(), 1200);
  EXPECT_DOUBLE_EQ(last.usage().kv_compression_ratio(), 0.25);

  engine::StreamEvent middle = Final(0, 0, 0);
  middle.finish = engine::FinishReason::kNone;
  EXPECT_FALSE(ToGenerateResponse(middle, *tokenizer_, "req-1").has_usage());
}

TEST_F(GrpcMessagesTest, NothingCachedReportsRatioOne) {
  v1::GenerateResponse last = ToGenerateResponse(Final(0, 0, 0), *tokenizer_, "req-1");
  EXPECT_EQ(last.usage().kv_bytes(), 0);
  EXPECT_EQ(last.usage().kv_bytes_uncompressed(), 0);
  EXPECT_EQ(last.usage().kv_compression_ratio(), 1.0);
}

TEST_F(GrpcMessagesTest, CompleteResponseSumsKvBytesOverChoices) {
  CompleteAccumulator acc(tokenizer_.get(), 2, "tiny", "req-1");
  EXPECT_EQ(acc.response().usage().kv_compression_ratio(), 1.0);  // nothing finished yet
  ASSERT_TRUE(acc.Add(Final(1, 100, 400)).ok());
  EXPECT_DOUBLE_EQ(acc.response().usage().kv_compression_ratio(), 0.25);
  ASSERT_TRUE(acc.Add(Final(0, 300, 400)).ok());
  const v1::Usage& u = acc.response().usage();
  EXPECT_EQ(u.completion_tokens(), 2);
  EXPECT_EQ(u.kv_bytes(), 400);
  EXPECT_EQ(u.kv_bytes_uncompressed(), 800);
  EXPECT_DOUBLE_EQ(u.kv_compression_ratio(), 0.5);
}

}  // namespace
}  // namespace kvserve::server
