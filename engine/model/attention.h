// Causal grouped-query attention of a batch of query rows over the KV store.
//
// For a query at position p of sequence s, the keys and values are those of
// positions [0, p] of s, read through KvStore::Read. The query heads that
// share a KV head are computed together so each cached row is converted
// from f16 once. Scores and softmax are f32 with a two-pass softmax; no
// attention matrix larger than one row per head is ever held.
//
// Mixed tiers: spans may be f16 or quantized (dequantized per KV head on
// the fly, once per query tile); evicted positions have no span and get
// weight 0. In the same pass the kernel can report, per cached block, the
// attention mass that observed query rows gave it (kvcache::
// AttentionMassSink), the signal the compression policies run on.
//
// Thread-safety: Compute uses the pool; one call at a time per Attention.
#pragma once

#include <cstdint>
#include <vector>

#include "common/thread_pool.h"
#include "engine/model/model_config.h"
#include "kvcache/kv_store.h"

namespace kvserve::model {

class Attention {
 public:
  explicit Attention(const ModelConfig& config);

  // q:   [n, n_head * head_dim], already rotated (RoPE).
  // out: [n, n_head * head_dim].
  // seq_ids, positions: [n]. Every position <= positions[i] of seq_ids[i]
  // must already be in `kv` for this layer (or evicted from it), and
  // position positions[i] itself must be present.
  // observe: [n] or null; rows with a non-zero entry are reported to
  // `sink` (if not null) as block masses of spans with block >= 0.
  void Compute(const kvcache::KvStore& kv, int layer, const float* q, const int32_t* seq_ids,
               const int32_t* positions, int n, float* out, ThreadPool* pool,
               const uint8_t* observe = nullptr, kvcache::AttentionMassSink* sink = nullptr);

 private:
  int n_head_;
  int n_kv_head_;
  int head_dim_;
  int group_;
  float scale_;
  struct BlockMass {
    int32_t block;
    double mass;
    double n_queries;
  };
  std::vector<std::vector<float>> scratch_;     // per pool thread
  std::vector<std::vector<uint16_t>> dequant_;  // per pool thread: dequantized heads
  std::vector<std::vector<BlockMass>> masses_;  // per work item, when reporting
};

}  // namespace kvserve::model
