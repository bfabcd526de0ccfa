#include "kvcache/block_scores.h"

#include <cstddef>
#include <utility>

#include "common/check.h"

namespace kvserve::kvcache {

BlockScores::BlockScores(int n_layers, float ema_decay)
    : ema_decay_(ema_decay), layers_(n_layers > 0 ? n_layers : 0) {
  KV_CHECK_MSG(n_layers > 0, "BlockScores needs at least one layer");
  KV_CHECK_MSG(ema_decay >= 0.f && ema_decay < 1.f, "ema_decay must be in [0, 1)");
}

void BlockScores::Observe(int layer, int block, double mass, double n_queries) {
  KV_CHECK(layer >= 0 && layer < n_layers());
  KV_CHECK(block >= 0);
  // Written so that NaN fails too.
  KV_CHECK_MSG(mass >= 0, "attention mass must be >= 0");
  KV_CHECK_MSG(n_queries > 0, "n_queries must be > 0");
  Layer& l = layers_[layer];
  const size_t b = static_cast<size_t>(block);
  if (b >= l.scores.size()) {
    l.scores.resize(b + 1);
    l.pending_mass.resize(b + 1, 0.0);
    l.pending_queries.resize(b + 1, 0.0);
  }
  if (l.pending_queries[b] == 0) touched_.emplace_back(layer, block);
  l.pending_mass[b] += mass;
  l.pending_queries[b] += n_queries;
}

void BlockScores::EndStep() {
  const double decay = ema_decay_;
  for (const auto& [layer, block] : touched_) {
    Layer& l = layers_[layer];
    const double mass = l.pending_mass[block];
    const double m = mass / l.pending_queries[block];
    BlockScore& s = l.scores[block];
    s.ema = static_cast<float>(s.n_obs == 0 ? m : decay * s.ema + (1.0 - decay) * m);
    s.last = static_cast<float>(m);
    s.cumulative += mass;
    ++s.n_obs;
    l.pending_mass[block] = 0;
    l.pending_queries[block] = 0;
  }
  touched_.clear();
}

std::span<const BlockScore> BlockScores::layer(int l) const {
  KV_CHECK(l >= 0 && l < n_layers());
  return layers_[l].scores;
}

int BlockScores::n_blocks(int layer) const {
  KV_CHECK(layer >= 0 && layer < n_layers());
  return static_cast<int>(layers_[layer].scores.size());
}

void BlockScores::Clear() {
  for (Layer& l : layers_) {
    l.scores.clear();
    l.pending_mass.clear();
    l.pending_queries.clear();
  }
  touched_.clear();
}

}  // namespace kvserve::kvcache
