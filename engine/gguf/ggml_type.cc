#include "engine/gguf/ggml_type.h"

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "common/check.h"

namespace kvserve::gguf {
namespace {

struct TypeTraits {
  GgmlType type;
  std::string_view name;
  int64_t block_elements;
  size_t block_bytes;
  bool supported;  // DequantizeRow handles it
};

// Block sizes follow the GGML block structs: e.g. Q4_K is {f16 d, f16 dmin,
// u8 scales[12], u8 qs[128]} = 144 bytes per 256 values. Types that only
// exist as matmul intermediates (Q8_1, Q8_K) or as integer data are sized so
// that files holding them can be walked, but are not dequantised.
constexpr TypeTraits kTraits[] = {
    {GgmlType::kF32, "F32", 1, 4, true},
    {GgmlType::kF16, "F16", 1, 2, true},
    {GgmlType::kQ4_0, "Q4_0", 32, 2 + 16, true},
    {GgmlType::kQ4_1, "Q4_1", 32, 2 + 2 + 16, true},
    {GgmlType::kQ5_0, "Q5_0", 32, 2 + 4 + 16, true},
    {GgmlType::kQ5_1, "Q5_1", 32, 2 + 2 + 4 + 16, true},
    {GgmlType::kQ8_0, "Q8_0", 32, 2 + 32, true},
    {GgmlType::kQ8_1, "Q8_1", 32, 2 + 2 + 32, false},
    {GgmlType::kQ2_K, "Q2_K", 256, 16 + 64 + 2 + 2, true},
    {GgmlType::kQ3_K, "Q3_K", 256, 32 + 64 + 12 + 2, true},
    {GgmlType::kQ4_K, "Q4_K", 256, 2 + 2 + 12 + 128, true},
    {GgmlType::kQ5_K, "Q5_K", 256, 2 + 2 + 12 + 32 + 128, true},
    {GgmlType::kQ6_K, "Q6_K", 256, 128 + 64 + 16 + 2, true},
    {GgmlType::kQ8_K, "Q8_K", 256, 4 + 256 + 2 * 16, false},
    {GgmlType::kI8, "I8", 1, 1, false},
    {GgmlType::kI16, "I16", 1, 2, false},
    {GgmlType::kI32, "I32", 1, 4, false},
    {GgmlType::kI64, "I64", 1, 8, false},
    {GgmlType::kF64, "F64", 1, 8, false},
    {GgmlType::kBF16, "BF16", 1, 2, true},
};

const TypeTraits* Find(GgmlType t) {
  for (const TypeTraits& tt : kTraits) {
    if (tt.type == t) return &tt;
  }
  return nullptr;
}

}  // namespace

bool IsSupportedType(GgmlType t) {
  const TypeTraits* tt = Find(t);
  return tt != nullptr && tt->supported;
}

std::string_view TypeName(GgmlType t) {
  if (const TypeTraits* tt = Find(t)) return tt->name;
  // Names of unknown numbers are made once and kept for the life of the
  // process, so the returned view stays valid.
  static std::mutex mu;
  static auto* names = new std::map<uint32_t, std::unique_ptr<const std::string>>();
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = (*names)[static_cast<uint32_t>(t)];
  if (!slot) {
    slot = std::make_unique<const std::string>("type" + std::to_string(static_cast<uint32_t>(t)));
  }
  return *slot;
}

int64_t BlockElements(GgmlType t) {
  const TypeTraits* tt = Find(t);
  return tt == nullptr ? 0 : tt->block_elements;
}

size_t BlockBytes(GgmlType t) {
  const TypeTraits* tt = Find(t);
  return tt == nullptr ? 0 : tt->block_bytes;
}

size_t RowBytes(GgmlType t, int64_t n) {
  const TypeTraits* tt = Find(t);
  KV_CHECK_MSG(tt != nullptr, "RowBytes: unknown GGML type");
  KV_CHECK_GE(n, 0);
  KV_CHECK_MSG(n % tt->block_elements == 0, "RowBytes: n is not a multiple of the block size");
  return static_cast<size_t>(n / tt->block_elements) * tt->block_bytes;
}

}  // namespace kvserve::gguf
