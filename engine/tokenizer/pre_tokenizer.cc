#include "engine/tokenizer/pre_tokenizer.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/string_view_compat.h"
#include "engine/tokenizer/unicode.h"

namespace kvserve::tokenizer {
namespace {

constexpr uint8_t kLetter = kFlagLetter;
constexpr uint8_t kNumber = kFlagNumber;
constexpr uint8_t kSpace = kFlagWhitespace;
constexpr uint8_t kLetterNumberSpace = kLetter | kNumber | kSpace;

// Scans one chunk [begin, end) of the code points, emitting word lengths.
// Positions at or past `end` read as "no character" (flags 0, cp 0), which is
// what the patterns' lookaheads see at the end of the chunk.
class ChunkScanner {
 public:
  ChunkScanner(std::u32string_view cps, const uint8_t* flags, size_t begin, size_t end,
               std::vector<uint32_t>* out)
      : cps_(cps), flags_(flags), end_(end), last_(begin), out_(out) {}

  bool In(size_t p) const { return p < end_; }
  char32_t Cp(size_t p) const { return In(p) ? cps_[p] : 0; }
  uint8_t Flags(size_t p) const { return In(p) ? flags_[p] : 0; }
  bool Has(size_t p, uint8_t f) const { return (Flags(p) & f) != 0; }
  // In range and neither whitespace, letter nor number: [^\s\p{L}\p{N}].
  bool IsOther(size_t p) const { return In(p) && (flags_[p] & kLetterNumberSpace) == 0; }
  size_t end() const { return end_; }

  // Ends the current word at `p` (> the previous end).
  void Emit(size_t p) {
    if (p > last_) out_->push_back(static_cast<uint32_t>(p - last_));
    last_ = p;
  }

  // 's|'t|'re|'ve|'m|'ll|'d at `p`; returns the match length or 0.
  size_t Contraction(size_t p, bool fold_case) const {
    if (Cp(p) != '\'' || !In(p + 1)) return 0;
    auto lower = [&](char32_t c) -> char32_t {
      return (fold_case && c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
    };
    const char32_t a = lower(Cp(p + 1));
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (!In(p + 2)) return 0;
    const char32_t b = lower(Cp(p + 2));
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
  }

  // Number of consecutive whitespace code points from `p`.
  size_t WhitespaceRun(size_t p) const {
    size_t n = 0;
    while (Has(p + n, kSpace)) ++n;
    return n;
  }

  // \s+(?!\S)|\s+ for a run of `n` >= 1 whitespace code points at `p`;
  // returns the end of the match.
  size_t TrailingWhitespaceEnd(size_t p, size_t n) const {
    // Before a non-space the last whitespace is left for the next word.
    return (n > 1 && In(p + n)) ? p + n - 1 : p + n;
  }

 private:
  std::u32string_view cps_;
  const uint8_t* flags_;
  size_t end_;
  size_t last_;
  std::vector<uint32_t>* out_;
};

void SplitGpt2(ChunkScanner& s, size_t begin) {
  size_t pos = begin;
  while (pos < s.end()) {
    if (size_t n = s.Contraction(pos, /*fold_case=*/false)) {
      pos += n;
      s.Emit(pos);
      continue;
    }
    // " ?X+" alternatives: an optional single U+0020 before the run.
    const size_t run = pos + (s.Cp(pos) == ' ' ? 1 : 0);
    if (s.Has(run, kLetter) || s.Has(run, kNumber)) {
      const uint8_t f = s.Has(run, kLetter) ? kLetter : kNumber;
      size_t p = run;
      while (s.Has(p, f)) ++p;
      s.Emit(pos = p);
      continue;
    }
    if (s.IsOther(run)) {
      size_t p = run;
      while (s.IsOther(p)) ++p;
      s.Emit(pos = p);
      continue;
    }
    const size_t n = s.WhitespaceRun(pos);
    pos = n > 0 ? s.TrailingWhitespaceEnd(pos, n) : pos + 1;
    s.Emit(pos);
  }
}

// llama-bpe (max_digits 3) and qwen2 (max_digits 1).
void SplitLlama3(ChunkScanner& s, size_t begin, size_t max_digits) {
  size_t pos = begin;
  while (pos < s.end()) {
    if (size_t n = s.Contraction(pos, /*fold_case=*/true)) {
      pos += n;
      s.Emit(pos);
      continue;
    }
    const char32_t c = s.Cp(pos);
    const bool is_newline = c == '\r' || c == '\n';
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (!is_newline && !s.Has(pos, kNumber) && (s.Has(pos, kLetter) || s.Has(pos + 1, kLetter))) {
      size_t p = pos + 1;
      while (s.Has(p, kLetter)) ++p;
      s.Emit(pos = p);
      continue;
    }
    // \p{N}{1,max_digits}
    if (s.Has(pos, kNumber)) {
      size_t p = pos;
      while (s.Has(p, kNumber) && p - pos < max_digits) ++p;
      s.Emit(pos = p);
      continue;
    }
    // " ?[^\s\p{L}\p{N}]+[\r\n]*"; a lone trailing U+0020 also lands here
    // and, as in the whitespace rule, becomes a word by itself.
    const size_t run = pos + (c == ' ' ? 1 : 0);
    if (s.IsOther(run) || (c == ' ' && !s.In(run))) {
      size_t p = run;
      while (s.IsOther(p)) ++p;
      while (s.Cp(p) == '\r' || s.Cp(p) == '\n') ++p;
      s.Emit(pos = p);
      continue;
    }
    // \s*[\r\n]+ takes the whitespace run up to its last newline.
    const size_t n = s.WhitespaceRun(pos);
    size_t after_newline = 0;
    for (size_t k = 0; k < n; ++k) {
      if (s.Cp(pos + k) == '\r' || s.Cp(pos + k) == '\n') after_newline = pos + k + 1;
    }
    if (after_newline > 0) {
      pos = after_newline;
    } else {
      pos = n > 0 ? s.TrailingWhitespaceEnd(pos, n) : pos + 1;
    }
    s.Emit(pos);
  }
}

}  // namespace

absl::StatusOr<PreTokenizerType> PreTokenizerTypeFromName(std::string_view name) {
  if (name == "gpt-2") return PreTokenizerType::kGpt2;
  if (name == "smollm" || name == "starcoder") return PreTokenizerType::kSmolLm;
  if (name == "llama-bpe" || name == "llama3" || name == "llama-v3") {
    return PreTokenizerType::kLlama3;
  }
  if (name == "qwen2") return PreTokenizerType::kQwen2;
  return absl::UnimplementedError(absl::StrCat(
      "unsupported pre-tokenizer '", AbslSv(name),
      "' (tokenizer.ggml.pre); supported: gpt-2, smollm, starcoder, llama-bpe, llama3, "
      "llama-v3, qwen2"));
}

std::string_view PreTokenizerName(PreTokenizerType type) {
  switch (type) {
    case PreTokenizerType::kGpt2:
      return "gpt-2";
    case PreTokenizerType::kSmolLm:
      return "smollm";
    case PreTokenizerType::kLlama3:
      return "llama-bpe";
    case PreTokenizerType::kQwen2:
      return "qwen2";
  }
  return "?";
}

void PreTokenize(PreTokenizerType type, std::u32string_view cps,
                 std::vector<uint32_t>* word_lengths) {
  std::vector<uint8_t> flags(cps.size());
  for (size_t i = 0; i < cps.size(); ++i) flags[i] = CodepointFlags(cps[i]);

  auto split_chunk = [&](size_t begin, size_t end) {
    ChunkScanner s(cps, flags.data(), begin, end, word_lengths);
    switch (type) {
      case PreTokenizerType::kGpt2:
      case PreTokenizerType::kSmolLm:
        SplitGpt2(s, begin);
        break;
      case PreTokenizerType::kLlama3:
        SplitLlama3(s, begin, 3);
        break;
      case PreTokenizerType::kQwen2:
        SplitLlama3(s, begin, 1);
        break;
    }
  };

  if (type != PreTokenizerType::kSmolLm) {
    split_chunk(0, cps.size());
    return;
  }
  // First pass of smollm: each \p{N} is a chunk of its own; the gpt-2 pattern
  // then runs within each chunk, so no word spans a chunk boundary.
  size_t chunk = 0;
  for (size_t i = 0; i < cps.size(); ++i) {
    if (flags[i] & kNumber) {
      split_chunk(chunk, i);
      split_chunk(i, i + 1);
      chunk = i + 1;
    }
  }
  split_chunk(chunk, cps.size());
}

std::vector<std::string> PreTokenizeToStrings(PreTokenizerType type, std::string_view text) {
  const std::u32string cps = DecodeUtf8Lenient(text);
  std::vector<uint32_t> lengths;
  PreTokenize(type, cps, &lengths);
  std::vector<std::string> words;
  size_t pos = 0;
  for (uint32_t len : lengths) {
    std::string w;
    for (size_t i = pos; i < pos + len; ++i) AppendUtf8(cps[i], &w);
    words.push_back(std::move(w));
    pos += len;
  }
  return words;
}

}  // namespace kvserve::tokenizer
