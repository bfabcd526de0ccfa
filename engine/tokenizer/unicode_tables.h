// Code-point class tables used by the pre-tokenizer. The data lives in
// unicode_tables.cc, which scripts/gen_unicode_tables.py generates; use the
// lookups in unicode.h rather than these arrays directly.
//
// Thread-safety: immutable constant data.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvserve::tokenizer::internal {

// Inclusive range [first, last] of Unicode code points.
struct CodepointRange {
  uint32_t first;
  uint32_t last;
};

// Unicode version the tables were generated from, e.g. "15.1.0".
extern const char kUnicodeVersion[];

// Each table is sorted by `first`, ranges are disjoint and non-adjacent.
extern const CodepointRange kLetterRanges[];  // \p{L}
extern const size_t kLetterRangesSize;
extern const CodepointRange kNumberRanges[];  // \p{N}
extern const size_t kNumberRangesSize;
extern const CodepointRange kWhitespaceRanges[];  // \s (White_Space)
extern const size_t kWhitespaceRangesSize;

}  // namespace kvserve::tokenizer::internal
