// Per-sequence bookkeeping of the attention each KV block receives, the
// input of the attention-guided compression policies.
//
// The attention kernel reports, for every (layer, block) a query could see,
// the attention mass the block's positions received, summed over the query
// heads and query rows the engine observes (every decode row; the last w rows
// of a prefill chunk), together with the number of (row, query head) pairs
// that could see the block. One engine step may report the same (layer,
// block) many times (query tiles, KV heads): Observe sums them, EndStep turns
// the step's sums into one observation per (layer, block).
//
// An observation's value is m = mass / n_queries, the mean fraction of its
// attention a query gave the block. Normalising by the number of queries
// that could see the block keeps old blocks from looking important merely
// because more queries have passed over them. Per (layer, block):
//   last       = m of the latest step that observed the block
//   ema        = m at the first observation, then
//                ema_decay * ema + (1 - ema_decay) * m
//   cumulative = sum of the raw masses over all steps (H2O's statistic,
//                deliberately not normalised)
//   n_obs      = number of steps that observed the block
// A block not observed in a step keeps its values.
//
// Thread-safety: not thread-safe; one instance per sequence, used on the
// engine thread only. The spans returned by layer() stay valid until the
// next Observe or Clear.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kvserve::kvcache {

struct BlockScore {
  float ema = 0;          // smoothed mean attention fraction per query
  float last = 0;         // mean attention fraction per query, latest step
  double cumulative = 0;  // raw attention mass summed over all steps
  int32_t n_obs = 0;      // steps that observed the block
};

class BlockScores {
 public:
  // ema_decay in [0, 1) is the weight of the old EMA at each new
  // observation; n_layers > 0. Violations abort.
  BlockScores(int n_layers, float ema_decay);

  int n_layers() const { return static_cast<int>(layers_.size()); }
  float ema_decay() const { return ema_decay_; }

  // Adds `mass` (>= 0) received by block `block` (>= 0) of layer `layer`
  // from `n_queries` (> 0) (row, query head) pairs to the current step.
  // Amortised O(1); grows the layer's table when `block` is new.
  void Observe(int layer, int block, double mass, double n_queries);

  // Folds the current step's sums into the scores of every (layer, block)
  // observed since the last EndStep, then starts a new step. Cost is
  // proportional to the number of distinct (layer, block) observed.
  void EndStep();

  // One entry per block index up to the highest observed in `layer` (the
  // current step's observations included); blocks never folded in by an
  // EndStep read as a default BlockScore.
  std::span<const BlockScore> layer(int l) const;
  int n_blocks(int layer) const;

  // Forgets every score and the pending step (the sequence restarts).
  void Clear();

 private:
  struct Layer {
    std::vector<BlockScore> scores;
    // The current step's sums per block; pending_queries == 0 means the
    // block has not been observed in this step.
    std::vector<double> pending_mass;
    std::vector<double> pending_queries;
  };

  float ema_decay_;
  std::vector<Layer> layers_;
  // (layer, block) observed in the current step, each once, in first-seen
  // order, so EndStep touches only those.
  std::vector<std::pair<int32_t, int32_t>> touched_;
};

}  // namespace kvserve::kvcache
