#include "engine/tokenizer/pre_tokenizer.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvserve::tokenizer {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Words = std::vector<std::string>;

Words Split(PreTokenizerType type, std::string_view text) {
  return PreTokenizeToStrings(type, text);
}

constexpr auto kGpt2 = PreTokenizerType::kGpt2;
constexpr auto kSmolLm = PreTokenizerType::kSmolLm;
constexpr auto kLlama3 = PreTokenizerType::kLlama3;
constexpr auto kQwen2 = PreTokenizerType::kQwen2;

TEST(TokenizerPreTokenizerTest, NamesAndAliases) {
  EXPECT_EQ(*PreTokenizerTypeFromName("gpt-2"), kGpt2);
  EXPECT_EQ(*PreTokenizerTypeFromName("smollm"), kSmolLm);
  EXPECT_EQ(*PreTokenizerTypeFromName("starcoder"), kSmolLm);
  EXPECT_EQ(*PreTokenizerTypeFromName("llama-bpe"), kLlama3);
  EXPECT_EQ(*PreTokenizerTypeFromName("llama3"), kLlama3);
  EXPECT_EQ(*PreTokenizerTypeFromName("qwen2"), kQwen2);
  EXPECT_EQ(PreTokenizerName(kSmolLm), "smollm");
}

TEST(TokenizerPreTokenizerTest, UnknownNameIsAnErrorNamingIt) {
  for (const char* name : {"default", "deepseek-llm", "", "SMOLLM"}) {
    auto r = PreTokenizerTypeFromName(name);
    ASSERT_FALSE(r.ok()) << name;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(absl::StrCat("'", name, "'")));
  }
}

TEST(TokenizerPreTokenizerTest, EmptyText) {
  for (auto t : {kGpt2, kSmolLm, kLlama3, kQwen2}) EXPECT_TRUE(Split(t, "").empty());
}

TEST(TokenizerPreTokenizerTest, Gpt2Words) {
  EXPECT_THAT(Split(kGpt2, "Hello world, it's 2024!"),
              ElementsAre("Hello", " world", ",", " it", "'s", " 2024", "!"));
  // Only U+0020 may lead a word; other whitespace stays separate.
  EXPECT_THAT(Split(kGpt2, "a\tb\nc"), ElementsAre("a", "\t", "b", "\n", "c"));
}

TEST(TokenizerPreTokenizerTest, Gpt2WhitespaceRunsLeaveTheLastSpaceToTheNextWord) {
  EXPECT_THAT(Split(kGpt2, "   x"), ElementsAre("  ", " x"));
  EXPECT_THAT(Split(kGpt2, "x   "), ElementsAre("x", "   "));
  EXPECT_THAT(Split(kGpt2, "\n\n\n"), ElementsAre("\n\n\n"));
  EXPECT_THAT(Split(kGpt2, "a\n\nb"), ElementsAre("a", "\n", "\n", "b"));
  EXPECT_THAT(Split(kGpt2, "a  \t b"), ElementsAre("a", "  \t", " b"));
  EXPECT_THAT(Split(kGpt2, "  !"), ElementsAre(" ", " !"));
}

TEST(TokenizerPreTokenizerTest, Gpt2ContractionsAreCaseSensitive) {
  EXPECT_THAT(Split(kGpt2, "don't we'll"), ElementsAre("don", "'t", " we", "'ll"));
  EXPECT_THAT(Split(kGpt2, "I'LL"), ElementsAre("I", "'", "LL"));
  EXPECT_THAT(Split(kGpt2, "'"), ElementsAre("'"));
}

TEST(TokenizerPreTokenizerTest, Gpt2PunctuationAndUnicode) {
  EXPECT_THAT(Split(kGpt2, "!!!???... --->"), ElementsAre("!!!???...", " --->"));
  EXPECT_THAT(Split(kGpt2, "café 中文 😀😀"), ElementsAre("café", " 中文", " 😀😀"));
  EXPECT_THAT(Split(kGpt2, "x\u00a0y"), ElementsAre("x", "\u00a0", "y"));
}

TEST(TokenizerPreTokenizerTest, SmolLmSplitsEveryDigit) {
  EXPECT_THAT(Split(kSmolLm, "1234"), ElementsAre("1", "2", "3", "4"));
  // The digit pass runs first, so " 42" cannot keep its space.
  EXPECT_THAT(Split(kSmolLm, "x 42."), ElementsAre("x", " ", "4", "2", "."));
  EXPECT_THAT(Split(kSmolLm, "3.14"), ElementsAre("3", ".", "1", "4"));
  EXPECT_THAT(Split(kSmolLm, "①②"), ElementsAre("①", "②"));
  EXPECT_THAT(Split(kSmolLm, "a1b"), ElementsAre("a", "1", "b"));
  // Chunk boundaries also cut whitespace runs: "  " before a digit is whole.
  EXPECT_THAT(Split(kSmolLm, "a  1"), ElementsAre("a", "  ", "1"));
}

TEST(TokenizerPreTokenizerTest, Llama3Words) {
  EXPECT_THAT(Split(kLlama3, "Hello world"), ElementsAre("Hello", " world"));
  EXPECT_THAT(Split(kLlama3, "1234567"), ElementsAre("123", "456", "7"));
  EXPECT_THAT(Split(kLlama3, "x 42"), ElementsAre("x", " ", "42"));
  // Any single non-letter, non-digit, non-newline may lead letters.
  EXPECT_THAT(Split(kLlama3, "(hello) \tworld"), ElementsAre("(hello", ")", " ", "\tworld"));
  EXPECT_THAT(Split(kLlama3, "I'LL don'T"), ElementsAre("I", "'LL", " don", "'T"));
}

TEST(TokenizerPreTokenizerTest, Llama3Newlines) {
  EXPECT_THAT(Split(kLlama3, "hello\n\n  world"), ElementsAre("hello", "\n\n", " ", " world"));
  EXPECT_THAT(Split(kLlama3, "foo!!\n\nbar"), ElementsAre("foo", "!!\n\n", "bar"));
  EXPECT_THAT(Split(kLlama3, "a \r\n b"), ElementsAre("a", " \r\n", " b"));
  EXPECT_THAT(Split(kLlama3, "x "), ElementsAre("x", " "));
}

TEST(TokenizerPreTokenizerTest, Qwen2SplitsDigitsIndividually) {
  EXPECT_THAT(Split(kQwen2, "1234 ab"), ElementsAre("1", "2", "3", "4", " ab"));
  EXPECT_THAT(Split(kQwen2, "x's"), ElementsAre("x", "'s"));
}

TEST(TokenizerPreTokenizerTest, WordsCoverTheTextExactly) {
  const std::string text = "  Mixed\t\ttext: 12,345.67 — naïve 'quotes' \r\n\r\n end  ";
  for (auto t : {kGpt2, kSmolLm, kLlama3, kQwen2}) {
    std::string joined;
    for (const std::string& w : Split(t, text)) {
      EXPECT_FALSE(w.empty());
      joined += w;
    }
    EXPECT_EQ(joined, text) << PreTokenizerName(t);
  }
}

}  // namespace
}  // namespace kvserve::tokenizer
