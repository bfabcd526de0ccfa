// The pool of KV blocks the paged cache builds each sequence's storage from,
// carved once out of a byte budget.
//
// A block holds `block_tokens` consecutive positions of one sequence in
// every layer, so a sequence's block table is one list of ids for the whole
// model. Each layer of a block is a "unit" in a storage tier (kv_tier.h):
// it starts at full precision (f16), laid out as
//   K: f16 [row_width][block_tokens]  (channel-major, as KvSpan::k with
//      k_stride = block_tokens)
//   V: f16 [block_tokens][row_width]  (token-major, as KvSpan::v)
// and may later be compressed, one layer at a time, to int8/int4/int2
// (kv_quant.h) or evicted. Units live in a SlabArena, so the bytes a
// compression frees are at once available to new blocks: that is what lets
// the server admit more sequences once it compresses.
// block_tokens is a multiple of kKvSpanAlign, so a unit's K is a valid span
// layout and its padding positions are always readable.
//
// Capacity is stated in full-precision blocks: n_blocks() is how many f16
// blocks the budget holds, n_free() how many Allocate could hand out now
// (more once blocks are compressed). n_used() counts live blocks, in any
// tier.
//
// Blocks are reference counted: a block is free at count 0 and its id
// returns to a LIFO free list (so allocation order is deterministic). A
// compressed block cannot be copied or written, so a block about to be
// copied (shared, then written) must be f16; which blocks may compress, and
// with whose consent when shared, is PagedKvCache's and KvCompressor's
// business. Misuse — releasing or retaining a free block, an out-of-range
// id, compressing upwards, copying a compressed block — aborts.
//
// Thread-safety: Allocate/Retain/Release/CopyBlock/Compress and writes
// through the mutable storage pointers are engine-thread only. Const
// accessors may run on many threads at once while no mutation runs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvcache/kv_store.h"
#include "kvcache/kv_tier.h"
#include "kvcache/slab_arena.h"

namespace kvserve::kvcache {

class BlockPool {
 public:
  // As many f16 blocks as fit in pool_bytes (at most INT32_MAX), zero-filled.
  // InvalidArgument if the shape has a non-positive dimension, block_tokens
  // is not a positive multiple of kKvSpanAlign, the shape cannot be
  // quantized (kv_quant.h), or not one block fits; ResourceExhausted if the
  // memory cannot be allocated.
  static absl::StatusOr<std::unique_ptr<BlockPool>> Create(const KvShape& shape, size_t pool_bytes,
                                                           int block_tokens = kKvSpanAlign);

  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // Bytes of one f16 block: K and V of block_tokens positions in every layer.
  static size_t BytesPerBlock(const KvShape& shape, int block_tokens);

  const KvShape& shape() const { return shape_; }
  int block_tokens() const { return block_tokens_; }
  int n_blocks() const { return n_blocks_; }
  int n_free() const;
  int n_used() const { return static_cast<int>(refs_.size() - free_.size()); }
  // One past the highest block id handed out so far: ids are < id_limit().
  int id_limit() const { return static_cast<int>(refs_.size()); }
  size_t bytes_per_block() const { return bytes_per_block_; }
  size_t capacity_bytes() const { return arena_->capacity_bytes(); }
  // Bytes of the live units, every tier.
  size_t used_bytes() const { return arena_->used_bytes(); }
  // Bytes held by slabs in use (live units and the holes between them).
  size_t committed_bytes() const { return arena_->committed_bytes(); }
  // Bytes of one unit (one layer of one block) in `tier`.
  size_t unit_bytes(KvTier tier) const { return arena_->unit_bytes(tier); }
  const TierBytes& tier_bytes() const { return tier_bytes_; }
  // Live units per tier (evicted ones included: they have no bytes).
  int64_t units(KvTier tier) const { return tier_units_[TierIndex(tier)]; }

  // Takes a block off the free list with reference count 1 and every layer
  // f16, or nullopt if the pool cannot hold one more f16 block (a normal
  // outcome the caller must handle). Its units keep whatever their previous
  // owner wrote.
  std::optional<int32_t> Allocate();
  // Adds a reference to a used block.
  void Retain(int32_t id);
  // Drops a reference; at 0 the block's units and id return to the pool.
  void Release(int32_t id);
  int32_t ref_count(int32_t id) const;

  // Copies all layers of block `from` into block `to` (both used, distinct,
  // both entirely f16: only blocks still to be written are copied, and
  // those stay f16).
  void CopyBlock(int32_t from, int32_t to);

  KvTier tier(int32_t id, int layer) const { return Unit(id, layer).tier; }
  // f16 storage of block `id` in `layer` (the unit must be f16); valid until
  // the unit is compressed or the block freed.
  //   K: f16 [row_width][block_tokens]; V: f16 [block_tokens][row_width].
  uint16_t* k(int32_t id, int layer) { return F16(id, layer); }
  uint16_t* v(int32_t id, int layer) { return F16(id, layer) + layer_half_; }
  const uint16_t* k(int32_t id, int layer) const { return F16(id, layer); }
  const uint16_t* v(int32_t id, int layer) const { return F16(id, layer) + layer_half_; }
  // Raw bytes of a stored unit in any tier but kEvicted (kv_quant.h layout
  // for quantized tiers).
  const uint8_t* unit_data(int32_t id, int layer) const;

  // Moves layer `layer` of used block `id` down to tier `to` (> its
  // current tier), for every holder if it is shared: quantizes its contents
  // (only the first n_valid positions matter, 1..block_tokens) or, for
  // kEvicted, drops them, and frees the old unit. Returns false, changing nothing, if no unit of
  // tier `to` can be had even after freeing the old one.
  bool Compress(int32_t id, int layer, KvTier to, int n_valid);

  // Checks that the free list and the reference counts agree (every block is
  // either free with count 0 or used with a positive count), that per-tier
  // unit counts match the live blocks, and the arena's own bookkeeping.
  absl::Status CheckInvariants() const;

 private:
  struct UnitRef {
    uint32_t handle = 0;
    KvTier tier = KvTier::kF16;
  };

  BlockPool(const KvShape& shape, int block_tokens, int n_blocks, size_t bytes_per_block,
            const TierBytes& tier_bytes, std::unique_ptr<SlabArena> arena);

  const UnitRef& Unit(int32_t id, int layer) const;
  uint16_t* F16(int32_t id, int layer) const;
  void CheckUsed(int32_t id) const;

  KvShape shape_;
  int block_tokens_;
  int n_blocks_;
  size_t bytes_per_block_;
  size_t layer_half_;  // f16 elements of one unit's K (= of its V)
  TierBytes tier_bytes_;
  std::unique_ptr<SlabArena> arena_;
  std::vector<int32_t> refs_;   // [ids ever handed out]
  std::vector<UnitRef> units_;  // [ids][n_layers]
  std::vector<int32_t> free_;   // stack of free ids; back() is allocated next
  std::array<int64_t, kNumKvTiers> tier_units_{};
  std::vector<uint16_t> scratch_;  // f16 unit being requantized
};

}  // namespace kvserve::kvcache
