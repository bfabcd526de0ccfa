// Storage tiers of a KV block, from full precision down to evicted.
//
// A (block, layer) unit of the paged cache is in exactly one tier. Tiers are
// ordered by fidelity: a larger enum value holds less. Compression only ever
// moves a unit to a larger value ("tiers only move down"): there is no way
// back from a quantized or evicted unit to the original values.
//
// Thread-safety: constants and pure functions.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace kvserve::kvcache {

enum class KvTier : uint8_t {
  kF16 = 0,      // f16 K and V, the layout of KvSpan
  kInt8 = 1,     // KIVI 8-bit: K per channel, V per token, group scales
  kInt4 = 2,     // KIVI 4-bit
  kInt2 = 3,     // KIVI 2-bit
  kEvicted = 4,  // no storage; attention skips the positions
};
inline constexpr int kNumKvTiers = 5;

// Bytes of one (block, layer) unit in each tier, indexed by TierIndex;
// [kEvicted] is 0.
using TierBytes = std::array<size_t, kNumKvTiers>;

inline constexpr int TierIndex(KvTier t) { return static_cast<int>(t); }
inline constexpr KvTier TierFromIndex(int i) { return static_cast<KvTier>(i); }

// Quantized code width in bits; 16 for kF16, 0 for kEvicted.
inline constexpr int KvTierBits(KvTier t) {
  switch (t) {
    case KvTier::kF16:
      return 16;
    case KvTier::kInt8:
      return 8;
    case KvTier::kInt4:
      return 4;
    case KvTier::kInt2:
      return 2;
    case KvTier::kEvicted:
      return 0;
  }
  return 0;
}

// "f16", "int8", "int4", "int2", "evicted": the Prometheus label values.
inline constexpr std::string_view KvTierName(KvTier t) {
  switch (t) {
    case KvTier::kF16:
      return "f16";
    case KvTier::kInt8:
      return "int8";
    case KvTier::kInt4:
      return "int4";
    case KvTier::kInt2:
      return "int2";
    case KvTier::kEvicted:
      return "evicted";
  }
  return "?";
}

inline std::optional<KvTier> KvTierFromName(std::string_view name) {
  for (int i = 0; i < kNumKvTiers; ++i) {
    if (KvTierName(TierFromIndex(i)) == name) return TierFromIndex(i);
  }
  return std::nullopt;
}

inline constexpr bool IsQuantized(KvTier t) {
  return t == KvTier::kInt8 || t == KvTier::kInt4 || t == KvTier::kInt2;
}

}  // namespace kvserve::kvcache
