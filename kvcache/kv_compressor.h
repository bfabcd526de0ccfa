// Drives KV compression for the sequences of a PagedKvCache: collects the
// attention each block receives (as the forward pass's AttentionMassSink),
// runs each sequence's policy between forward passes, and moves blocks to
// the tiers it picks, so their bytes go back to the pool.
//
// Per sequence there is a spec, {policy, ratio}: the policy by name
// (compression_policy.h) and the target size of its cache as a fraction of
// the uncompressed (all-f16) size. A sequence is re-assessed after a step
// in which it grew by a block (or its target changed), one layer at a time
// with an equal share of the budget per layer: budget = ratio * blocks *
// f16 unit bytes.
//
// Memory pressure: Reclaim first evicts cached blocks no sequence uses
// (PagedKvCache::EvictUnused: no cost to any running sequence), then
// tightens the target of every compressing sequence (or of a given subset)
// by a factor (1 - beta) per round, down to min_ratio, and re-applies the
// policies, until the pool has the requested free blocks. The engine calls
// it instead of preempting; sequences with policy "none" are never touched.
//
// Shared and cached blocks (docs/compression.md, "Prefix cache and shared
// blocks"):
//  - A block in the prefix index stays f16 (the index promises its exact
//    KV to future hits): policies see it pinned. Only under pressure
//    (Reclaim) may it leave the index, and only when every sequence holding
//    it asks for a lower tier; it then compresses as below.
//  - A block several sequences hold compresses jointly. Each holder's
//    policy sees the block's score summed over all holders (the attention
//    history of every sharer) and states a wish (its target tier); the
//    block moves only when every holder is tracked here, compresses, and
//    has a wish for it, and then to the highest precision any holder
//    wished (evicted only if all evict). A holder's bytes (SequenceBytes)
//    read tiers live, so no block ever holds less than a holder asked for:
//    nothing changes under a sequence that it has not accounted for.
//  - A block that cannot move (a holder untracked or with policy "none", or
//    cached outside pressure) is pinned: it keeps its tier at its own cost
//    and the ratio applies to the rest, as for protected blocks.
//
// Scores and the formula, in words: a block's decode-time score is an
// exponential moving average (weight ema_decay on history) of the mean
// attention fraction a query gives it; at prefill, the last
// observation_window rows of each chunk are the observers. The policy
// combines history and latest (alpha, see PolicyOptions). docs/compression.md
// has the full reading.
//
// Thread-safety: engine thread only. OnBlockMass is called by the forward
// pass on the engine thread.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvcache/block_scores.h"
#include "kvcache/compression_policy.h"
#include "kvcache/kv_store.h"
#include "kvcache/kv_tier.h"
#include "kvcache/paged_kv_cache.h"

namespace kvserve::kvcache {

struct KvCompressionSpec {
  std::string policy = "none";
  double ratio = 1.0;  // target bytes / uncompressed bytes, in (0, 1]
};

struct KvCompressorOptions {
  PolicyOptions policy;
  float ema_decay = 0.9f;       // [0, 1): weight of history in the EMA
  int observation_window = 16;  // prefill rows observed per chunk, >= 1
  float beta = 0.5f;            // (0, 1): pressure tightening per round
  double min_ratio = 1.0 / 32;  // (0, 1]: pressure never goes below this
};

absl::Status ValidateCompressorOptions(const KvCompressorOptions& options);
// InvalidArgument unless the policy is known and 0 < ratio <= 1.
absl::Status ValidateCompressionSpec(const KvCompressionSpec& spec);

// Cumulative counters since the compressor was made.
struct KvCompressionCounters {
  // Units moved into each tier (int8/int4/int2; [kEvicted] counts evictions).
  std::array<int64_t, kNumKvTiers> moved_to{};
  int64_t failed = 0;          // moves the pool had no room for
  int64_t shared_moved = 0;    // of moved_to: units of shared blocks, moved for all holders
  int64_t cached_evicted = 0;  // unused cached blocks Reclaim evicted
  int64_t unindexed = 0;       // in-use cached blocks taken out of the index to compress
  int64_t assessments = 0;     // (sequence, step) policy runs
  int64_t reclaim_rounds = 0;  // pressure rounds
  double policy_seconds = 0;   // time in EndStep and Reclaim
};

class KvCompressor : public AttentionMassSink {
 public:
  // `cache` is not owned and must outlive the compressor.
  static absl::StatusOr<std::unique_ptr<KvCompressor>> Create(PagedKvCache* cache,
                                                              const KvCompressorOptions& options);

  const KvCompressorOptions& options() const { return options_; }

  // Starts tracking seq (spec must be valid); replaces an earlier spec.
  void AddSequence(int seq, const KvCompressionSpec& spec);
  // Forgets seq (its blocks belong to the cache; free them there).
  void RemoveSequence(int seq);
  // Whether seq is tracked with a policy that compresses (and so whether
  // its rows are worth observing).
  bool Compresses(int seq) const;
  // The ratio seq is being held to now (its spec's, or tighter under
  // pressure); 1 for untracked sequences.
  double EffectiveRatio(int seq) const;

  // AttentionMassSink: accumulates into the current step. Unknown or
  // non-compressing sequences are ignored.
  void OnBlockMass(int seq, int layer, int block, double mass, double n_queries) override;

  // After a forward pass: folds the step's observations into the scores and
  // re-assesses the sequences in `ran` that need it.
  void EndStep(std::span<const int> ran);

  // Until the pool has `blocks` free f16 blocks: evicts unused cached
  // blocks, then compresses harder until every compressing sequence is at
  // min_ratio. Returns whether it got there.
  bool Reclaim(int blocks);
  // As Reclaim(blocks), tightening only the sequences in only_seqs (say,
  // one tenant's): blocks they share with others still move only as all
  // holders agree.
  bool Reclaim(int blocks, std::span<const int> only_seqs);
  // Tightens only the sequences in only_seqs, round by round, until done()
  // holds (checked before the first round and after every assessment) or
  // they are all at min_ratio; evicts no cached block (those belong to no
  // sequence). Returns done(). For budgets that are not pool-wide, e.g. a
  // tenant's bytes.
  bool ReclaimUntil(std::span<const int> only_seqs, absl::FunctionRef<bool()> done);

  const KvCompressionCounters& counters() const { return counters_; }

 private:
  struct Tracked {
    KvCompressionSpec spec;
    const CompressionPolicy* policy = nullptr;  // owned by policies_
    double ratio = 1.0;                         // effective
    int assessed_blocks = -1;                   // NumBlocks at the last assessment
    bool observed = false;                      // listed in observed_
    std::unique_ptr<BlockScores> scores;
    // The last assessment's wishes for blocks it could not move alone:
    // wish_ids[b] is the block id then at index b (-1: no wish), wish[b *
    // n_layers + l] the tier the policy chose for it in layer l.
    std::vector<int32_t> wish_ids;
    std::vector<KvTier> wish;
  };
  // A sequence holding a shared block, and the block's index in its table.
  struct Holder {
    int seq;
    int block;
  };

  KvCompressor(PagedKvCache* cache, const KvCompressorOptions& options,
               std::unordered_map<std::string, std::unique_ptr<CompressionPolicy>> policies);
  // Runs seq's policy on every layer and applies it. Under pressure,
  // cached blocks are not pinned and may leave the index.
  void Assess(int seq, Tracked& t, bool pressure);
  // Reclaim for `only_seqs`, or for every sequence when `all`.
  bool ReclaimImpl(int blocks, std::span<const int> only_seqs, bool all);
  // Common body of the Reclaim variants; only == nullptr: every sequence.
  bool Tighten(const std::vector<int>* only, absl::FunctionRef<bool()> done);
  // holders_ for the current tables (rebuilt when holders_dirty_).
  void UpdateHolders();
  // The tier block `id` (at index b of its holders' tables) may move to in
  // `layer`: the highest precision any holder wished, or nullopt when a
  // holder is untracked, does not compress or has no wish for it.
  std::optional<KvTier> JointTier(int32_t id, int layer) const;

  PagedKvCache* const cache_;  // not owned
  const KvCompressorOptions options_;
  std::unordered_map<std::string, std::unique_ptr<CompressionPolicy>> policies_;
  std::unordered_map<int, Tracked> seqs_;
  TierBytes costs_{};
  KvCompressionCounters counters_;
  std::vector<KvTier> current_, target_;  // scratch
  std::vector<int> observed_;             // sequences with observations this step
  std::vector<int> protected_;            // scratch: protected blocks of the assessed sequence
  std::vector<uint8_t> pinned_;           // scratch: [n_written] blocks the policy must not move
  std::vector<BlockScore> joint_scores_;  // scratch: one layer's scores, shared blocks summed
  // Tracked sequences holding each shared (or cached) block, by block id.
  // Valid between cache mutations: rebuilt at each EndStep / Reclaim.
  std::unordered_map<int32_t, std::vector<Holder>> holders_;
  bool holders_dirty_ = true;
};

}  // namespace kvserve::kvcache
