#include "kvcache/block_pool.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "kvcache/kv_quant.h"

namespace kvserve::kvcache {

size_t BlockPool::BytesPerBlock(const KvShape& shape, int block_tokens) {
  return 2 * static_cast<size_t>(shape.n_layers) * static_cast<size_t>(block_tokens) *
         static_cast<size_t>(shape.row_width()) * sizeof(uint16_t);
}

absl::StatusOr<std::unique_ptr<BlockPool>> BlockPool::Create(const KvShape& shape,
                                                             size_t pool_bytes, int block_tokens) {
  if (shape.n_layers <= 0 || shape.n_kv_heads <= 0 || shape.head_dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV shape must be positive, got n_layers ", shape.n_layers, ", n_kv_heads ",
                     shape.n_kv_heads, ", head_dim ", shape.head_dim));
  }
  if (block_tokens <= 0 || block_tokens % kKvSpanAlign != 0) {
    return absl::InvalidArgumentError(absl::StrCat("block_tokens must be a positive multiple of ",
                                                   kKvSpanAlign, ", got ", block_tokens));
  }
  // Values are quantized in channel groups of at most 64 (kv_quant.h).
  if (shape.head_dim > 64 && shape.head_dim % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim ", shape.head_dim, " above 64 must be a multiple of 8 for KV quantization"));
  }
  const size_t per_block = BytesPerBlock(shape, block_tokens);
  const size_t fit = pool_bytes / per_block;
  if (fit < 1) {
    return absl::InvalidArgumentError(absl::StrCat("KV pool of ", pool_bytes,
                                                   " bytes holds no block of ", per_block,
                                                   " bytes (", block_tokens, " tokens)"));
  }
  const int n_blocks = static_cast<int>(std::min<size_t>(fit, std::numeric_limits<int32_t>::max()));
  TierBytes tb{};
  for (int t = 0; t < kNumKvTiers; ++t) tb[t] = KvUnitBytes(shape, block_tokens, TierFromIndex(t));
  // One slab per f16 block: the f16 capacity is exactly what the budget
  // held before compression existed, and a slab fits many quantized units.
  auto arena = SlabArena::Create(tb, per_block, n_blocks);
  if (!arena.ok()) return arena.status();
  return std::unique_ptr<BlockPool>(
      new BlockPool(shape, block_tokens, n_blocks, per_block, tb, *std::move(arena)));
}

BlockPool::BlockPool(const KvShape& shape, int block_tokens, int n_blocks, size_t bytes_per_block,
                     const TierBytes& tier_bytes, std::unique_ptr<SlabArena> arena)
    : shape_(shape),
      block_tokens_(block_tokens),
      n_blocks_(n_blocks),
      bytes_per_block_(bytes_per_block),
      layer_half_(static_cast<size_t>(block_tokens) * shape.row_width()),
      tier_bytes_(tier_bytes),
      arena_(std::move(arena)) {}

int BlockPool::n_free() const {
  return static_cast<int>(
      std::min<int64_t>(arena_->Available(KvTier::kF16) / shape_.n_layers, n_blocks_));
}

std::optional<int32_t> BlockPool::Allocate() {
  if (arena_->Available(KvTier::kF16) < shape_.n_layers) return std::nullopt;
  int32_t id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
  } else {
    id = static_cast<int32_t>(refs_.size());
    refs_.push_back(0);
    units_.resize(units_.size() + shape_.n_layers);
  }
  KV_CHECK_EQ(refs_[id], 0);
  refs_[id] = 1;
  for (int l = 0; l < shape_.n_layers; ++l) {
    const std::optional<uint32_t> h = arena_->Allocate(KvTier::kF16);
    KV_CHECK_MSG(h.has_value(), "arena promised f16 units it does not have");
    units_[static_cast<size_t>(id) * shape_.n_layers + l] = {*h, KvTier::kF16};
  }
  tier_units_[TierIndex(KvTier::kF16)] += shape_.n_layers;
  return id;
}

void BlockPool::CheckUsed(int32_t id) const {
  KV_CHECK_MSG(id >= 0 && id < static_cast<int32_t>(refs_.size()), "block id out of range");
  KV_CHECK_MSG(refs_[id] > 0, "use of a free block");
}

void BlockPool::Retain(int32_t id) {
  KV_CHECK_MSG(id >= 0 && id < static_cast<int32_t>(refs_.size()), "block id out of range");
  KV_CHECK_MSG(refs_[id] > 0, "retain of a free block");
  ++refs_[id];
}

void BlockPool::Release(int32_t id) {
  KV_CHECK_MSG(id >= 0 && id < static_cast<int32_t>(refs_.size()), "block id out of range");
  KV_CHECK_MSG(refs_[id] > 0, "release of a free block");
  if (--refs_[id] > 0) return;
  for (int l = 0; l < shape_.n_layers; ++l) {
    UnitRef& u = units_[static_cast<size_t>(id) * shape_.n_layers + l];
    if (u.tier != KvTier::kEvicted) arena_->Free(u.tier, u.handle);
    --tier_units_[TierIndex(u.tier)];
    u = UnitRef{};
  }
  free_.push_back(id);
}

int32_t BlockPool::ref_count(int32_t id) const {
  KV_CHECK_MSG(id >= 0 && id < static_cast<int32_t>(refs_.size()), "block id out of range");
  return refs_[id];
}

const BlockPool::UnitRef& BlockPool::Unit(int32_t id, int layer) const {
  CheckUsed(id);
  KV_CHECK(layer >= 0 && layer < shape_.n_layers);
  return units_[static_cast<size_t>(id) * shape_.n_layers + layer];
}

uint16_t* BlockPool::F16(int32_t id, int layer) const {
  const UnitRef& u = Unit(id, layer);
  KV_CHECK_MSG(u.tier == KvTier::kF16, "f16 access to a compressed unit");
  return reinterpret_cast<uint16_t*>(const_cast<uint8_t*>(arena_->Data(u.handle)));
}

const uint8_t* BlockPool::unit_data(int32_t id, int layer) const {
  const UnitRef& u = Unit(id, layer);
  KV_CHECK_MSG(u.tier != KvTier::kEvicted, "an evicted unit has no data");
  return arena_->Data(u.handle);
}

void BlockPool::CopyBlock(int32_t from, int32_t to) {
  KV_CHECK(from != to);
  KV_CHECK_MSG(ref_count(from) > 0 && ref_count(to) > 0, "copy involving a free block");
  const size_t unit = arena_->unit_bytes(KvTier::kF16);
  for (int l = 0; l < shape_.n_layers; ++l) {
    std::memcpy(F16(to, l), F16(from, l), unit);
  }
}

bool BlockPool::Compress(int32_t id, int layer, KvTier to, int n_valid) {
  CheckUsed(id);
  KV_CHECK(layer >= 0 && layer < shape_.n_layers);
  KV_CHECK(n_valid >= 1 && n_valid <= block_tokens_);
  UnitRef& u = units_[static_cast<size_t>(id) * shape_.n_layers + layer];
  const KvTier from = u.tier;
  KV_CHECK_MSG(to > from, "tiers only move down");
  auto retier = [&](std::optional<uint32_t> h) {
    --tier_units_[TierIndex(from)];
    ++tier_units_[TierIndex(to)];
    u.tier = to;
    u.handle = h.value_or(0);
  };
  if (to == KvTier::kEvicted) {
    arena_->Free(from, u.handle);
    retier(std::nullopt);
    return true;
  }
  // The source as f16 [K | V]: in place for an f16 unit, else dequantized.
  const uint16_t* k;
  if (from == KvTier::kF16) {
    k = reinterpret_cast<const uint16_t*>(arena_->Data(u.handle));
  } else {
    scratch_.resize(2 * layer_half_);
    DequantizeKvUnit(shape_, block_tokens_, from, arena_->Data(u.handle), scratch_.data(),
                     scratch_.data() + layer_half_);
    k = scratch_.data();
  }
  std::optional<uint32_t> h = arena_->Allocate(to);
  if (!h.has_value()) {
    // Freeing the old unit may empty a slab the new tier can use; keep a
    // copy of the source so that the old unit can be restored if not.
    if (k != scratch_.data()) {
      scratch_.assign(k, k + 2 * layer_half_);
      k = scratch_.data();
    }
    const std::vector<uint8_t> raw(arena_->Data(u.handle),
                                   arena_->Data(u.handle) + arena_->unit_bytes(from));
    arena_->Free(from, u.handle);
    h = arena_->Allocate(to);
    if (!h.has_value()) {
      const std::optional<uint32_t> back = arena_->Allocate(from);
      KV_CHECK_MSG(back.has_value(), "a unit just freed cannot be reallocated");
      std::memcpy(arena_->Data(*back), raw.data(), raw.size());
      u.handle = *back;
      return false;
    }
    QuantizeKvUnit(shape_, block_tokens_, to, n_valid, k, k + layer_half_, arena_->Data(*h));
    retier(h);
    return true;
  }
  QuantizeKvUnit(shape_, block_tokens_, to, n_valid, k, k + layer_half_, arena_->Data(*h));
  arena_->Free(from, u.handle);
  retier(h);
  return true;
}

absl::Status BlockPool::CheckInvariants() const {
  if (absl::Status st = arena_->CheckInvariants(); !st.ok()) return st;
  std::vector<char> on_free_list(refs_.size(), 0);
  for (int32_t id : free_) {
    if (id < 0 || id >= static_cast<int32_t>(refs_.size())) {
      return absl::InternalError(absl::StrCat("free list holds bad id ", id));
    }
    if (on_free_list[id]) {
      return absl::InternalError(absl::StrCat("block ", id, " is on the free list twice"));
    }
    on_free_list[id] = 1;
  }
  std::array<int64_t, kNumKvTiers> tiers{};
  for (int32_t id = 0; id < static_cast<int32_t>(refs_.size()); ++id) {
    if (refs_[id] < 0) {
      return absl::InternalError(absl::StrCat("block ", id, " has ref count ", refs_[id]));
    }
    if (on_free_list[id] && refs_[id] != 0) {
      return absl::InternalError(absl::StrCat("free block ", id, " has ref count ", refs_[id]));
    }
    if (!on_free_list[id] && refs_[id] == 0) {
      return absl::InternalError(absl::StrCat("block ", id, " is unreferenced but not free"));
    }
    if (refs_[id] == 0) continue;
    for (int l = 0; l < shape_.n_layers; ++l) {
      const KvTier t = units_[static_cast<size_t>(id) * shape_.n_layers + l].tier;
      ++tiers[TierIndex(t)];
    }
  }
  for (int t = 0; t < kNumKvTiers; ++t) {
    if (tiers[t] != tier_units_[t]) {
      return absl::InternalError(absl::StrCat("tier ", std::string(KvTierName(TierFromIndex(t))),
                                              " counts ", tier_units_[t], " units but blocks hold ",
                                              tiers[t]));
    }
    if (t != TierIndex(KvTier::kEvicted) && tiers[t] != arena_->units(TierFromIndex(t))) {
      return absl::InternalError(absl::StrCat("tier ", std::string(KvTierName(TierFromIndex(t))),
                                              ": blocks hold ", tiers[t], " units, the arena ",
                                              arena_->units(TierFromIndex(t))));
    }
  }
  return absl::OkStatus();
}

}  // namespace kvserve::kvcache
