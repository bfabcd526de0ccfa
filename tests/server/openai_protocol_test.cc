#include "server/openai_protocol.h"

#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/status_mapping.h"

namespace kvserve::server {
namespace {

const KvUsage kNoKv{};  // events without KV accounting

using ::testing::HasSubstr;
using json = nlohmann::json;

const ProtocolLimits kLimits{/*max_n=*/8, /*max_logprobs=*/20};

// --- completions parsing ---------------------------------------------------

TEST(ParseCompletionTest, MinimalRequestGetsDefaults) {
  auto r = ParseCompletionRequest(R"({"prompt": "Hello"})", kLimits);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt_text, "Hello");
  EXPECT_TRUE(r->prompt_tokens.empty());
  EXPECT_FALSE(r->common.model.has_value());
  EXPECT_FALSE(r->common.max_tokens.has_value());
  EXPECT_EQ(r->common.sampling.temperature, 1.0f);
  EXPECT_EQ(r->common.sampling.top_p, 1.0f);
  EXPECT_EQ(r->common.sampling.top_k, 0);
  EXPECT_FALSE(r->common.sampling.seed.has_value());
  EXPECT_EQ(r->common.n, 1);
  EXPECT_FALSE(r->common.stream);
  EXPECT_FALSE(r->common.include_usage);
  EXPECT_TRUE(r->common.stop.empty());
  EXPECT_EQ(r->logprobs, -1);
  EXPECT_FALSE(r->echo);
}

TEST(ParseCompletionTest, EveryFieldIsRead) {
  auto r = ParseCompletionRequest(R"({
      "model": "m", "prompt": "Hi", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
      "top_k": 40, "min_p": 0.05, "n": 2, "best_of": 2, "seed": 42, "stop": ["a", "bc"],
      "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1,
      "logprobs": 3, "echo": true, "stream": true, "stream_options": {"include_usage": true},
      "user": "someone", "ignore_eos": true, "suffix": null, "logit_bias": {},
      "kv_compression": {"policy": "h2o", "ratio": 0.5, "prefill_chunk_tokens": 64}})",
                                  kLimits);
  ASSERT_TRUE(r.ok()) << r.status();
  const CommonParams& c = r->common;
  EXPECT_EQ(c.model, "m");
  EXPECT_EQ(c.max_tokens, 7);
  EXPECT_FLOAT_EQ(c.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(c.sampling.top_p, 0.9f);
  EXPECT_EQ(c.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(c.sampling.min_p, 0.05f);
  EXPECT_EQ(c.n, 2);
  EXPECT_EQ(c.sampling.seed, 42u);
  EXPECT_EQ(c.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_FLOAT_EQ(c.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(c.sampling.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(c.sampling.repetition_penalty, 1.1f);
  EXPECT_TRUE(c.stream);
  EXPECT_TRUE(c.include_usage);
  EXPECT_TRUE(c.ignore_eos);
  EXPECT_EQ(r->logprobs, 3);
  EXPECT_TRUE(r->echo);
  EXPECT_EQ(c.kv_policy, "h2o");
  EXPECT_EQ(c.kv_ratio, 0.5);
  EXPECT_EQ(c.kv_prefill_chunk_tokens, 64);
}

TEST(ParseCompletionTest, PromptForms) {
  auto r = ParseCompletionRequest(R"({"prompt": ["one string"]})", kLimits);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt_text, "one string");
  r = ParseCompletionRequest(R"({"prompt": [1, 2, 3]})", kLimits);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->prompt_text.has_value());
  EXPECT_EQ(r->prompt_tokens, (std::vector<int32_t>{1, 2, 3}));
  r = ParseCompletionRequest(R"({"prompt": [[4, 5]]})", kLimits);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt_tokens, (std::vector<int32_t>{4, 5}));
  r = ParseCompletionRequest(R"({"prompt": [7.0]})", kLimits);  // integral floats are ids
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt_tokens, (std::vector<int32_t>{7}));
}

TEST(ParseCompletionTest, VllmSpellingsAndNulls) {
  auto r = ParseCompletionRequest(
      R"({"prompt": "x", "top_k": -1, "stop": "END", "max_tokens": null, "seed": null,
          "temperature": null, "n": null, "best_of": 1, "stream_options": null})",
      kLimits);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->common.sampling.top_k, 0);
  EXPECT_EQ(r->common.stop, std::vector<std::string>{"END"});
  EXPECT_FALSE(r->common.max_tokens.has_value());
  EXPECT_EQ(r->common.sampling.temperature, 1.0f);
  // Seeds span the whole 64-bit range, negative ones included.
  r = ParseCompletionRequest(R"({"prompt": "x", "seed": -1})", kLimits);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->common.sampling.seed, ~0ull);
  r = ParseCompletionRequest(R"({"prompt": "x", "seed": 18446744073709551615})", kLimits);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->common.sampling.seed, ~0ull);
}

struct ErrorCase {
  const char* body;
  const char* param;  // nullptr: no param expected
  const char* message_part;
};

void ExpectErrors(bool chat, const std::vector<ErrorCase>& cases) {
  for (const ErrorCase& tc : cases) {
    absl::Status s = chat ? ParseChatRequest(tc.body, kLimits).status()
                          : ParseCompletionRequest(tc.body, kLimits).status();
    ASSERT_FALSE(s.ok()) << tc.body;
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << tc.body;
    EXPECT_EQ(HttpStatusFor(s), 400);
    if (tc.param == nullptr) {
      EXPECT_FALSE(ParamOf(s).has_value()) << tc.body << " -> " << s;
    } else {
      EXPECT_EQ(ParamOf(s), tc.param) << tc.body << " -> " << s;
    }
    EXPECT_THAT(std::string(s.message()), HasSubstr(tc.message_part)) << tc.body;
  }
}

TEST(ParseCompletionTest, MalformedBodies) {
  ExpectErrors(false, {
                          {"", nullptr, "not valid JSON"},
                          {"{", nullptr, "not valid JSON"},
                          {R"({"prompt": "x",})", nullptr, "not valid JSON"},
                          {"[1, 2", nullptr, "not valid JSON"},
                          {"not json at all", nullptr, "not valid JSON"},
                          {R"({"prompt": "x"} trailing)", nullptr, "not valid JSON"},
                          {"[]", nullptr, "must be a JSON object, got an array"},
                          {"3", nullptr, "must be a JSON object"},
                          {R"("x")", nullptr, "must be a JSON object, got a string"},
                          {"null", nullptr, "must be a JSON object"},
                      });
}

TEST(ParseCompletionTest, EveryFieldError) {
  ExpectErrors(
      false,
      {
          {R"({})", "prompt", "'prompt' is required"},
          {R"({"prompt": null})", "prompt", "'prompt' is required"},
          {R"({"prompt": 12.5})", "prompt", "must be a string"},
          {R"({"prompt": true})", "prompt", "got a boolean"},
          {R"({"prompt": {}})", "prompt", "got an object"},
          {R"({"prompt": ""})", "prompt", "must not be empty"},
          {R"({"prompt": []})", "prompt", "must not be empty"},
          {R"({"prompt": [[]]})", "prompt", "must not be empty"},
          {R"({"prompt": ["a", "b"]})", "prompt", "batches are not supported"},
          {R"({"prompt": [[1], [2]]})", "prompt", "batches are not supported"},
          {R"({"prompt": [-1]})", "prompt", "non-negative integers; element 0"},
          {R"({"prompt": [1, 2.5]})", "prompt", "element 1"},
          {R"({"prompt": [1, "a"]})", "prompt", "element 1"},
          {R"({"prompt": [3000000000]})", "prompt", "element 0"},
          {R"({"prompt": "a", "kv_compression": {"prefill_chunk_tokens": 0}})",
           "kv_compression.prefill_chunk_tokens", "an integer >= 1"},
          {R"({"prompt": "a", "kv_compression": {"prefill_chunk_tokens": 2.5}})",
           "kv_compression.prefill_chunk_tokens", "an integer"},
          {R"({"prompt": "x", "model": 3})", "model", "'model' must be a string"},
          {R"({"prompt": "x", "max_tokens": 0})", "max_tokens", "must be an integer >= 1, got 0"},
          {R"({"prompt": "x", "max_tokens": -5})", "max_tokens", "got -5"},
          {R"({"prompt": "x", "max_tokens": "ten"})", "max_tokens", "got a string"},
          {R"({"prompt": "x", "max_tokens": 1.5})", "max_tokens", "must be an integer"},
          {R"({"prompt": "x", "max_tokens": 1e20})", "max_tokens", "must be an integer >= 1"},
          {R"({"prompt": "x", "max_tokens": 99999999999})", "max_tokens", "got 99999999999"},
          {R"({"prompt": "x", "temperature": -0.1})", "temperature", "between 0 and 2"},
          {R"({"prompt": "x", "temperature": 2.5})", "temperature", "got 2.5"},
          {R"({"prompt": "x", "temperature": "hot"})", "temperature", "must be a number"},
          {R"({"prompt": "x", "top_p": 0})", "top_p", "in (0, 1]"},
          {R"({"prompt": "x", "top_p": 1.01})", "top_p", "in (0, 1]"},
          {R"({"prompt": "x", "top_k": -2})", "top_k", "got -2"},
          {R"({"prompt": "x", "top_k": 2.5})", "top_k", "must be an integer"},
          {R"({"prompt": "x", "min_p": -0.1})", "min_p", "between 0 and 1"},
          {R"({"prompt": "x", "min_p": 1.5})", "min_p", "between 0 and 1"},
          {R"({"prompt": "x", "presence_penalty": 2.5})", "presence_penalty", "between -2 and 2"},
          {R"({"prompt": "x", "frequency_penalty": -3})", "frequency_penalty", "between -2 and 2"},
          {R"({"prompt": "x", "repetition_penalty": 0})", "repetition_penalty", "> 0"},
          {R"({"prompt": "x", "repetition_penalty": -1})", "repetition_penalty", "> 0"},
          {R"({"prompt": "x", "n": 0})", "n", "between 1 and 8, got 0"},
          {R"({"prompt": "x", "n": 9})", "n", "between 1 and 8, got 9"},
          {R"({"prompt": "x", "n": "2"})", "n", "must be an integer"},
          {R"({"prompt": "x", "best_of": 2})", "best_of", "best-of-n selection is not supported"},
          {R"({"prompt": "x", "n": 2, "best_of": 3})", "best_of", "must equal n (2)"},
          {R"({"prompt": "x", "best_of": 0})", "best_of", ">= 1"},
          {R"({"prompt": "x", "seed": 1.5})", "seed", "must be an integer"},
          {R"({"prompt": "x", "seed": "7"})", "seed", "must be an integer"},
          {R"({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]})", "stop", "at most 4"},
          {R"({"prompt": "x", "stop": [1]})", "stop[0]", "must be a string"},
          {R"({"prompt": "x", "stop": 3})", "stop", "a string or an array of strings"},
          {R"({"prompt": "x", "stop": ""})", "stop", "must not be empty"},
          {R"({"prompt": "x", "stop": ["a", ""]})", "stop", "must not be empty"},
          {R"({"prompt": "x", "logprobs": -1})", "logprobs", "between 0 and 20"},
          {R"({"prompt": "x", "logprobs": 21})", "logprobs", "between 0 and 20, got 21"},
          {R"({"prompt": "x", "logprobs": true})", "logprobs", "must be an integer"},
          {R"({"prompt": "x", "echo": "yes"})", "echo", "must be a boolean"},
          {R"({"prompt": "x", "stream": 1})", "stream", "must be a boolean"},
          {R"({"prompt": "x", "stream_options": {"include_usage": true}})", "stream_options",
           "only allowed when 'stream' is true"},
          {R"({"prompt": "x", "stream": true, "stream_options": true})", "stream_options",
           "must be an object"},
          {R"({"prompt": "x", "stream": true, "stream_options": {"include_usage": "y"}})",
           "stream_options.include_usage", "must be a boolean"},
          {R"({"prompt": "x", "stream": true, "stream_options": {"every": true}})",
           "stream_options.every", "unrecognized request argument"},
          {R"({"prompt": "x", "suffix": "tail"})", "suffix", "'suffix' is not supported"},
          {R"({"prompt": "x", "logit_bias": {"5": 10}})", "logit_bias", "not supported"},
          {R"({"prompt": "x", "ignore_eos": "no"})", "ignore_eos", "must be a boolean"},
          {R"({"prompt": "x", "user": 5})", "user", "must be a string"},
          {R"({"prompt": "x", "frobnicate": 1})", "frobnicate",
           "unrecognized request argument 'frobnicate'"},
          {R"({"prompt": "x", "messages": []})", "messages", "unrecognized request argument"},
      });
}

// --- chat parsing ----------------------------------------------------------

TEST(ParseChatTest, MessagesRolesAndContentParts) {
  auto r = ParseChatRequest(R"({"model": "m", "messages": [
      {"role": "developer", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hello"},
                                   {"type": "text", "text": "there"}], "name": "bob"},
      {"role": "assistant", "content": null},
      {"role": "assistant", "content": "Hi", "tool_calls": []},
      {"role": "user", "content": "Bye"}]})",
                            kLimits);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->messages.size(), 5u);
  EXPECT_EQ(r->messages[0].role, "system");
  EXPECT_EQ(r->messages[0].content, "Be brief.");
  EXPECT_EQ(r->messages[1].role, "user");
  EXPECT_EQ(r->messages[1].content, "Hello\nthere");
  EXPECT_EQ(r->messages[2].role, "assistant");
  EXPECT_EQ(r->messages[2].content, "");
  EXPECT_EQ(r->messages[4].content, "Bye");
  EXPECT_FALSE(r->logprobs);
  EXPECT_TRUE(r->add_generation_prompt);
  EXPECT_EQ(r->common.model, "m");
}

TEST(ParseChatTest, MaxCompletionTokensWinsAndLogprobs) {
  auto r = ParseChatRequest(
      R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
          "max_completion_tokens": 9, "logprobs": true, "top_logprobs": 2,
          "response_format": {"type": "text"}, "tool_choice": "none", "tools": [],
          "parallel_tool_calls": true, "add_generation_prompt": false})",
      kLimits);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->common.max_tokens, 9);
  EXPECT_TRUE(r->logprobs);
  EXPECT_EQ(r->top_logprobs, 2);
  EXPECT_FALSE(r->add_generation_prompt);
  r = ParseChatRequest(R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5})",
                       kLimits);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->common.max_tokens, 5);
}

TEST(ParseChatTest, EveryFieldError) {
  ExpectErrors(
      true,
      {
          {"{{", nullptr, "not valid JSON"},
          {R"({})", "messages", "'messages' is required"},
          {R"({"messages": "hello"})", "messages", "must be an array, got a string"},
          {R"({"messages": []})", "messages", "must not be empty"},
          {R"({"messages": ["hi"]})", "messages[0]", "must be an object"},
          {R"({"messages": [{"content": "x"}]})", "messages[0].role", "needs a 'role'"},
          {R"({"messages": [{"role": 1, "content": "x"}]})", "messages[0].role",
           "must be a string"},
          {R"({"messages": [{"role": "tool", "content": "x"}]})", "messages[0].role",
           "role 'tool' is not supported"},
          {R"({"messages": [{"role": "user"}]})", "messages[0].content", "needs 'content'"},
          {R"({"messages": [{"role": "user", "content": 3}]})", "messages[0].content",
           "a string or an array of content parts"},
          {R"({"messages": [{"role": "user", "content": ["x"]}]})", "messages[0].content[0]",
           "must be an object"},
          {R"({"messages": [{"role": "user", "content": [{"type": "image_url",
              "image_url": {"url": "http://x"}}]}]})",
           "messages[0].content[0].type", "'image_url' is not supported"},
          {R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})",
           "messages[0].content[0].text", "needs 'text'"},
          {R"({"messages": [{"role": "user", "content": [{"text": "x"}]}]})",
           "messages[0].content[0].type", "need a 'type'"},
          {R"({"messages": [{"role": "user", "content": "x", "mood": "happy"}]})",
           "messages[0].mood", "unrecognized request argument 'messages[0].mood'"},
          {R"({"messages": [{"role": "assistant", "content": null, "tool_calls": [{}]}]})",
           "messages[0].tool_calls", "not supported"},
          {R"({"messages": [{"role": "user", "content": "x"}, 5]})", "messages[1]",
           "must be an object"},
          {R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", "top_logprobs",
           "requires 'logprobs' to be true"},
          {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true,
              "top_logprobs": 21})",
           "top_logprobs", "between 0 and 20"},
          {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 1})", "logprobs",
           "must be a boolean"},
          {R"({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0})",
           "max_completion_tokens", ">= 1"},
          {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})", "max_tokens",
           ">= 1"},
          {R"({"messages": [{"role": "user", "content": "x"}], "temperature": -1})", "temperature",
           "between 0 and 2"},
          {R"({"messages": [{"role": "user", "content": "x"}], "n": 100})", "n", "between 1 and 8"},
          {R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})",
           "tools", "not supported"},
          {R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})",
           "tool_choice", "not supported"},
          {R"({"messages": [{"role": "user", "content": "x"}],
              "response_format": {"type": "json_object"}})",
           "response_format", "not supported"},
          {R"({"messages": [{"role": "user", "content": "x"}], "echo": true})", "echo",
           "unrecognized request argument"},
          {R"({"messages": [{"role": "user", "content": "x"}], "prompt": "x"})", "prompt",
           "unrecognized request argument"},
      });
}

TEST(ProtocolTest, ToGenerationRequestCopiesEveryField) {
  CommonParams p;
  p.sampling.temperature = 0.3f;
  p.sampling.seed = 5;
  p.stop = {"x"};
  p.n = 3;
  p.ignore_eos = true;
  p.kv_prefill_chunk_tokens = 32;
  engine::GenerationRequest g = ToGenerationRequest(p, "id-1", {1, 2}, 11, 4, true);
  EXPECT_EQ(g.request_id, "id-1");
  EXPECT_EQ(g.prompt, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(g.max_tokens, 11);
  EXPECT_FLOAT_EQ(g.sampling.temperature, 0.3f);
  EXPECT_EQ(g.sampling.seed, 5u);
  EXPECT_EQ(g.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(g.n, 3);
  EXPECT_TRUE(g.ignore_eos);
  EXPECT_EQ(g.logprobs, 4);
  EXPECT_TRUE(g.prompt_logprobs);
  EXPECT_EQ(g.prefill_chunk_tokens, 32);
}

TEST(ProtocolTest, RandomIdsHavePrefixAndDiffer) {
  const std::string a = RandomId("cmpl-"), b = RandomId("cmpl-");
  EXPECT_EQ(a.rfind("cmpl-", 0), 0u);
  EXPECT_EQ(a.size(), 5u + 24u);
  EXPECT_NE(a, b);
}

// --- serialisation -----------------------------------------------------------

std::string Piece(int32_t id) { return "<" + std::to_string(id) + ">"; }

engine::TokenLogprob Lp(int32_t token, std::string text, float logprob,
                        std::vector<std::pair<int32_t, float>> top = {}) {
  engine::TokenLogprob t;
  t.token = token;
  t.text = std::move(text);
  t.logprob = logprob;
  t.top = std::move(top);
  return t;
}

TEST(SerialiseTest, TokenDisplayAndDumpNeverThrowOnBadUtf8) {
  EXPECT_EQ(TokenDisplayString("hé"), "hé");
  EXPECT_EQ(TokenDisplayString("\xe2\x80"), "bytes:\\xe2\\x80");
  EXPECT_EQ(TokenDisplayString("a\xff"), "bytes:\\x61\\xff");
  EXPECT_EQ(TokenDisplayString("\xed\xa0\x80"), "bytes:\\xed\\xa0\\x80");  // a surrogate
  json j = {{"text", std::string("ok\xff\xfe")}};
  std::string dumped;
  ASSERT_NO_THROW(dumped = DumpJson(j));
  EXPECT_THAT(dumped, HasSubstr("ok\xef\xbf\xbd"));  // U+FFFD
}

TEST(SerialiseTest, FinishReasonsAndUsage) {
  EXPECT_EQ(FinishReasonJson(engine::FinishReason::kStop), "stop");
  EXPECT_EQ(FinishReasonJson(engine::FinishReason::kLength), "length");
  EXPECT_TRUE(FinishReasonJson(engine::FinishReason::kNone).is_null());
  EXPECT_TRUE(FinishReasonJson(engine::FinishReason::kAbort).is_null());
  EXPECT_EQ(UsageJson(3, 4),
            json({{"prompt_tokens", 3}, {"completion_tokens", 4}, {"total_tokens", 7}}));
  const KvUsage kv{1000, 4000, 2};
  const json u = UsageJson(3, 4, &kv);
  EXPECT_EQ(u["prompt_tokens_details"], json({{"cached_tokens", 2}}));
  EXPECT_EQ(u["kv_bytes"], 1000);
  EXPECT_EQ(u["kv_bytes_uncompressed"], 4000);
  EXPECT_DOUBLE_EQ(u["kv_compression_ratio"].get<double>(), 0.25);
  EXPECT_DOUBLE_EQ(UsageJson(1, 1, &kNoKv)["kv_compression_ratio"].get<double>(), 1.0);
}

TEST(SerialiseTest, CompletionLogprobsFormat) {
  int offset = 0;
  json j = CompletionLogprobsJson(
      {Lp(1, "Hé", -0.5f, {{1, -0.5f}, {2, -1.5f}}), Lp(2, "\xe2\x82", -1.0f, {{9, -0.25f}}),
       Lp(3, "\xac!", -std::numeric_limits<float>::infinity())},
      Piece, &offset);
  EXPECT_EQ(j["tokens"], json({"Hé", "bytes:\\xe2\\x82", "bytes:\\xac\\x21"}));
  EXPECT_EQ(j["token_logprobs"], json({-0.5, -1.0, -9999.0}));
  // Alternatives by text, the chosen token always among them.
  EXPECT_EQ(j["top_logprobs"][0], json({{"<1>", -0.5}, {"<2>", -1.5}, {"Hé", -0.5}}));
  EXPECT_EQ(j["top_logprobs"][1], json({{"<9>", -0.25}, {"bytes:\\xe2\\x82", -1.0}}));
  // Offsets count characters; the euro sign split over two tokens counts once.
  EXPECT_EQ(j["text_offset"], json({0, 2, 3}));
  EXPECT_EQ(offset, 4);

  offset = 10;
  j = CompletionLogprobsJson({Lp(5, "A", 0.0f), Lp(6, "B", -2.0f)}, Piece, &offset,
                             /*first_unscored=*/true);
  EXPECT_TRUE(j["token_logprobs"][0].is_null());
  EXPECT_TRUE(j["top_logprobs"][0].is_null());
  EXPECT_EQ(j["token_logprobs"][1], -2.0);
  EXPECT_EQ(j["text_offset"], json({10, 11}));
}

TEST(SerialiseTest, ChatLogprobsFormat) {
  json j = ChatLogprobsJson({Lp(1, "Hi", -0.1f, {{1, -0.1f}, {2, -2.5f}})}, Piece);
  ASSERT_EQ(j["content"].size(), 1u);
  const json& t = j["content"][0];
  EXPECT_EQ(t["token"], "Hi");
  EXPECT_FLOAT_EQ(t["logprob"].get<float>(), -0.1f);
  EXPECT_EQ(t["bytes"], json({72, 105}));
  ASSERT_EQ(t["top_logprobs"].size(), 2u);
  EXPECT_EQ(t["top_logprobs"][1]["token"], "<2>");
  EXPECT_EQ(t["top_logprobs"][1]["bytes"], json({60, 50, 62}));
}

engine::StreamEvent Event(int choice, std::string text,
                          engine::FinishReason finish = engine::FinishReason::kNone,
                          int completion_tokens = 0) {
  engine::StreamEvent e;
  e.choice = choice;
  e.text = std::move(text);
  e.finish = finish;
  e.completion_tokens = completion_tokens;
  return e;
}

TEST(CollectorTest, FoldsChoicesAndReportsFailures) {
  ResponseCollector c(2);
  EXPECT_TRUE(c.Add(Event(0, "Hel")).ok());
  EXPECT_TRUE(c.Add(Event(1, "Bye")).ok());
  EXPECT_FALSE(c.AllFinished());
  engine::StreamEvent last0 = Event(0, "lo", engine::FinishReason::kStop, 2);
  last0.cached_tokens = 32;
  engine::StreamEvent last1 = Event(1, "", engine::FinishReason::kLength, 5);
  last1.cached_tokens = 32;
  EXPECT_TRUE(c.Add(last0).ok());
  EXPECT_TRUE(c.Add(last1).ok());
  EXPECT_TRUE(c.AllFinished());
  EXPECT_EQ(c.kv_usage().cached_tokens, 32);  // one prompt, counted once
  EXPECT_EQ(c.choices()[0].text, "Hello");
  EXPECT_EQ(c.choices()[0].finish, engine::FinishReason::kStop);
  EXPECT_EQ(c.completion_tokens(), 7);

  ResponseCollector bad(1);
  EXPECT_EQ(bad.Add(Event(3, "x")).code(), absl::StatusCode::kInternal);
  engine::StreamEvent err = Event(0, "", engine::FinishReason::kError);
  err.error = absl::InternalError("forward pass failed");
  EXPECT_EQ(bad.Add(err).message(), "forward pass failed");
  ResponseCollector aborted(1);
  EXPECT_EQ(aborted.Add(Event(0, "", engine::FinishReason::kAbort)).code(),
            absl::StatusCode::kUnavailable);
}

TEST(ResponseJsonTest, CompletionWithEchoAndLogprobs) {
  ResponseCollector c(1);
  engine::StreamEvent e = Event(0, " world", engine::FinishReason::kLength, 1);
  e.logprobs = {Lp(7, " world", -0.5f)};
  e.prompt_logprobs = {Lp(4, "lo", -3.0f)};
  ASSERT_TRUE(c.Add(e).ok());
  ResponseOptions o;
  o.logprobs = true;
  o.echo = true;
  o.echo_text = "Hello";
  o.prompt = {3, 4};
  o.prompt_tokens = 2;
  json j = CompletionResponseJson({"cmpl-1", 123, "m"}, c, o, [](int32_t id) {
    return id == 3 ? std::string("Hel") : Piece(id);
  });
  EXPECT_EQ(j["id"], "cmpl-1");
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["created"], 123);
  EXPECT_EQ(j["model"], "m");
  const json& ch = j["choices"][0];
  EXPECT_EQ(ch["index"], 0);
  EXPECT_EQ(ch["text"], "Hello world");
  EXPECT_EQ(ch["finish_reason"], "length");
  EXPECT_EQ(ch["logprobs"]["tokens"], json({"Hel", "lo", " world"}));
  EXPECT_TRUE(ch["logprobs"]["token_logprobs"][0].is_null());
  EXPECT_EQ(ch["logprobs"]["token_logprobs"][1], -3.0);
  EXPECT_EQ(ch["logprobs"]["text_offset"], json({0, 3, 5}));
  EXPECT_EQ(j["usage"], UsageJson(2, 1, &kNoKv));
}

TEST(ResponseJsonTest, ChatWithTwoChoices) {
  ResponseCollector c(2);
  ASSERT_TRUE(c.Add(Event(1, "B", engine::FinishReason::kLength, 1)).ok());
  ASSERT_TRUE(c.Add(Event(0, "A", engine::FinishReason::kStop, 2)).ok());
  ResponseOptions o;
  o.prompt_tokens = 10;
  json j = ChatResponseJson({"chatcmpl-1", 5, "m"}, c, o, Piece);
  EXPECT_EQ(j["object"], "chat.completion");
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][0]["message"], json({{"role", "assistant"}, {"content", "A"}}));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["choices"][1]["finish_reason"], "length");
  EXPECT_EQ(j["usage"], UsageJson(10, 3, &kNoKv));
}

// --- server-sent events ------------------------------------------------------

// The JSON payloads of an SSE text; "[DONE]" kept as a string.
std::vector<json> SseChunks(const std::string& sse) {
  std::vector<json> out;
  size_t pos = 0;
  while (pos < sse.size()) {
    const size_t end = sse.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "unterminated event";
    if (end == std::string::npos) break;
    const std::string event = sse.substr(pos, end - pos);
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
    const std::string data = event.substr(6);
    out.push_back(data == "[DONE]" ? json("[DONE]") : json::parse(data));
    pos = end + 2;
  }
  return out;
}

TEST(StreamFormatterTest, CompletionChunksUsageAndDone) {
  ResponseOptions o;
  o.prompt_tokens = 4;
  o.include_usage = true;
  StreamFormatter f(StreamFormatter::Kind::kCompletion, {"cmpl-9", 1, "m"}, 1, o, Piece);
  std::string sse;
  for (const engine::StreamEvent& e : {Event(0, "Hel"), Event(0, ""), Event(0, "lo"),
                                       Event(0, "", engine::FinishReason::kLength, 3)}) {
    auto text = f.OnEvent(e);
    ASSERT_TRUE(text.ok()) << text.status();
    sse += *text;
  }
  sse += f.Finish();
  std::vector<json> chunks = SseChunks(sse);
  ASSERT_EQ(chunks.size(), 5u);  // the empty event makes no chunk
  EXPECT_EQ(chunks[0]["choices"][0]["text"], "Hel");
  EXPECT_TRUE(chunks[0]["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(chunks[0].contains("usage") && chunks[0]["usage"].is_null());
  EXPECT_EQ(chunks[0]["object"], "text_completion");
  EXPECT_EQ(chunks[0]["id"], "cmpl-9");
  EXPECT_EQ(chunks[1]["choices"][0]["text"], "lo");
  EXPECT_EQ(chunks[2]["choices"][0]["text"], "");
  EXPECT_EQ(chunks[2]["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(chunks[3]["choices"], json::array());
  EXPECT_EQ(chunks[3]["usage"], UsageJson(4, 3, &kNoKv));
  EXPECT_EQ(chunks[4], "[DONE]");
}

TEST(StreamFormatterTest, NoUsageKeyWithoutIncludeUsage) {
  StreamFormatter f(StreamFormatter::Kind::kCompletion, {"cmpl-9", 1, "m"}, 1, {}, Piece);
  auto text = f.OnEvent(Event(0, "x", engine::FinishReason::kStop, 1));
  ASSERT_TRUE(text.ok());
  std::vector<json> chunks = SseChunks(*text + f.Finish());
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_FALSE(chunks[0].contains("usage"));
  EXPECT_EQ(chunks[1], "[DONE]");
}

TEST(StreamFormatterTest, ChatRoleFirstThenContentPerChoice) {
  StreamFormatter f(StreamFormatter::Kind::kChat, {"chatcmpl-1", 1, "m"}, 2, {}, Piece);
  std::string sse;
  for (const engine::StreamEvent& e :
       {Event(0, "Hi"), Event(1, "Yo"), Event(0, "", engine::FinishReason::kStop, 1),
        Event(1, "!", engine::FinishReason::kLength, 2)}) {
    auto text = f.OnEvent(e);
    ASSERT_TRUE(text.ok());
    sse += *text;
  }
  sse += f.Finish();
  std::vector<json> c = SseChunks(sse);
  ASSERT_EQ(c.size(), 7u);
  EXPECT_EQ(c[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(c[0]["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_EQ(c[1]["choices"][0]["delta"], json({{"content", "Hi"}}));
  EXPECT_EQ(c[2]["choices"][0]["index"], 1);
  EXPECT_EQ(c[2]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(c[3]["choices"][0]["delta"], json({{"content", "Yo"}}));
  EXPECT_EQ(c[4]["choices"][0]["delta"], json::object());
  EXPECT_EQ(c[4]["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(c[5]["choices"][0]["delta"], json({{"content", "!"}}));
  EXPECT_EQ(c[5]["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(c[6], "[DONE]");
}

TEST(StreamFormatterTest, ChatLogprobsRideOnContentChunks) {
  ResponseOptions o;
  o.logprobs = true;
  StreamFormatter f(StreamFormatter::Kind::kChat, {"c", 1, "m"}, 1, o, Piece);
  engine::StreamEvent e = Event(0, "Hi");
  e.logprobs = {Lp(1, "Hi", -0.5f, {{1, -0.5f}})};
  auto text = f.OnEvent(e);
  ASSERT_TRUE(text.ok());
  std::vector<json> c = SseChunks(*text);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_TRUE(c[0]["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(c[1]["choices"][0]["logprobs"]["content"][0]["token"], "Hi");
}

TEST(StreamFormatterTest, CompletionEchoComesFirst) {
  ResponseOptions o;
  o.echo = true;
  o.echo_text = "Say";
  StreamFormatter f(StreamFormatter::Kind::kCompletion, {"c", 1, "m"}, 1, o, Piece);
  auto text = f.OnEvent(Event(0, " hi"));
  ASSERT_TRUE(text.ok());
  std::vector<json> c = SseChunks(*text);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0]["choices"][0]["text"], "Say");
  EXPECT_EQ(c[1]["choices"][0]["text"], " hi");
}

TEST(StreamFormatterTest, FailuresBecomeAnErrorEvent) {
  StreamFormatter f(StreamFormatter::Kind::kCompletion, {"c", 1, "m"}, 1, {}, Piece);
  engine::StreamEvent e = Event(0, "", engine::FinishReason::kError);
  e.error = absl::InternalError("forward pass failed");
  auto text = f.OnEvent(e);
  ASSERT_FALSE(text.ok());
  std::vector<json> c = SseChunks(StreamFormatter::ErrorEvent(text.status()));
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0]["error"]["message"], "forward pass failed");
  EXPECT_EQ(c[0]["error"]["type"], "server_error");
  EXPECT_EQ(f.OnEvent(Event(0, "", engine::FinishReason::kAbort)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(f.OnEvent(Event(2, "x")).status().code(), absl::StatusCode::kInternal);
}

// --- fuzz --------------------------------------------------------------------

// Truncations, byte flips and random garbage of valid bodies: the parsers
// must answer OK or InvalidArgument, never crash or throw.
TEST(ProtocolFuzzTest, ParsersSurviveMangledInput) {
  const std::vector<std::string> seeds = {
      R"({"model": "m", "prompt": ["abc"], "max_tokens": 5, "temperature": 0.7, "top_p": 0.9,
          "n": 2, "stop": ["x", "y"], "logprobs": 2, "echo": true, "stream": true,
          "stream_options": {"include_usage": true}, "seed": 3})",
      R"({"prompt": [1, 2, 3], "best_of": 1, "logit_bias": {}, "suffix": null})",
      R"({"model": "m", "messages": [{"role": "system", "content": "s"},
          {"role": "user", "content": [{"type": "text", "text": "hé"}]}],
          "max_completion_tokens": 3, "logprobs": true, "top_logprobs": 1})",
  };
  std::mt19937 rng(12345);
  auto check = [](const std::string& body) {
    for (bool chat : {false, true}) {
      absl::Status s = chat ? ParseChatRequest(body, kLimits).status()
                            : ParseCompletionRequest(body, kLimits).status();
      ASSERT_TRUE(s.ok() || s.code() == absl::StatusCode::kInvalidArgument) << s;
      if (!s.ok()) {
        // The error body must serialise whatever the input was.
        ASSERT_NO_THROW(DumpJson(OpenAiErrorBody(s)));
      }
    }
  };
  const std::string alphabet = "{}[]\",:0123456789.-+eEtruefalsn \\\x01\xff\xc3\xa9";
  for (const std::string& seed : seeds) {
    for (size_t cut = 0; cut <= seed.size(); ++cut) check(seed.substr(0, cut));
    for (int i = 0; i < 3000; ++i) {
      std::string b = seed;
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int k = 0; k < edits; ++k) {
        const size_t pos = rng() % (b.size() + 1);
        const char c = alphabet[rng() % alphabet.size()];
        switch (rng() % 3) {
          case 0:
            if (pos < b.size()) b[pos] = c;
            break;
          case 1:
            b.insert(b.begin() + pos, c);
            break;
          default:
            if (pos < b.size()) b.erase(pos, 1);
        }
      }
      check(b);
    }
  }
  for (int i = 0; i < 2000; ++i) {
    std::string b(rng() % 64, '\0');
    for (char& c : b) c = static_cast<char>(rng());
    check(b);
  }
  // Deep nesting must not exhaust the stack.
  check(std::string(100000, '[') + std::string(100000, ']'));
  check(R"({"prompt": )" + std::string(100000, '[') + "1" + std::string(100000, ']') + "}");
  check(R"({"messages": [{"role": "user", "content": )" + std::string(50000, '[') +
        std::string(50000, ']') + "}]}");
}

}  // namespace
}  // namespace kvserve::server
