// Block layouts the matmul kernels read, defined here rather than taken from
// engine/gguf so that kvserve_kernels does not depend on kvserve_gguf at link
// time. The weight blocks are byte-for-byte GGML's; ActBlock is this
// library's own layout for quantised activations (never written to files).
//
// Q4 nibble order (GGML): byte j of qs holds element j in its low nibble and
// element j + 16 in its high nibble.
//
// Thread-safety: plain data and pure functions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/gguf/ggml_type.h"

namespace kvserve::kernels::internal {

// Elements per block of every quantised type handled here.
inline constexpr int kQK = 32;

struct BlockQ4_0 {
  uint16_t d;           // f16 scale
  uint8_t qs[kQK / 2];  // value = d * (nibble - 8)
};
static_assert(sizeof(BlockQ4_0) == 18);

struct BlockQ4_1 {
  uint16_t d;           // f16 scale
  uint16_t m;           // f16 minimum
  uint8_t qs[kQK / 2];  // value = d * nibble + m
};
static_assert(sizeof(BlockQ4_1) == 20);

struct BlockQ8_0 {
  uint16_t d;      // f16 scale
  int8_t qs[kQK];  // value = d * q
};
static_assert(sizeof(BlockQ8_0) == 34);

// GGML's activation block for Q4_1 weights; kept for tests and documentation
// of the numerics (the kernels use ActBlock).
struct BlockQ8_1 {
  uint16_t d;  // f16 scale
  uint16_t s;  // f16 of (f32 scale) * sum(qs)
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8_1) == 36);

// Which activation quantisation a weight type needs. The int8 values and the
// f16-rounded scale are the same for all kinds (llama.cpp's Q8_0 and Q8_1
// agree on them); only the per-block extra differs.
enum class ActKind {
  kQ8_0ForQ4_0,  // aux = -8 * sum(qs): folds the Q4_0 offset of 8 into one add
  kQ8_0ForQ8_0,  // aux = -128 * sum(qs): undoes the +128 that makes Q8_0 weights unsigned
  kQ8_1,         // aux = bits of s = f16(d_f32 * sum(qs)) as f32 (Q4_1 weights)
};

// One quantised block of 32 activations of one row. The scratch holds them
// block-major: block b of row i is at index b * m + i, so the rows of one
// block sit next to each other (one base pointer serves a tile of rows).
struct ActBlock {
  int8_t qs[kQK];
  float d;      // f16-rounded scale, as f32
  int32_t aux;  // see ActKind
};
static_assert(sizeof(ActBlock) == 40);

inline float AuxAsFloat(int32_t aux) {
  float f;
  __builtin_memcpy(&f, &aux, sizeof f);
  return f;
}
inline int32_t FloatAsAux(float f) {
  int32_t a;
  __builtin_memcpy(&a, &f, sizeof a);
  return a;
}

// Layout facts of the quantised weight blocks, for the kernel templates.
template <gguf::GgmlType T>
struct QuantTraits;
template <>
struct QuantTraits<gguf::GgmlType::kQ4_0> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ4_0);
  static constexpr size_t kQsOffset = 2;
  static constexpr bool kNibbles = true;
  static constexpr bool kHasMin = false;
};
template <>
struct QuantTraits<gguf::GgmlType::kQ4_1> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ4_1);
  static constexpr size_t kQsOffset = 4;
  static constexpr bool kNibbles = true;
  static constexpr bool kHasMin = true;
};
template <>
struct QuantTraits<gguf::GgmlType::kQ8_0> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ8_0);
  static constexpr size_t kQsOffset = 2;
  static constexpr bool kNibbles = false;
  static constexpr bool kHasMin = false;
};

// An unaligned 32-bit load.
inline int32_t LoadI32(const void* p) {
  int32_t v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

inline bool IsQuantizedWeight(gguf::GgmlType t) {
  return t == gguf::GgmlType::kQ4_0 || t == gguf::GgmlType::kQ4_1 || t == gguf::GgmlType::kQ8_0;
}

inline ActKind ActKindFor(gguf::GgmlType t) {
  switch (t) {
    case gguf::GgmlType::kQ4_0:
      return ActKind::kQ8_0ForQ4_0;
    case gguf::GgmlType::kQ8_0:
      return ActKind::kQ8_0ForQ8_0;
    default:
      return ActKind::kQ8_1;
  }
}

// Bytes of a row of n elements for the weight types MatMul supports; 0 for
// others. n must be a multiple of kQK for the quantised types.
inline size_t WeightRowBytes(gguf::GgmlType t, int64_t n) {
  switch (t) {
    case gguf::GgmlType::kF32:
      return static_cast<size_t>(n) * 4;
    case gguf::GgmlType::kF16:
    case gguf::GgmlType::kBF16:
      return static_cast<size_t>(n) * 2;
    case gguf::GgmlType::kQ4_0:
      return static_cast<size_t>(n / kQK) * sizeof(BlockQ4_0);
    case gguf::GgmlType::kQ4_1:
      return static_cast<size_t>(n / kQK) * sizeof(BlockQ4_1);
    case gguf::GgmlType::kQ8_0:
      return static_cast<size_t>(n / kQK) * sizeof(BlockQ8_0);
    default:
      return 0;
  }
}

}  // namespace kvserve::kernels::internal
