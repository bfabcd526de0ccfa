#include "engine/tokenizer/unicode.h"

#include <algorithm>
#include <array>
#include <memory>

#include "engine/tokenizer/unicode_tables.h"

namespace kvserve::tokenizer {
namespace {

using internal::CodepointRange;

bool InRanges(const CodepointRange* ranges, size_t n, char32_t cp) {
  // First range whose `last` is >= cp; cp is inside iff that range starts at or before it.
  const CodepointRange* end = ranges + n;
  const CodepointRange* it = std::lower_bound(
      ranges, end, cp, [](const CodepointRange& r, char32_t v) { return r.last < v; });
  return it != end && it->first <= cp;
}

uint8_t SlowFlags(char32_t cp) {
  uint8_t flags = 0;
  if (InRanges(internal::kLetterRanges, internal::kLetterRangesSize, cp)) flags |= kFlagLetter;
  if (InRanges(internal::kNumberRanges, internal::kNumberRangesSize, cp)) flags |= kFlagNumber;
  if (InRanges(internal::kWhitespaceRanges, internal::kWhitespaceRangesSize, cp)) {
    flags |= kFlagWhitespace;
  }
  return flags;
}

// Most text is in the BMP, so its flags are expanded into a flat 64 KiB table
// once; the rest of the code space uses binary search on the ranges.
using BmpTable = std::array<uint8_t, 0x10000>;

const BmpTable& Bmp() {
  static const std::unique_ptr<BmpTable> table = [] {
    auto t = std::make_unique<BmpTable>();
    t->fill(0);
    auto paint = [&](const CodepointRange* ranges, size_t n, uint8_t bit) {
      for (size_t i = 0; i < n && ranges[i].first < 0x10000; ++i) {
        const uint32_t last = std::min<uint32_t>(ranges[i].last, 0xFFFF);
        for (uint32_t cp = ranges[i].first; cp <= last; ++cp) (*t)[cp] |= bit;
      }
    };
    paint(internal::kLetterRanges, internal::kLetterRangesSize, kFlagLetter);
    paint(internal::kNumberRanges, internal::kNumberRangesSize, kFlagNumber);
    paint(internal::kWhitespaceRanges, internal::kWhitespaceRangesSize, kFlagWhitespace);
    return t;
  }();
  return *table;
}

bool IsContinuation(uint8_t b) { return (b & 0xC0) == 0x80; }

// Strict UTF-8: the allowed range of the second byte after lead `b`, and the
// total sequence length; length 0 means `b` cannot start a sequence.
struct LeadInfo {
  int length;
  uint8_t lo, hi;  // bounds of the second byte
};

LeadInfo StrictLead(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};  // excludes surrogates
  if (b >= 0xE1 && b <= 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};  // caps at U+10FFFF
  return {0, 0, 0};
}

// Number of bytes from `pos` that form a valid (possibly incomplete) prefix
// of a strict UTF-8 sequence, together with the sequence's full length.
// Returns {0, 0} when the byte at `pos` cannot start a sequence.
std::pair<int, int> StrictPrefix(std::string_view s, size_t pos) {
  const LeadInfo lead = StrictLead(static_cast<uint8_t>(s[pos]));
  if (lead.length == 0) return {0, 0};
  int valid = 1;
  for (int k = 1; k < lead.length && pos + k < s.size(); ++k) {
    const uint8_t c = static_cast<uint8_t>(s[pos + k]);
    const bool ok = (k == 1) ? (c >= lead.lo && c <= lead.hi) : IsContinuation(c);
    if (!ok) break;
    ++valid;
  }
  return {valid, lead.length};
}

}  // namespace

uint8_t CodepointFlags(char32_t cp) {
  if (cp < 0x10000) return Bmp()[cp];
  if (cp > 0x10FFFF) return 0;
  return SlowFlags(cp);
}

void DecodeUtf8Lenient(std::string_view text, std::u32string* out) {
  out->reserve(out->size() + text.size());
  const size_t n = text.size();
  size_t i = 0;
  auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  while (i < n) {
    const uint8_t b = byte(i);
    if (b < 0x80) {
      out->push_back(b);
      ++i;
      continue;
    }
    // The sequence length comes from the lead byte's high bits alone; the
    // continuation bytes must be present and of the form 10xxxxxx.
    int len = 0;
    char32_t cp = 0;
    if ((b & 0xE0) == 0xC0) {
      len = 2;
      cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      len = 3;
      cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      len = 4;
      cp = b & 0x07;
    }
    bool ok = len > 0 && i + len <= n;
    for (int k = 1; ok && k < len; ++k) {
      ok = IsContinuation(byte(i + k));
      cp = (cp << 6) | (byte(i + k) & 0x3F);
    }
    if (ok && cp <= 0x10FFFF) {
      out->push_back(cp);
      i += len;
    } else {
      out->push_back(kReplacementChar);
      ++i;
    }
  }
}

std::u32string DecodeUtf8Lenient(std::string_view text) {
  std::u32string out;
  DecodeUtf8Lenient(text, &out);
  return out;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t CompleteUtf8Prefix(std::string_view bytes) {
  const size_t n = bytes.size();
  // An incomplete sequence is at most 3 bytes long: a lead byte followed only
  // by continuation bytes that fit it.
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const size_t pos = n - back;
    const uint8_t b = static_cast<uint8_t>(bytes[pos]);
    if (IsContinuation(b)) continue;
    const auto [valid, length] = StrictPrefix(bytes, pos);
    if (length > 1 && valid == static_cast<int>(back) && valid < length) return pos;
    break;
  }
  return n;
}

std::string SanitizeUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const auto [valid, length] = StrictPrefix(bytes, i);
    if (length > 0 && valid == length) {
      out.append(bytes.substr(i, length));
      i += length;
    } else {
      // A maximal ill-formed subpart (or a lone bad byte) becomes one U+FFFD.
      AppendUtf8(kReplacementChar, &out);
      i += std::max(valid, 1);
    }
  }
  return out;
}

}  // namespace kvserve::tokenizer
