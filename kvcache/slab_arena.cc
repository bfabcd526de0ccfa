#include "kvcache/slab_arena.h"

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace kvserve::kvcache {

absl::StatusOr<std::unique_ptr<SlabArena>> SlabArena::Create(const TierBytes& unit_bytes,
                                                             size_t slab_bytes, int64_t n_slabs) {
  if (n_slabs < 1) return absl::InvalidArgumentError("a slab arena needs at least one slab");
  if (slab_bytes == 0 || slab_bytes % kAlign != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("slab size ", slab_bytes, " is not a positive multiple of ", kAlign));
  }
  if (unit_bytes[TierIndex(KvTier::kEvicted)] != 0) {
    return absl::InvalidArgumentError("evicted units take no bytes");
  }
  for (int t = 0; t < kNumKvTiers - 1; ++t) {
    const size_t u = unit_bytes[t];
    if (u == 0 || u % kAlign != 0 || u > slab_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("unit size of tier ", std::string(KvTierName(TierFromIndex(t))), " is ", u,
                       " bytes; it must be a positive multiple of ", kAlign,
                       " no larger than the slab (", slab_bytes, ")"));
    }
    if (slab_bytes / u > std::numeric_limits<uint16_t>::max()) {
      return absl::InvalidArgumentError("too many units per slab");
    }
  }
  const size_t total = slab_bytes * static_cast<size_t>(n_slabs);
  if (total / kAlign > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("a KV arena of ", total, " bytes is too large"));
  }
  auto* mem = static_cast<uint8_t*>(std::aligned_alloc(kAlign, total));
  if (mem == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate a KV pool of ", total, " bytes"));
  }
  std::memset(mem, 0, total);
  return std::unique_ptr<SlabArena>(
      new SlabArena(unit_bytes, slab_bytes, n_slabs, std::unique_ptr<uint8_t[], FreeDeleter>(mem)));
}

SlabArena::SlabArena(const TierBytes& unit_bytes, size_t slab_bytes, int64_t n_slabs,
                     std::unique_ptr<uint8_t[], FreeDeleter> base)
    : unit_bytes_(unit_bytes), slab_bytes_(slab_bytes), base_(std::move(base)), slabs_(n_slabs) {
  for (int t = 0; t < kNumKvTiers - 1; ++t) {
    per_slab_[t] = static_cast<int64_t>(slab_bytes / unit_bytes[t]);
  }
  free_slabs_.reserve(n_slabs);
  // Reverse order, so that slabs are handed out 0, 1, 2, ...
  for (int64_t s = n_slabs - 1; s >= 0; --s) free_slabs_.push_back(s);
}

std::optional<uint32_t> SlabArena::Allocate(KvTier tier) {
  KV_CHECK_MSG(tier != KvTier::kEvicted, "evicted units have no storage");
  const int t = TierIndex(tier);
  int64_t slab;
  if (!partial_[t].empty()) {
    slab = partial_[t].back();
  } else {
    if (free_slabs_.empty()) return std::nullopt;
    slab = free_slabs_.back();
    free_slabs_.pop_back();
    Slab& s = slabs_[slab];
    s.tier = static_cast<int8_t>(t);
    s.used = 0;
    s.free_slots.clear();
    for (int64_t i = per_slab_[t] - 1; i >= 0; --i)
      s.free_slots.push_back(static_cast<uint16_t>(i));
    AddPartial(slab);
  }
  Slab& s = slabs_[slab];
  const uint16_t slot = s.free_slots.back();
  s.free_slots.pop_back();
  ++s.used;
  ++units_[t];
  if (s.free_slots.empty()) RemovePartial(slab);
  const size_t offset = static_cast<size_t>(slab) * slab_bytes_ + slot * unit_bytes_[t];
  return static_cast<uint32_t>(offset / kAlign);
}

void SlabArena::Free(KvTier tier, uint32_t handle) {
  const int t = TierIndex(tier);
  KV_CHECK_MSG(tier != KvTier::kEvicted, "evicted units have no storage");
  const size_t offset = static_cast<size_t>(handle) * kAlign;
  const int64_t slab = static_cast<int64_t>(offset / slab_bytes_);
  KV_CHECK_MSG(slab >= 0 && slab < n_slabs(), "unit handle out of range");
  Slab& s = slabs_[slab];
  KV_CHECK_MSG(s.tier == t, "unit freed with the wrong tier or already free");
  const size_t within = offset - static_cast<size_t>(slab) * slab_bytes_;
  KV_CHECK_MSG(within % unit_bytes_[t] == 0, "unit handle is not a slot boundary");
  KV_CHECK(s.used > 0);
  const bool was_full = s.free_slots.empty();
  s.free_slots.push_back(static_cast<uint16_t>(within / unit_bytes_[t]));
  --s.used;
  --units_[t];
  if (s.used == 0) {
    if (!was_full) RemovePartial(slab);
    s.tier = -1;
    s.free_slots.clear();
    s.free_slots.shrink_to_fit();
    free_slabs_.push_back(slab);
  } else if (was_full) {
    AddPartial(slab);
  }
}

int64_t SlabArena::Available(KvTier tier) const {
  if (tier == KvTier::kEvicted) return std::numeric_limits<int64_t>::max();
  const int t = TierIndex(tier);
  int64_t n = per_slab_[t] * static_cast<int64_t>(free_slabs_.size());
  for (int64_t slab : partial_[t]) n += static_cast<int64_t>(slabs_[slab].free_slots.size());
  return n;
}

size_t SlabArena::used_bytes() const {
  size_t b = 0;
  for (int t = 0; t < kNumKvTiers; ++t) b += unit_bytes_[t] * static_cast<size_t>(units_[t]);
  return b;
}

void SlabArena::AddPartial(int64_t slab) {
  Slab& s = slabs_[slab];
  KV_CHECK(s.partial_pos < 0);
  s.partial_pos = static_cast<int32_t>(partial_[s.tier].size());
  partial_[s.tier].push_back(slab);
}

void SlabArena::RemovePartial(int64_t slab) {
  Slab& s = slabs_[slab];
  std::vector<int64_t>& list = partial_[s.tier];
  KV_CHECK(s.partial_pos >= 0 && list[s.partial_pos] == slab);
  const int64_t last = list.back();
  list[s.partial_pos] = last;
  slabs_[last].partial_pos = s.partial_pos;
  list.pop_back();
  s.partial_pos = -1;
}

absl::Status SlabArena::CheckInvariants() const {
  std::array<int64_t, kNumKvTiers> units{};
  std::vector<char> on_free(slabs_.size(), 0);
  for (int64_t slab : free_slabs_) {
    if (slab < 0 || slab >= n_slabs() || on_free[slab]) {
      return absl::InternalError(absl::StrCat("free slab list is corrupt at slab ", slab));
    }
    on_free[slab] = 1;
  }
  for (int64_t i = 0; i < n_slabs(); ++i) {
    const Slab& s = slabs_[i];
    if ((s.tier < 0) != static_cast<bool>(on_free[i])) {
      return absl::InternalError(
          absl::StrCat("slab ", i, " free-list membership disagrees with its tier"));
    }
    if (s.tier < 0) continue;
    if (s.used <= 0) return absl::InternalError(absl::StrCat("slab ", i, " is in use but empty"));
    const int64_t cap = per_slab_[s.tier];
    if (s.used + static_cast<int64_t>(s.free_slots.size()) != cap) {
      return absl::InternalError(absl::StrCat("slab ", i, ": ", s.used, " used + ",
                                              s.free_slots.size(), " free != ", cap, " slots"));
    }
    std::vector<char> seen(cap, 0);
    for (uint16_t slot : s.free_slots) {
      if (slot >= cap || seen[slot]) {
        return absl::InternalError(absl::StrCat("slab ", i, " lists slot ", slot, " badly"));
      }
      seen[slot] = 1;
    }
    const bool partial = !s.free_slots.empty();
    const bool listed = s.partial_pos >= 0 &&
                        s.partial_pos < static_cast<int32_t>(partial_[s.tier].size()) &&
                        partial_[s.tier][s.partial_pos] == i;
    if (partial != listed) {
      return absl::InternalError(absl::StrCat("slab ", i, " partial-list membership is wrong"));
    }
    units[s.tier] += s.used;
  }
  for (int t = 0; t < kNumKvTiers; ++t) {
    if (units[t] != units_[t]) {
      return absl::InternalError(absl::StrCat("tier ", std::string(KvTierName(TierFromIndex(t))),
                                              " counts ", units_[t], " units but slabs hold ",
                                              units[t]));
    }
  }
  return absl::OkStatus();
}

}  // namespace kvserve::kvcache
