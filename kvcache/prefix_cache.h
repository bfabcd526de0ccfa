// An index of full KV blocks by the token chain they hold, so that requests
// repeating a prefix (a tenant's document) reuse its blocks instead of
// computing them again. PagedKvCache owns one and is its only user; the
// engine sees it through PagedKvCache's MatchPrefix / AttachPrefix /
// IndexPrefix.
//
// Keys. The block holding positions [i*bt, (i+1)*bt) of a token sequence
// (bt = block_tokens) is keyed by its chain hash
//   key(-1) = H(salt)
//   key(i)  = H(key(i-1), tokens[i*bt, (i+1)*bt))
// so a key stands for the salt and every token up to the block's end. The
// salt is the engine's (tenant id and compression spec): chains of different
// salts never meet, whatever their tokens. Only full blocks are indexed.
// H is absl::Hash (64 bits, seeded per process, so a client cannot aim
// collisions at another chain from outside). Hashes only find candidates:
// each entry also keeps its tokens, its parent (the indexed block before it
// in the chain; none for a chain's first block, which keeps the salt
// instead), and a lookup compares them. A verified match of block i whose
// parent is the verified match of block i - 1 therefore holds the same salt
// and the same tokens [0, (i+1)*bt), by induction: a hash collision can cost
// a miss (the colliding chain is not indexed), never another chain's KV.
//
// References. The index holds one BlockPool reference on every indexed
// block, so a block outlives its last sequence. A block whose only
// reference is the index's is "unused"; unused blocks sit on an LRU list in
// the order they became unused, and EvictUnused drops the index's
// reference on the least recently used ones, which frees them. PagedKvCache
// releases a sequence's blocks to the list last block first, so a chain's
// later blocks are older there and chains are evicted from their ends.
//
// Structure. Entries form a forest (each block's parent is the block before
// it in the chain). Removing an entry (EvictUnused, Unindex) removes its
// whole subtree, since a match could no longer reach it: descendants that
// were unused are freed, descendants still in use only lose the index's
// reference.
//
// Contents. A block is indexed only while it is f16 in every layer, and the
// index promises that KV to future hits, so indexed blocks must not be
// compressed. PagedKvCache guarantees it: an indexed block is never private
// (the index holds a reference), and Compress needs a private block.
//
// Whoever retains or releases an indexed block's pool reference outside the
// index (sequences sharing it) must call OnReferenceChange(block) after, so
// the LRU list stays exact.
//
// Thread-safety: as PagedKvCache: mutations on the engine thread only, while
// no forward pass reads; const queries may run on many threads at once.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "kvcache/block_pool.h"

namespace kvserve::kvcache {

// Cumulative counters since the index was made.
struct PrefixCacheCounters {
  int64_t blocks_indexed = 0;    // blocks added to the index
  int64_t hits = 0;              // sequences started on >= 1 cached block
  int64_t hit_tokens = 0;        // positions those sequences did not compute
  int64_t evicted_blocks = 0;    // unused indexed blocks freed (LRU eviction)
  int64_t unindexed_blocks = 0;  // in-use blocks taken out of the index (not freed)
};

class PrefixCache {
 public:
  using Key = uint64_t;

  // `pool` is not owned and must outlive the index. Destroying the index
  // releases nothing (its owner destroys the pool with it). key_bits in
  // [1, 64]: the index keeps only the low key_bits bits of each key; fewer
  // than 64 only to test what collisions do.
  explicit PrefixCache(BlockPool* pool, int key_bits = 64);

  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  // The chain's seed, key(-1), for a salt.
  static Key SeedKey(std::string_view salt);
  // key(i) from key(i - 1) and the block's block_tokens tokens.
  static Key ChainKey(Key previous, std::span<const int32_t> tokens);

  // --- Queries.

  // Appends to *blocks the ids of the longest indexed chain matching salt
  // and the first full blocks of `tokens`, at most max_blocks of them, and
  // returns how many it appended.
  int Match(std::string_view salt, std::span<const int32_t> tokens, int max_blocks,
            std::vector<int32_t>* blocks) const;
  bool Contains(int32_t block) const { return entries_.count(block) != 0; }
  // Whether `block` is indexed and the index holds its only reference.
  bool IsUnused(int32_t block) const;
  int n_indexed() const { return static_cast<int>(entries_.size()); }
  // Indexed blocks with no other reference: what EvictUnused can free.
  int n_unused() const { return static_cast<int>(lru_.size()); }
  const PrefixCacheCounters& counters() const { return counters_; }

  // --- Mutations.

  // Indexes the blocks of one sequence: table[i] holds the KV of
  // tokens[i*bt, (i+1)*bt) (under salt), for i < min(tokens.size() / bt,
  // table.size()); the caller passes only tokens whose KV is written. Walks
  // the chain from the start: a block whose chain is indexed already (under
  // this or another block id) is skipped and the chain continues through
  // the indexed one; the walk stops at the first block it cannot index (not
  // f16 in every layer, indexed under another chain, or its key taken by a
  // colliding chain). Takes one reference per block added; returns how many
  // it added.
  int Index(std::string_view salt, std::span<const int32_t> tokens, std::span<const int32_t> table);
  // Resyncs `block`'s LRU state with its reference count; a no-op for
  // blocks not indexed. Call after every outside Retain/Release.
  void OnReferenceChange(int32_t block);
  // Removes least recently used unused blocks (with their subtrees) until
  // at least n blocks were freed or none is unused. Returns blocks freed.
  int EvictUnused(int n);
  // Removes `block` and its subtree from the index, dropping the index's
  // references. Returns how many entries it removed (0 if `block` was not
  // indexed).
  int Unindex(int32_t block);
  // Counts a sequence that started on `blocks` (> 0) cached blocks.
  void RecordHit(int blocks);

  // Checks that the forest, the key map, the LRU list and the pool agree:
  // every entry names a used, all-f16 block, sits on the LRU list exactly
  // when its reference count is 1, and is linked to its parent and
  // children both ways.
  absl::Status CheckInvariants() const;

 private:
  struct Entry {
    Key key = 0;                           // & key_mask_
    int32_t parent = -1;                   // block id; -1 for a chain's first block
    std::string salt;                      // a chain's first block only
    std::vector<int32_t> tokens;           // [block_tokens]
    std::vector<int32_t> children;         // block ids
    std::list<int32_t>::iterator lru_pos;  // valid while on_lru
    bool on_lru = false;
  };

  // The entry under `key` if it holds `tokens` after `parent` (and `salt`
  // for a chain's first block), else null.
  const Entry* Verified(Key key, int32_t parent, std::string_view salt,
                        std::span<const int32_t> tokens) const;
  bool AllF16(int32_t block) const;
  // Removes `block`'s subtree; returns the blocks freed.
  int RemoveSubtree(int32_t block, int* removed);

  BlockPool* const pool_;  // not owned
  const Key key_mask_;
  std::unordered_map<int32_t, Entry> entries_;  // by block id
  std::unordered_map<Key, int32_t> by_key_;     // (chain key & key_mask_) -> block id
  std::list<int32_t> lru_;                      // unused blocks, least recently used first
  PrefixCacheCounters counters_;
};

}  // namespace kvserve::kvcache
