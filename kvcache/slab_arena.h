// A byte arena for KV units of several sizes: the memory behind the paged
// cache once blocks can be compressed.
//
// Why slabs: a compressed (block, layer) unit is 2-5x smaller than a full
// one, and the point of compressing is to hand those bytes to other
// sequences. A single fixed block size cannot do that; a general-purpose
// heap could, but fragments and cannot answer "how many units of size s fit
// now?" exactly, which admission control needs. So the arena is cut into
// equal slabs; a slab, while in use, holds units of one tier only, in slots
// of that tier's size. A slab whose last unit is freed goes back to the
// common free list and can serve any tier. Units of one tier reuse the holes
// their tier left first, so waste is bounded by one partly filled slab per
// tier (plus the slack of a slab size that is not a multiple of a unit).
//
// A unit is named by a handle (its byte offset / 64); its memory is 64-byte
// aligned and stays put until freed. The arena is zero-filled once, so never
// written bytes read as 0.
//
// Thread-safety: Allocate/Free are engine-thread only; Data and the const
// queries may run on many threads while no mutation runs.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvcache/kv_tier.h"

namespace kvserve::kvcache {

class SlabArena {
 public:
  inline static constexpr size_t kAlign = 64;

  // n_slabs slabs of slab_bytes each. InvalidArgument unless every stored
  // tier's unit size is a positive multiple of kAlign no larger than
  // slab_bytes (slab_bytes itself a multiple of kAlign), unit_bytes[kEvicted]
  // is 0, and n_slabs >= 1; ResourceExhausted if the memory cannot be had.
  static absl::StatusOr<std::unique_ptr<SlabArena>> Create(const TierBytes& unit_bytes,
                                                           size_t slab_bytes, int64_t n_slabs);

  SlabArena(const SlabArena&) = delete;
  SlabArena& operator=(const SlabArena&) = delete;

  // A unit of `tier` (not kEvicted), or nullopt when neither a slot of that
  // tier nor a free slab is left (a normal outcome).
  std::optional<uint32_t> Allocate(KvTier tier);
  // Returns a unit allocated for `tier`.
  void Free(KvTier tier, uint32_t handle);

  uint8_t* Data(uint32_t handle) { return base_.get() + static_cast<size_t>(handle) * kAlign; }
  const uint8_t* Data(uint32_t handle) const {
    return base_.get() + static_cast<size_t>(handle) * kAlign;
  }

  // Units of `tier` that Allocate would hand out from now on, if nothing
  // else were allocated: free slots in that tier's slabs plus whole free
  // slabs.
  int64_t Available(KvTier tier) const;
  int64_t units(KvTier tier) const { return units_[TierIndex(tier)]; }
  size_t unit_bytes(KvTier tier) const { return unit_bytes_[TierIndex(tier)]; }
  int64_t units_per_slab(KvTier tier) const { return per_slab_[TierIndex(tier)]; }
  int64_t n_slabs() const { return static_cast<int64_t>(slabs_.size()); }
  int64_t free_slabs() const { return static_cast<int64_t>(free_slabs_.size()); }
  size_t slab_bytes() const { return slab_bytes_; }
  size_t capacity_bytes() const { return slab_bytes_ * slabs_.size(); }
  // Bytes of the live units (what the cache's contents take).
  size_t used_bytes() const;
  // Bytes of slabs assigned to a tier, live units plus the holes in them:
  // the memory not available to a new slab.
  size_t committed_bytes() const { return slab_bytes_ * (slabs_.size() - free_slabs_.size()); }

  // Slab bookkeeping agrees with itself: every slab is free exactly when it
  // holds no unit, a tier's partly filled slabs are exactly those with a
  // free slot, slot lists hold no duplicates, per-tier unit counts add up.
  absl::Status CheckInvariants() const;

 private:
  struct FreeDeleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  struct Slab {
    int8_t tier = -1;                  // -1: on the free list
    int32_t used = 0;                  // live units
    int32_t partial_pos = -1;          // index in partial_[tier], -1 if not there
    std::vector<uint16_t> free_slots;  // stack; back() is handed out next
  };

  SlabArena(const TierBytes& unit_bytes, size_t slab_bytes, int64_t n_slabs,
            std::unique_ptr<uint8_t[], FreeDeleter> base);
  void AddPartial(int64_t slab);
  void RemovePartial(int64_t slab);

  TierBytes unit_bytes_;
  std::array<int64_t, kNumKvTiers> per_slab_{};
  size_t slab_bytes_;
  std::unique_ptr<uint8_t[], FreeDeleter> base_;
  std::vector<Slab> slabs_;
  std::vector<int64_t> free_slabs_;                        // stack; back() is used next
  std::array<std::vector<int64_t>, kNumKvTiers> partial_;  // slabs with a free slot, per tier
  std::array<int64_t, kNumKvTiers> units_{};
};

}  // namespace kvserve::kvcache
