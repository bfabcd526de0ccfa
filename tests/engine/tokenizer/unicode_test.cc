#include "engine/tokenizer/unicode.h"

#include <string>

#include "engine/tokenizer/unicode_tables.h"
#include "gtest/gtest.h"

namespace kvserve::tokenizer {
namespace {

TEST(TokenizerUnicodeTest, TablesAreSortedAndDisjoint) {
  using internal::CodepointRange;
  for (auto [table, size] : {std::pair<const CodepointRange*, size_t>{internal::kLetterRanges,
                                                                      internal::kLetterRangesSize},
                             {internal::kNumberRanges, internal::kNumberRangesSize},
                             {internal::kWhitespaceRanges, internal::kWhitespaceRangesSize}}) {
    ASSERT_GT(size, 0u);
    for (size_t i = 0; i < size; ++i) {
      EXPECT_LE(table[i].first, table[i].last);
      EXPECT_LE(table[i].last, 0x10FFFFu);
      // Adjacent ranges would have been merged by the generator.
      if (i > 0) {
        EXPECT_GT(table[i].first, table[i - 1].last + 1);
      }
    }
  }
  EXPECT_STREQ(internal::kUnicodeVersion, "15.1.0");
}

TEST(TokenizerUnicodeTest, Letters) {
  for (char32_t cp : {U'A', U'z', U'é', U'ß', U'Ω', U'Ж', U'中', U'ア', U'한', U'ا', U'ǅ', U'ª'}) {
    EXPECT_TRUE(IsLetter(cp)) << std::hex << static_cast<uint32_t>(cp);
    EXPECT_FALSE(IsNumber(cp));
  }
  for (char32_t cp : {U'0', U' ', U'_', U'\'', U'😀', U'\u0301', U'\u200d', U'€'}) {
    EXPECT_FALSE(IsLetter(cp)) << std::hex << static_cast<uint32_t>(cp);
  }
  EXPECT_TRUE(IsLetter(0x2EBF0));    // CJK Extension I, new in Unicode 15.1
  EXPECT_FALSE(IsLetter(0x1C89));    // assigned only in Unicode 16.0
  EXPECT_TRUE(IsLetter(0x20000));    // supplementary plane: binary-search path
  EXPECT_FALSE(IsLetter(0x110000));  // beyond Unicode
}

TEST(TokenizerUnicodeTest, Numbers) {
  // \p{N} covers Nd, Nl and No, not just ASCII digits.
  for (char32_t cp : {U'0', U'9', U'٣', U'①', U'½', U'Ⅻ', U'²', U'𝟘'}) {
    EXPECT_TRUE(IsNumber(cp)) << std::hex << static_cast<uint32_t>(cp);
  }
  for (char32_t cp : {U'a', U'.', U',', U'+'}) EXPECT_FALSE(IsNumber(cp));
}

TEST(TokenizerUnicodeTest, WhitespaceIsTheWhiteSpaceProperty) {
  for (char32_t cp :
       {U'\t', U'\n', U'\v', U'\f', U'\r', U' ', U'\u0085', U'\u00a0', U'\u1680', U'\u2000',
        U'\u200a', U'\u2028', U'\u2029', U'\u202f', U'\u205f', U'\u3000'}) {
    EXPECT_TRUE(IsWhitespace(cp)) << std::hex << static_cast<uint32_t>(cp);
  }
  // Python's str.isspace() also accepts U+001C..U+001F; White_Space does not.
  for (char32_t cp : {U'\x1c', U'\x1f', U'\u200b', U'\u180e', U'\ufeff', U'a'}) {
    EXPECT_FALSE(IsWhitespace(cp)) << std::hex << static_cast<uint32_t>(cp);
  }
}

TEST(TokenizerUnicodeTest, DecodesValidUtf8) {
  EXPECT_EQ(DecodeUtf8Lenient("a\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80"),
            (std::u32string{U'a', U'é', U'中', U'😀'}));
  EXPECT_EQ(DecodeUtf8Lenient(""), std::u32string());
}

TEST(TokenizerUnicodeTest, EachInvalidByteBecomesOneReplacementChar) {
  const char32_t R = kReplacementChar;
  EXPECT_EQ(DecodeUtf8Lenient("\xFF"), (std::u32string{R}));
  EXPECT_EQ(DecodeUtf8Lenient("a\x80"
                              "b"),
            (std::u32string{U'a', R, U'b'}));
  // A truncated sequence: the lead and each continuation byte separately.
  EXPECT_EQ(DecodeUtf8Lenient("\xE2\x82"), (std::u32string{R, R}));
  EXPECT_EQ(DecodeUtf8Lenient("\xF0\x9F\x98"
                              "x"),
            (std::u32string{R, R, R, U'x'}));
  // Above U+10FFFF.
  EXPECT_EQ(DecodeUtf8Lenient("\xF4\x90\x80\x80"), (std::u32string{R, R, R, R}));
}

TEST(TokenizerUnicodeTest, LenientLikeLlamaCppOnOverlongsAndSurrogates) {
  // llama.cpp decodes these without validation; token ids depend on it.
  EXPECT_EQ(DecodeUtf8Lenient(std::string("\xC0\x80", 2)), (std::u32string{U'\0'}));
  EXPECT_EQ(DecodeUtf8Lenient("\xED\xA0\x80"), (std::u32string{static_cast<char32_t>(0xD800)}));
}

TEST(TokenizerUnicodeTest, AppendUtf8RoundTrips) {
  for (char32_t cp : {0x0u, 0x7Fu, 0x80u, 0x7FFu, 0x800u, 0xFFFFu, 0x10000u, 0x10FFFFu}) {
    std::string s;
    AppendUtf8(cp, &s);
    EXPECT_EQ(DecodeUtf8Lenient(s), std::u32string(1, cp)) << std::hex << static_cast<uint32_t>(cp);
  }
}

TEST(TokenizerUnicodeTest, CompleteUtf8PrefixHoldsBackIncompleteTail) {
  EXPECT_EQ(CompleteUtf8Prefix(""), 0u);
  EXPECT_EQ(CompleteUtf8Prefix("abc"), 3u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xC3"), 1u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xC3\xA9"), 3u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xF0\x9F\x98"), 1u);
  EXPECT_EQ(CompleteUtf8Prefix("\xF0\x9F\x98\x80"), 4u);
  // Invalid tails can never complete, so they are not held back.
  EXPECT_EQ(CompleteUtf8Prefix("a\x80"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xFF"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xE0\x80"), 3u);  // E0 needs A0..BF next
  EXPECT_EQ(CompleteUtf8Prefix("a\xC0"), 2u);      // C0 never starts a character
}

TEST(TokenizerUnicodeTest, SanitizeReplacesMaximalIllFormedSubparts) {
  EXPECT_EQ(SanitizeUtf8("plain \xC3\xA9 text"), "plain \xC3\xA9 text");
  EXPECT_EQ(SanitizeUtf8("\xE2\x82"
                         "b"),
            "\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(SanitizeUtf8("\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(SanitizeUtf8("\xC0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");                  // overlong
  EXPECT_EQ(SanitizeUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
}

}  // namespace
}  // namespace kvserve::tokenizer
