// Pre-tokenization: splitting text into the "words" that byte-level BPE
// merges within, by the regular expression a model's tokenizer names
// (GGUF key tokenizer.ggml.pre).
//
// The patterns are matched by hand-written scanners rather than a regex
// engine (std::regex has no \p{..} classes and is slow). Their semantics are
// those of llama.cpp's tokenizer, which the token ids must match exactly:
//   * \s is the Unicode White_Space property, \p{L} / \p{N} general
//     categories L* / N* (Unicode 15.1; see unicode.h).
//   * "\s+(?!\S)" followed by a non-space takes all but the last whitespace
//     code point, which then joins the next word (e.g. " x" or "\tx").
//   * Case-insensitive contractions ((?i:'s|...)) fold ASCII only; no other
//     code point lower-cases to those letters.
//
// Supported names (aliases llama.cpp maps to the same pattern in brackets):
//   "gpt-2"               's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
//   ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ "smollm" [starcoder]  every \p{N} code point alone first, then
//   the gpt-2 pattern on the rest "llama-bpe" [llama3, llama-v3]
//       (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//       ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   "qwen2"               as llama-bpe but \p{N} instead of \p{N}{1,3}
//
// Thread-safety: stateless functions, safe to call concurrently.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvserve::tokenizer {

enum class PreTokenizerType {
  kGpt2,
  kSmolLm,  // a.k.a. starcoder: digits split individually, then gpt-2
  kLlama3,
  kQwen2,
};

// Maps a tokenizer.ggml.pre value to its pattern. Unknown names are an
// Unimplemented error that names the value and lists the supported ones:
// guessing a pattern would silently produce wrong token ids.
absl::StatusOr<PreTokenizerType> PreTokenizerTypeFromName(std::string_view name);

// Canonical name of `type` ("gpt-2", "smollm", "llama-bpe", "qwen2").
std::string_view PreTokenizerName(PreTokenizerType type);

// Splits `cps` into words and appends their lengths, in code points, to
// `word_lengths`. The lengths are all > 0 and sum to cps.size().
void PreTokenize(PreTokenizerType type, std::u32string_view cps,
                 std::vector<uint32_t>* word_lengths);

// Convenience for tests: the words as UTF-8 strings.
std::vector<std::string> PreTokenizeToStrings(PreTokenizerType type, std::string_view text);

}  // namespace kvserve::tokenizer
