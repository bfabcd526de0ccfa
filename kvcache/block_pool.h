// A fixed pool of KV blocks, carved once out of a byte budget, from which the
// paged cache builds each sequence's storage.
//
// A block holds `block_tokens` consecutive positions of one sequence in
// every layer, so a sequence's block table is one list of ids for the whole
// model and copying a block (copy-on-write) is one memcpy. Within a block,
// layer l holds
//   K: f16 [row_width][block_tokens]  (channel-major, as KvSpan::k with
//      k_stride = block_tokens)
//   V: f16 [block_tokens][row_width]  (token-major, as KvSpan::v)
// block_tokens is a multiple of kKvSpanAlign, so a block's K is a valid
// span layout and its padding positions are always readable.
//
// Blocks are reference counted: a block is free at count 0 and returns to a
// LIFO free list (so allocation order is deterministic). Misuse — releasing
// or retaining a free block, or an out-of-range id — is a bug and aborts.
//
// Thread-safety: Allocate/Retain/Release/CopyBlock and writes through the
// mutable storage pointers are engine-thread only. Const accessors may run
// on many threads at once while no mutation runs.
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

namespace kvserve::kvcache {

class BlockPool {
 public:
  // As many blocks as fit in pool_bytes (at most INT32_MAX), zero-filled.
  // InvalidArgument if the shape has a non-positive dimension, block_tokens
  // is not a positive multiple of kKvSpanAlign, or not one block fits;
  // ResourceExhausted if the memory cannot be allocated.
  static absl::StatusOr<std::unique_ptr<BlockPool>> Create(const KvShape& shape, size_t pool_bytes,
                                                           int block_tokens = kKvSpanAlign);

  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // Bytes of one block: K and V of block_tokens positions in every layer.
  static size_t BytesPerBlock(const KvShape& shape, int block_tokens);

  const KvShape& shape() const { return shape_; }
  int block_tokens() const { return block_tokens_; }
  int n_blocks() const { return n_blocks_; }
  int n_free() const { return static_cast<int>(free_.size()); }
  int n_used() const { return n_blocks_ - n_free(); }
  size_t bytes_per_block() const { return bytes_per_block_; }
  size_t capacity_bytes() const { return bytes_per_block_ * n_blocks_; }
  size_t used_bytes() const { return bytes_per_block_ * n_used(); }

  // Takes a block off the free list with reference count 1, or nullopt if
  // none is free (a normal outcome the caller must handle). The block keeps
  // whatever its previous owner wrote.
  std::optional<int32_t> Allocate();
  // Adds a reference to a used block.
  void Retain(int32_t id);
  // Drops a reference; at 0 the block goes back to the free list.
  void Release(int32_t id);
  int32_t ref_count(int32_t id) const;

  // Copies all layers of block `from` into block `to` (both used, distinct).
  void CopyBlock(int32_t from, int32_t to);

  // Storage of block `id` in `layer`; valid for the pool's lifetime.
  //   K: f16 [row_width][block_tokens]; V: f16 [block_tokens][row_width].
  uint16_t* k(int32_t id, int layer) { return Layer(id, layer); }
  uint16_t* v(int32_t id, int layer) { return Layer(id, layer) + layer_half_; }
  const uint16_t* k(int32_t id, int layer) const { return Layer(id, layer); }
  const uint16_t* v(int32_t id, int layer) const { return Layer(id, layer) + layer_half_; }

  // Checks that the free list and the reference counts agree: every block
  // is either on the free list exactly once with count 0, or off it with a
  // positive count.
  absl::Status CheckInvariants() const;

 private:
  struct FreeDeleter {
    void operator()(uint16_t* p) const { std::free(p); }
  };

  BlockPool(const KvShape& shape, int block_tokens, int n_blocks, size_t bytes_per_block,
            std::unique_ptr<uint16_t[], FreeDeleter> arena);

  uint16_t* Layer(int32_t id, int layer) const;

  KvShape shape_;
  int block_tokens_;
  int n_blocks_;
  size_t bytes_per_block_;
  size_t layer_half_;  // f16 elements of one layer's K (= of its V)
  // Block-major: block id, then layer, then K and V.
  std::unique_ptr<uint16_t[], FreeDeleter> arena_;
  std::vector<int32_t> refs_;  // [n_blocks]
  std::vector<int32_t> free_;  // stack; back() is allocated next
};

}  // namespace kvserve::kvcache
