// A KV store that keeps each sequence in fixed-size blocks from a shared
// BlockPool, so memory is committed block_tokens positions at a time as
// sequences grow, returns to the pool when they finish, and can be shared
// between sequences with a common prefix. It is the store the server's
// scheduler uses; the forward pass sees it only through KvStore.
//
// Each sequence has a block table (block ids in position order) and a
// length: one past the highest position written. Its capacity, the
// positions it may write, is n_blocks * block_tokens. Read hands out one
// KvSpan per block (k_stride = block_tokens).
//
// Allocation and sharing contract:
//  - Reserve(seq, new_len) makes positions [Length(seq), new_len) writable
//    with no further allocation: it adds the missing blocks and, if one of
//    the blocks in that range is shared with another sequence (after a
//    Fork), replaces it by a private copy right away. BlocksNeeded counts
//    both kinds, and Reserve is all-or-nothing. So the normal cycle —
//    CanAllocate(seq, len + n), Reserve(seq, len + n), Write [len, len + n)
//    in every layer — never allocates inside Write and cannot fail there.
//  - Fork(src, dst) shares the blocks holding src's Length(src) positions.
//    If that length is not a multiple of block_tokens, the last of them is
//    partially filled and both sequences will append into it, so each needs
//    one block for its copy: call Reserve on both after a Fork (it counts
//    and makes that copy). Whichever un-shares last keeps the original.
//  - A Write into a shared block outside a reserved range (overwriting old
//    positions, or appending after a Fork without a new Reserve) copies the
//    block then and there. The caller checks BlocksNeededForWrite(seq, pos,
//    n) <= pool().n_free() first; a Write that finds no free block for its
//    copy is a bug and aborts.
// Compression contract: Compress(seq, layer, block, tier) moves one layer of
// one private block to a lower tier (kv_tier.h), freeing bytes in the pool;
// an evicted block's positions are left out of Read's spans while the
// sequence's length and every other position stay where they are. Blocks
// still to be written (the last, partial one; a shared one to be copied)
// must stay f16: copying or writing a compressed block aborts.
// Queries never change anything; misuse (unknown sequence in Write/Read/Fork,
// positions beyond capacity or length) aborts via KV_CHECK.
//
// Thread-safety: as KvStore. All mutations (Reserve, Free, Fork, Write) are
// engine-thread only and must not run during a forward pass's reads; Read
// and the queries are const and may run on many threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvcache/block_pool.h"
#include "kvcache/kv_store.h"

namespace kvserve::kvcache {

class PagedKvCache : public KvStore {
 public:
  // A cache over a new pool of pool_bytes (see BlockPool::Create for the
  // errors).
  static absl::StatusOr<std::unique_ptr<PagedKvCache>> Create(const KvShape& shape,
                                                              size_t pool_bytes,
                                                              int block_tokens = kKvSpanAlign);
  // Takes ownership of a pool with no blocks in use: the cache accounts for
  // every reference.
  explicit PagedKvCache(std::unique_ptr<BlockPool> pool);

  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  // --- Queries. An unknown sequence has length, blocks and bytes 0.

  // Blocks Reserve(seq, new_len) would take from the pool: those to grow
  // seq (or a new sequence) to new_len positions, plus one per shared block
  // it must copy (see the contract above). new_len >= 0.
  int BlocksNeeded(int seq, int new_len) const;
  // Whether Reserve(seq, new_len) would succeed now.
  bool CanAllocate(int seq, int new_len) const;
  // Blocks a Write(seq, layer, pos, n, ...) would take for copies: the shared
  // blocks among those holding [pos, pos + n), which must lie within
  // Capacity(seq).
  int BlocksNeededForWrite(int seq, int pos, int n) const;
  bool HasSequence(int seq) const { return seqs_.count(seq) != 0; }
  int Length(int seq) const;
  int Capacity(int seq) const { return NumBlocks(seq) * block_tokens(); }
  int NumBlocks(int seq) const;
  // Bytes of the units of the blocks in seq's table as stored now, counting
  // shared blocks in full.
  size_t SequenceBytes(int seq) const;
  // Bytes the same blocks would take uncompressed (all f16).
  size_t SequenceUncompressedBytes(int seq) const {
    return static_cast<size_t>(NumBlocks(seq)) * pool_->bytes_per_block();
  }
  // Tier of layer `layer` of seq's block `block` (< NumBlocks(seq)).
  KvTier Tier(int seq, int layer, int block) const;
  // Tiers of every block of seq in `layer`, in block order, into *out.
  void Tiers(int seq, int layer, std::vector<KvTier>* out) const;
  // Whether seq's block `block` is held by seq alone (only those compress).
  bool IsPrivate(int seq, int block) const;
  int num_sequences() const { return static_cast<int>(seqs_.size()); }
  int block_tokens() const { return pool_->block_tokens(); }
  const BlockPool& pool() const { return *pool_; }

  // --- Mutations (engine thread only).

  // Creates seq if absent (with length 0) and makes positions
  // [Length(seq), new_len) writable. Returns false, changing nothing, if the
  // pool lacks BlocksNeeded(seq, new_len) free blocks. Never shrinks.
  bool Reserve(int seq, int new_len);
  // Releases seq's blocks and forgets it; a no-op for unknown ids.
  void Free(int seq);
  // Moves layer `layer` of seq's private block `block` down to tier `to`
  // (> its current tier). Returns false, changing nothing, when the pool
  // has no room for the smaller unit (only possible when it is full).
  bool Compress(int seq, int layer, int block, KvTier to);
  // Creates dst sharing the blocks that hold src's positions [0, Length(src)),
  // with Length(dst) = Length(src). src must exist, dst must not.
  void Fork(int src, int dst);

  // --- KvStore.
  const KvShape& shape() const override { return pool_->shape(); }
  // [pos, pos + n) must lie within Capacity(seq). Copies shared blocks it
  // writes into (see above). Sets Length(seq) = max(Length(seq), pos + n).
  void Write(int seq, int layer, int pos, int n, const float* k, const float* v) override;
  // end <= Length(seq). One span per block; the last may be partial.
  void Read(int seq, int layer, int end, std::vector<KvSpan>* spans) const override;

  // --- Debugging.

  // Checks that the block tables and the pool agree: every used block's
  // reference count equals the number of table entries naming it, no free
  // block is named, no table names a block twice, every length lies within
  // its capacity, and the pool's own free list is consistent.
  absl::Status CheckInvariants() const;
  // Pool usage and every sequence's table (with tiers of compressed
  // blocks), sequences in id order.
  std::string DebugString() const;

 private:
  struct Sequence {
    std::vector<int32_t> blocks;  // block ids, position order
    int length = 0;
  };
  // Replaces every shared block of `s` with index in [first, last) by a
  // private copy; aborts if the pool runs out.
  void Unshare(Sequence& s, int first, int last);

  std::unique_ptr<BlockPool> pool_;
  std::unordered_map<int, Sequence> seqs_;
  std::vector<uint16_t> scratch_;  // f16 K rows being transposed by Write
};

}  // namespace kvserve::kvcache
