// A KV store that keeps each sequence in fixed-size blocks from a shared
// BlockPool, so memory is committed block_tokens positions at a time as
// sequences grow, returns to the pool when they finish, and can be shared
// between sequences with a common prefix: a forked one, or one found in
// the prefix index (cached blocks of earlier requests, see below). It is
// the store the server's scheduler uses; the forward pass sees it only
// through KvStore.
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
//    n) <= n_available() first; a Write that finds no block for its copy is
//    a bug and aborts.
// Compression contract: Compress(seq, layer, block, tier) moves one layer of
// one private block to a lower tier (kv_tier.h), freeing bytes in the pool;
// an evicted block's positions are left out of Read's spans while the
// sequence's length and every other position stay where they are. Blocks
// still to be written (the last, partial one; a shared one to be copied)
// must stay f16: copying or writing a compressed block aborts.
// CompressShared does the same to a full block that other sequences hold
// too, for all of them at once: the caller (KvCompressor) must have every
// holder's consent (docs/compression.md, "Prefix cache and shared blocks").
// Prefix cache contract (prefix_cache.h has the keys and the LRU):
//  - IndexPrefix(seq, salt, tokens) adds seq's full, written, all-f16
//    blocks to an index by (salt, token chain). The index holds one
//    reference on each, so a block outlives its sequences; an indexed block
//    is never private and so never compresses while indexed.
//  - MatchPrefix (a query) finds the longest indexed chain for a new
//    request; AttachPrefix(seq, blocks) starts seq on it, with Length(seq) =
//    its tokens, so only the rest is computed. Attached blocks are full and
//    never written again (a Write into one copies it, as after a Fork).
//  - An indexed block that no sequence holds is "evictable": allocation
//    counts it as available (n_available() = pool free + evictable) and
//    Reserve (and the copies of Write) evict such blocks, least recently
//    used first, when the pool has too few free ones. An admission that
//    attaches evictable blocks takes them out of n_available() (see
//    EvictableAmong), so call AttachPrefix before the step's Reserves.
//  - Unindex(seq, block) takes an in-use block (and the rest of its chain)
//    out of the index, e.g. so that memory pressure can compress it.
// Queries never change anything; misuse (unknown sequence in Write/Read/Fork,
// positions beyond capacity or length) aborts via KV_CHECK.
//
// Thread-safety: as KvStore. All mutations (Reserve, Free, Fork, Write,
// Compress*, AttachPrefix, IndexPrefix, EvictUnused, Unindex) are
// engine-thread only and must not run during a forward pass's reads; Read
// and the queries are const and may run on many threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvcache/block_pool.h"
#include "kvcache/kv_store.h"
#include "kvcache/prefix_cache.h"

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
  // Whether Reserve(seq, new_len) would succeed now: BlocksNeeded <=
  // n_available().
  bool CanAllocate(int seq, int new_len) const;
  // Blocks a Write(seq, layer, pos, n, ...) would take for copies: the shared
  // (or indexed) blocks among those holding [pos, pos + n), which must lie
  // within Capacity(seq).
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
  // Whether seq's block `block` is held by seq alone, not shared and not
  // indexed (only those Compress).
  bool IsPrivate(int seq, int block) const;
  // The pool id of seq's block `block` (< NumBlocks(seq)).
  int32_t BlockId(int seq, int block) const;
  // Blocks that Reserve can have: free in the pool, or evictable from the
  // prefix index.
  int n_available() const { return pool_->n_free() + n_evictable(); }
  int num_sequences() const { return static_cast<int>(seqs_.size()); }
  int block_tokens() const { return pool_->block_tokens(); }
  const BlockPool& pool() const { return *pool_; }

  // --- Prefix cache queries.

  // The longest chain of indexed blocks holding salt + the first tokens,
  // capped at max_tokens positions (the caller leaves at least the last
  // prompt token to compute: max_tokens = prompt length - 1). Appends their
  // ids to *blocks (cleared first) and returns the positions they hold
  // (blocks * block_tokens).
  int MatchPrefix(std::string_view salt, std::span<const int32_t> tokens, int max_tokens,
                  std::vector<int32_t>* blocks) const;
  // How many of `blocks` are evictable now: AttachPrefix(seq, blocks)
  // lowers n_available() by this much.
  int EvictableAmong(std::span<const int32_t> blocks) const;
  // How much n_available() would grow if seq alone were freed now: its
  // blocks no other sequence holds (freed, or evictable if cached).
  // Freeing several sequences at once gives at least the sum (blocks they
  // share with each other count in none of them), so a scheduler that
  // preempts may count on it; NumBlocks(seq) overcounts shared blocks.
  int BlocksReleasedByFree(int seq) const;
  // Whether seq's block `block` is in the prefix index.
  bool IsIndexed(int seq, int block) const;
  // Indexed blocks no sequence holds (freed on demand by Reserve).
  int n_evictable() const { return index_.n_unused(); }
  const PrefixCache& prefix_cache() const { return index_; }

  // --- Mutations (engine thread only).

  // Creates seq if absent (with length 0) and makes positions
  // [Length(seq), new_len) writable, evicting unused indexed blocks (LRU)
  // when the pool lacks free ones. Returns false, changing nothing, if
  // BlocksNeeded(seq, new_len) > n_available(). Never shrinks.
  bool Reserve(int seq, int new_len);
  // Releases seq's blocks and forgets it; a no-op for unknown ids. Indexed
  // blocks it held last stay, evictable.
  void Free(int seq);
  // Moves layer `layer` of seq's private block `block` down to tier `to`
  // (> its current tier), evicting unused indexed blocks (LRU) when the pool
  // is full. Returns false, changing nothing else, when the pool has no room
  // for the smaller unit even then.
  bool Compress(int seq, int layer, int block, KvTier to);
  // As Compress, for a full (block_tokens positions written), unindexed
  // block that may be shared: it changes for every sequence holding it.
  bool CompressShared(int seq, int layer, int block, KvTier to);
  // Creates dst sharing the blocks that hold src's positions [0, Length(src)),
  // with Length(dst) = Length(src). src must exist, dst must not.
  void Fork(int src, int dst);

  // Creates seq (which must not exist) on the indexed blocks `blocks`, a
  // chain MatchPrefix returned, sharing them, with Length(seq) = their
  // positions. Counts a hit when blocks is not empty.
  void AttachPrefix(int seq, std::span<const int32_t> blocks);
  // Indexes seq's full blocks of positions < Length(seq) under salt, where
  // tokens[p] is the token at position p (the prompt; only the first
  // Length(seq) count). Blocks already indexed stay; a block whose chain is
  // indexed under another block id stays private; the walk stops at the
  // first block not f16 in every layer. Returns the blocks it added.
  int IndexPrefix(int seq, std::string_view salt, std::span<const int32_t> tokens);
  // Frees at least n unused indexed blocks, least recently used first (or
  // all there are). Returns how many it freed.
  int EvictUnused(int n) { return index_.EvictUnused(n); }
  // Takes seq's block `block` and the indexed blocks chained after it out
  // of the index (dropping the index's references; unused ones are freed).
  // Returns whether `block` was indexed.
  bool Unindex(int seq, int block);

  // --- KvStore.
  const KvShape& shape() const override { return pool_->shape(); }
  // [pos, pos + n) must lie within Capacity(seq). Copies shared blocks it
  // writes into (see above). Sets Length(seq) = max(Length(seq), pos + n).
  void Write(int seq, int layer, int pos, int n, const float* k, const float* v) override;
  // end <= Length(seq). One span per block; the last may be partial.
  void Read(int seq, int layer, int end, std::vector<KvSpan>* spans) const override;

  // --- Debugging.

  // Checks that the block tables, the prefix index and the pool agree:
  // every used block's reference count equals the number of table entries
  // naming it plus one if it is indexed, no free block is named or
  // indexed, indexed blocks are f16, no table names a block twice, every
  // length lies within its capacity, and the pool's and the index's own
  // bookkeeping is consistent.
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
  // A block from the pool, evicting one unused indexed block if none is
  // free; nullopt if neither works.
  std::optional<int32_t> AllocateBlock();
  // pool_->Compress, evicting unused indexed blocks while it lacks room.
  bool CompressEvicting(int32_t id, int layer, KvTier to, int n_valid);
  // Drops one reference of a block a table named and keeps the index's
  // LRU state in step.
  void ReleaseBlock(int32_t id);

  std::unique_ptr<BlockPool> pool_;
  PrefixCache index_;  // over *pool_
  std::unordered_map<int, Sequence> seqs_;
  std::vector<uint16_t> scratch_;  // f16 K rows being transposed by Write
};

}  // namespace kvserve::kvcache
