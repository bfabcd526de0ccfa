// GGML tensor element types as numbered in the GGUF format, and their block
// layouts. A "block" is the unit of quantisation: `BlockElements(t)` values
// stored in `BlockBytes(t)` bytes.
//
// Thread-safety: pure functions and constants.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kvserve::gguf {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

// True for the types this project can read (dequantise to f32).
bool IsSupportedType(GgmlType t);
// "F32", "Q4_1", ...; "type<N>" for unknown numbers.
std::string_view TypeName(GgmlType t);
// Elements per block (1 for plain float types, 32 for Q4_0.., 256 for K-quants);
// 0 for numbers this project does not know.
int64_t BlockElements(GgmlType t);
// Bytes per block; 0 for unknown numbers.
size_t BlockBytes(GgmlType t);
// Bytes of a row of n elements; t must be known and n a multiple of
// BlockElements(t) (checked: a violation is a bug).
size_t RowBytes(GgmlType t, int64_t n);

}  // namespace kvserve::gguf
