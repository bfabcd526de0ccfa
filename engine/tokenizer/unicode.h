// UTF-8 decoding/encoding and the code-point classes (\p{L}, \p{N}, \s) that
// the pre-tokenizer patterns need.
//
// Decoding follows llama.cpp's tokenizer exactly, because token ids must
// match it: a lead byte with enough continuation bytes is decoded without
// rejecting overlong forms or surrogates; every byte that does not start such
// a sequence becomes one U+FFFD on its own. (The one deliberate difference: a
// 4-byte form above U+10FFFF, on which llama.cpp throws, is treated as an
// invalid lead byte.)
//
// Thread-safety: all functions are safe to call concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvserve::tokenizer {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// Code-point class bits returned by CodepointFlags().
enum CodepointFlag : uint8_t {
  kFlagLetter = 1,      // \p{L}
  kFlagNumber = 2,      // \p{N}
  kFlagWhitespace = 4,  // \s: the Unicode White_Space property
};

// Bitwise OR of CodepointFlag for `cp`; 0 for anything else, including
// values above U+10FFFF.
uint8_t CodepointFlags(char32_t cp);
inline bool IsLetter(char32_t cp) { return CodepointFlags(cp) & kFlagLetter; }
inline bool IsNumber(char32_t cp) { return CodepointFlags(cp) & kFlagNumber; }
inline bool IsWhitespace(char32_t cp) { return CodepointFlags(cp) & kFlagWhitespace; }

// Decodes `text` with the lenient llama.cpp rules above, appending to `out`.
void DecodeUtf8Lenient(std::string_view text, std::u32string* out);
std::u32string DecodeUtf8Lenient(std::string_view text);

// Appends the UTF-8 form of `cp` (<= U+10FFFF; surrogates are encoded as
// 3 bytes like any other BMP value).
void AppendUtf8(char32_t cp, std::string* out);

// Length of the longest prefix of `bytes` that ends on a character boundary,
// i.e. excludes a trailing incomplete-but-so-far-valid UTF-8 sequence (at
// most 3 bytes). Invalid bytes count as complete (they are not held back).
size_t CompleteUtf8Prefix(std::string_view bytes);

// Returns `bytes` with every ill-formed subsequence replaced by one U+FFFD
// (strict UTF-8: no overlongs, surrogates or values above U+10FFFF; the
// "maximal subpart" rule of Unicode chapter 3). Valid input is unchanged.
std::string SanitizeUtf8(std::string_view bytes);

}  // namespace kvserve::tokenizer
