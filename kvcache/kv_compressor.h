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
// Memory pressure: Reclaim tightens the target of every compressing
// sequence by a factor (1 - beta) per round, down to min_ratio, and
// re-applies the policies, until the pool has the requested free blocks.
// The engine calls it instead of preempting; sequences with policy "none"
// are never touched.
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
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

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

  // Compresses harder until the pool has `blocks` free f16 blocks or every
  // compressing sequence is at min_ratio. Returns whether it got there.
  bool Reclaim(int blocks);

  const KvCompressionCounters& counters() const { return counters_; }

 private:
  struct Tracked {
    KvCompressionSpec spec;
    const CompressionPolicy* policy = nullptr;  // owned by policies_
    double ratio = 1.0;                         // effective
    int assessed_blocks = -1;                   // NumBlocks at the last assessment
    bool observed = false;                      // listed in observed_
    std::unique_ptr<BlockScores> scores;
  };

  KvCompressor(PagedKvCache* cache, const KvCompressorOptions& options,
               std::unordered_map<std::string, std::unique_ptr<CompressionPolicy>> policies);
  // Runs seq's policy on every layer and applies it.
  void Assess(int seq, Tracked& t);

  PagedKvCache* const cache_;  // not owned
  const KvCompressorOptions options_;
  std::unordered_map<std::string, std::unique_ptr<CompressionPolicy>> policies_;
  std::unordered_map<int, Tracked> seqs_;
  TierBytes costs_{};
  KvCompressionCounters counters_;
  std::vector<KvTier> current_, target_;  // scratch
  std::vector<int> observed_;             // sequences with observations this step
  std::vector<int> protected_;            // scratch: protected blocks of the assessed sequence
};

}  // namespace kvserve::kvcache
