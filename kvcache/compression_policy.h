// Compression policies: given one layer of a sequence's blocks, their
// attention scores and a byte budget, choose each block's storage tier.
//
// A policy is a pure function of its input: it reads the scores
// (kvcache/block_scores.h) and current tiers and writes target tiers; the
// caller moves the storage. Policies are chosen by name through
// MakeCompressionPolicy:
//   none              every block stays as it is (compresses() is false)
//   streaming         StreamingLLM: the sink blocks plus the newest blocks
//                     that fit; the rest evicted
//   h2o               Heavy-Hitter Oracle: sinks and recent window, then the
//                     blocks of highest cumulative attention that fit; the
//                     rest evicted
//   snapkv            as h2o, ranked by the latest observation window's
//                     attention (BlockScore::last)
//   quant-uniform     KIVI-like: every unprotected block at one quantized
//                     tier; never evicts
//   attention-guided  mixed quantization and eviction maximising the
//                     attention-weighted fidelity under the budget
//
// Common contract of Assign (every policy):
//  - Protected blocks keep their current tier: the first sink_blocks
//    blocks, every block overlapping the last recent_tokens positions, and
//    the last block whenever it is partially filled (it is still being
//    written, so quantizing or evicting it would lose tokens just produced;
//    this holds even with recent_tokens = 0), plus every block the caller
//    pins (LayerInput::pinned: blocks it cannot move now, such as cached or
//    shared ones).
//  - out[b] >= current[b]: tiers only move down (kvcache/kv_tier.h). A block
//    already evicted stays evicted and costs nothing.
//  - If the protected blocks alone fit in budget_bytes, the total cost
//    sum costs[out[b]] is <= budget_bytes (except quant-uniform, which never
//    evicts and exceeds the budget when even int2 does not fit). If they do
//    not fit, every unprotected block goes to the policy's lowest tier
//    (evicted; int2 for quant-uniform) and the result exceeds the budget:
//    the caller reports the achieved ratio.
//  - Ties are broken deterministically in favour of the newer block.
//
// Thread-safety: policies are immutable after construction; Assign is const
// and may run concurrently on any number of threads.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvcache/block_scores.h"
#include "kvcache/kv_tier.h"

namespace kvserve::kvcache {

struct PolicyOptions {
  // The first sink_blocks blocks are always kept as they are (attention
  // sinks). >= 0.
  int sink_blocks = 1;
  // Blocks overlapping the last recent_tokens positions are always kept as
  // they are. >= 0.
  int recent_tokens = 64;
  // attention-guided: a block's score is C = alpha * ema + (1 - alpha) *
  // last. In [0, 1].
  float alpha = 0.5f;
  // attention-guided: the fraction of a block's value lost in each tier.
  // Each in [0, 1], non-decreasing, distortion[kF16] = 0 and
  // distortion[kEvicted] = 1.
  // Defaults chosen on WikiText-2 perplexity (docs/compression.md).
  std::array<float, kNumKvTiers> distortion = {0.f, 0.005f, 0.05f, 0.25f, 1.f};
  // attention-guided: every movable block's score is raised by score_floor
  // times the layer's mean score. Attention is query-dependent: a block
  // that gets little attention from the queries seen so far still matters
  // to later ones, so no block's value is ever taken as (near) zero. >= 0.
  float score_floor = 2.f;
  // quant-uniform: the preferred tier, one of kInt8, kInt4, kInt2. When it
  // misses the budget the policy tries each lower quantized tier in turn,
  // ending at kInt2.
  KvTier uniform_tier = KvTier::kInt4;
};

// InvalidArgument naming the first offending field, or OK.
absl::Status ValidatePolicyOptions(const PolicyOptions& options);

// One layer of one sequence. n_blocks = current.size() must equal
// ceil(length / block_tokens); violations of this contract abort.
struct LayerInput {
  int length = 0;        // positions written in the sequence, >= 0
  int block_tokens = 0;  // positions per block, > 0
  // [<= n_blocks]; blocks past the end of the span count as unobserved
  // (a default BlockScore).
  std::span<const BlockScore> scores;
  std::span<const KvTier> current;  // [n_blocks] each block's tier now
  size_t budget_bytes = 0;          // for this layer's n_blocks units
  // Not owned, non-null during Assign; strictly decreasing over f16..int2.
  const TierBytes* costs = nullptr;
  // [0 or n_blocks]: nonzero = pinned, held at its current tier and cost
  // like a protected block. Empty: nothing pinned.
  std::span<const uint8_t> pinned;
};

class CompressionPolicy {
 public:
  virtual ~CompressionPolicy();

  // The name MakeCompressionPolicy knows it by.
  virtual std::string_view name() const = 0;
  // False only for "none", whose Assign never changes anything, so callers
  // can skip the work.
  virtual bool compresses() const { return true; }

  // Resizes *out to n_blocks and writes each block's target tier under the
  // contract in the file comment. O(n_blocks log n_blocks).
  virtual void Assign(const LayerInput& in, std::vector<KvTier>* out) const = 0;
};

// The policy called `name` (one of CompressionPolicyNames()) with `options`.
// InvalidArgument for an unknown name (the message lists the valid names) or
// options that ValidatePolicyOptions rejects.
absl::StatusOr<std::unique_ptr<CompressionPolicy>> MakeCompressionPolicy(
    std::string_view name, const PolicyOptions& options = {});

// {"none", "streaming", "h2o", "snapkv", "quant-uniform", "attention-guided"}.
std::vector<std::string_view> CompressionPolicyNames();
// Whether `name` is one of CompressionPolicyNames().
bool IsCompressionPolicy(std::string_view name);
// CompressionPolicyNames() joined with ", ", for error messages.
std::string CompressionPolicyNameList();

// Whether block `block` of a sequence of `length` positions is protected
// under `options` (see the file comment). 0 <= block < ceil(length /
// block_tokens).
bool IsProtectedBlock(const PolicyOptions& options, int length, int block_tokens, int block);

// sum costs[tiers[b]]: the bytes an assignment occupies.
size_t AssignmentBytes(std::span<const KvTier> tiers, const TierBytes& costs);

}  // namespace kvserve::kvcache
