#include "kvcache/block_pool.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace kvserve::kvcache {
namespace {

// Cache-line alignment. Block sizes are multiples of 64 bytes (block_tokens
// is a multiple of 16 and entries are 2 bytes), so every block starts a line.
constexpr size_t kArenaAlign = 64;

}  // namespace

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
  const size_t per_block = BytesPerBlock(shape, block_tokens);
  const size_t fit = pool_bytes / per_block;
  if (fit < 1) {
    return absl::InvalidArgumentError(absl::StrCat("KV pool of ", pool_bytes,
                                                   " bytes holds no block of ", per_block,
                                                   " bytes (", block_tokens, " tokens)"));
  }
  const int n_blocks = static_cast<int>(std::min<size_t>(fit, std::numeric_limits<int32_t>::max()));
  const size_t bytes = per_block * n_blocks;  // per_block is even, so a multiple of 2
  const size_t alloc = (bytes + kArenaAlign - 1) / kArenaAlign * kArenaAlign;
  auto* mem = static_cast<uint16_t*>(std::aligned_alloc(kArenaAlign, alloc));
  if (mem == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate a KV pool of ", bytes, " bytes"));
  }
  // Zeroed once so that padding and never-written positions read as finite
  // values; blocks are not cleared again when reused.
  std::memset(mem, 0, alloc);
  return std::unique_ptr<BlockPool>(new BlockPool(shape, block_tokens, n_blocks, per_block,
                                                  std::unique_ptr<uint16_t[], FreeDeleter>(mem)));
}

BlockPool::BlockPool(const KvShape& shape, int block_tokens, int n_blocks, size_t bytes_per_block,
                     std::unique_ptr<uint16_t[], FreeDeleter> arena)
    : shape_(shape),
      block_tokens_(block_tokens),
      n_blocks_(n_blocks),
      bytes_per_block_(bytes_per_block),
      layer_half_(static_cast<size_t>(block_tokens) * shape.row_width()),
      arena_(std::move(arena)),
      refs_(n_blocks, 0) {
  free_.reserve(n_blocks);
  // Reverse order, so that a fresh pool hands out 0, 1, 2, ...
  for (int32_t id = n_blocks - 1; id >= 0; --id) free_.push_back(id);
}

std::optional<int32_t> BlockPool::Allocate() {
  if (free_.empty()) return std::nullopt;
  const int32_t id = free_.back();
  free_.pop_back();
  KV_CHECK_EQ(refs_[id], 0);
  refs_[id] = 1;
  return id;
}

void BlockPool::Retain(int32_t id) {
  KV_CHECK_MSG(id >= 0 && id < n_blocks_, "block id out of range");
  KV_CHECK_MSG(refs_[id] > 0, "retain of a free block");
  ++refs_[id];
}

void BlockPool::Release(int32_t id) {
  KV_CHECK_MSG(id >= 0 && id < n_blocks_, "block id out of range");
  KV_CHECK_MSG(refs_[id] > 0, "release of a free block");
  if (--refs_[id] == 0) free_.push_back(id);
}

int32_t BlockPool::ref_count(int32_t id) const {
  KV_CHECK_MSG(id >= 0 && id < n_blocks_, "block id out of range");
  return refs_[id];
}

void BlockPool::CopyBlock(int32_t from, int32_t to) {
  KV_CHECK(from != to);
  KV_CHECK_MSG(ref_count(from) > 0 && ref_count(to) > 0, "copy involving a free block");
  std::memcpy(Layer(to, 0), Layer(from, 0), bytes_per_block_);
}

uint16_t* BlockPool::Layer(int32_t id, int layer) const {
  KV_CHECK_MSG(id >= 0 && id < n_blocks_, "block id out of range");
  KV_CHECK(layer >= 0 && layer < shape_.n_layers);
  const size_t block_elems = bytes_per_block_ / sizeof(uint16_t);
  return arena_.get() + static_cast<size_t>(id) * block_elems +
         static_cast<size_t>(layer) * 2 * layer_half_;
}

absl::Status BlockPool::CheckInvariants() const {
  std::vector<char> on_free_list(n_blocks_, 0);
  for (int32_t id : free_) {
    if (id < 0 || id >= n_blocks_) {
      return absl::InternalError(absl::StrCat("free list holds bad id ", id));
    }
    if (on_free_list[id]) {
      return absl::InternalError(absl::StrCat("block ", id, " is on the free list twice"));
    }
    on_free_list[id] = 1;
  }
  for (int32_t id = 0; id < n_blocks_; ++id) {
    if (refs_[id] < 0) {
      return absl::InternalError(absl::StrCat("block ", id, " has ref count ", refs_[id]));
    }
    if (on_free_list[id] && refs_[id] != 0) {
      return absl::InternalError(absl::StrCat("free block ", id, " has ref count ", refs_[id]));
    }
    if (!on_free_list[id] && refs_[id] == 0) {
      return absl::InternalError(absl::StrCat("block ", id, " is unreferenced but not free"));
    }
  }
  return absl::OkStatus();
}

}  // namespace kvserve::kvcache
