// Checks the tokenizer on the real SmolLM2 vocabulary against ids produced by
// llama.cpp (tests/fixtures/tokenizer_reference.json, written by
// scripts/make_reference_fixtures.py) and against jinja2 renderings of the
// model's chat template.
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "engine/gguf/gguf_file.h"
#include "engine/tokenizer/chat_template.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/unicode.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/model_path.h"

namespace kvserve::tokenizer {
namespace {

constexpr char kFixturePath[] = "tests/fixtures/tokenizer_reference.json";
constexpr char kWikiTextPath[] = "../shared/data/wikitext-2-raw/wiki.test.raw";

class TokenizerReferenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string path = kvserve::testing::ModelPath();
    if (path.empty()) FAIL() << kvserve::testing::ModelMissingMessage();
    auto file = gguf::GgufFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = *std::move(file);
    auto tok = Tokenizer::FromGguf(*file_);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = *std::move(tok);
  }

  // True when every byte of `s` has a byte token; only then can decoding
  // restore `s` (SmolLM2 has none for e.g. 0x04 or 0xF1, and llama.cpp
  // drops such bytes too).
  bool AllBytesRepresentable(const std::string& s) const {
    for (char c : s) {
      if (tok_->Find(std::string(1, c)) < 0) return false;
    }
    return true;
  }

  std::unique_ptr<gguf::GgufFile> file_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(TokenizerReferenceTest, VocabMetadata) {
  EXPECT_EQ(tok_->n_vocab(), 49152);
  EXPECT_EQ(tok_->vocab().pre, "smollm");
  EXPECT_EQ(tok_->vocab().merges.size(), 48900u);
  EXPECT_EQ(tok_->bos_id(), 1);
  EXPECT_EQ(tok_->eos_id(), 2);
  EXPECT_FALSE(tok_->add_bos());
  EXPECT_EQ(tok_->TokenToPiece(2), "<|im_end|>");
  EXPECT_EQ(tok_->Find("<|im_start|>"), 1);
  EXPECT_TRUE(tok_->IsControl(1));
  EXPECT_TRUE(tok_->IsEog(2));  // <|im_end|>
  EXPECT_TRUE(tok_->IsEog(0));  // <|endoftext|>
  EXPECT_FALSE(tok_->IsEog(1));
  EXPECT_EQ(tok_->Encode("Hello world", false, true), (std::vector<int32_t>{19556, 905}));
}

TEST_F(TokenizerReferenceTest, MatchesLlamaCppIds) {
  std::ifstream in(kFixturePath);
  if (!in) {
    FAIL() << "missing " << kFixturePath
           << " (run from the repository root; it is produced by "
              "scripts/make_reference_fixtures.py --only tokenizer)";
  }
  const nlohmann::json fixture = nlohmann::json::parse(in);
  const auto& cases = fixture.at("cases");
  ASSERT_GT(cases.size(), 0u);
  int round_trips = 0;
  for (const auto& c : cases) {
    const std::string name = c.value("name", std::string("?"));
    const std::string text = c.at("text").get<std::string>();
    const bool add_bos = c.at("add_bos").get<bool>();
    const bool parse_special = c.at("parse_special").get<bool>();
    const std::vector<int32_t> expected = c.at("ids").get<std::vector<int32_t>>();
    const std::vector<int32_t> ids = tok_->Encode(text, add_bos, parse_special);
    EXPECT_EQ(ids, expected) << "case " << name;

    std::string decoded, decoded_special;
    ASSERT_TRUE(absl::Base64Unescape(c.at("decoded_b64").get<std::string>(), &decoded)) << name;
    ASSERT_TRUE(
        absl::Base64Unescape(c.at("decoded_special_b64").get<std::string>(), &decoded_special))
        << name;
    EXPECT_EQ(tok_->Decode(expected, /*skip_special=*/true), decoded) << "case " << name;
    EXPECT_EQ(tok_->Decode(expected, /*skip_special=*/false), decoded_special) << "case " << name;

    if (!add_bos && AllBytesRepresentable(text)) {
      EXPECT_EQ(tok_->Decode(ids, false), text) << "case " << name;
      ++round_trips;
    }
  }
  EXPECT_GT(round_trips, 0);
}

TEST_F(TokenizerReferenceTest, WikiTextRoundTripsAndStreams) {
  std::ifstream in(kWikiTextPath, std::ios::binary);
  if (!in) GTEST_SKIP() << "evaluation data not present: " << kWikiTextPath;
  std::string text(100 * 1024, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  // Cut at a character boundary.
  text.resize(CompleteUtf8Prefix(text));
  const std::vector<int32_t> ids = tok_->Encode(text, false, true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(tok_->Decode(ids, false), text);
  StreamingDecoder dec(tok_.get());
  std::string streamed;
  for (int32_t id : ids) streamed += dec.Push(id);
  streamed += dec.Flush();
  EXPECT_EQ(streamed, text);
}

TEST_F(TokenizerReferenceTest, ChatTemplateMatchesJinja) {
  // Expected strings: jinja2 rendering of this GGUF's tokenizer.chat_template.
  auto info = ParseChatTemplate(tok_->chat_template());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->family, ChatTemplateFamily::kChatMl);
  EXPECT_EQ(info->default_system_prompt,
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  struct Case {
    std::vector<ChatMessage> messages;
    bool add_generation_prompt;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {{{"user", "Hello!"}},
       true,
       "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
       "Face<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"},
      {{{"system", "You are a pirate."}, {"user", "Hi"}},
       true,
       "<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
       "<|im_start|>assistant\n"},
      {{{"user", "What is 2+2?"}, {"assistant", "4"}, {"user", "And 3+3?"}},
       false,
       "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
       "Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4"
       "<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n"},
  };
  for (const Case& c : cases) {
    auto text =
        ApplyChatTemplate(tok_->chat_template(), c.messages, c.add_generation_prompt,
                          tok_->TokenToPiece(tok_->bos_id()), tok_->TokenToPiece(tok_->eos_id()));
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c.expected);
    // The prompt's markup must become single control tokens.
    const std::vector<int32_t> ids = tok_->Encode(*text, false, true);
    EXPECT_EQ(ids.front(), tok_->Find("<|im_start|>"));
    EXPECT_EQ(tok_->Decode(ids, false), *text);
  }
}

}  // namespace
}  // namespace kvserve::tokenizer
