// Causal grouped-query attention of a batch of query rows over the KV store.
//
// For a query at position p of sequence s, the keys and values are those of
// positions [0, p] of s, read through KvStore::Read. The query heads that
// share a KV head are computed together so each cached row is converted
// from f16 once. Scores and softmax are f32 with a two-pass softmax; no
// attention matrix larger than one row per head is ever held.
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
  // must already be in `kv` for this layer.
  void Compute(const kvcache::KvStore& kv, int layer, const float* q, const int32_t* seq_ids,
               const int32_t* positions, int n, float* out, ThreadPool* pool);

 private:
  int n_head_;
  int n_kv_head_;
  int head_dim_;
  int group_;
  float scale_;
  std::vector<std::vector<float>> scratch_;  // per pool thread
};

}  // namespace kvserve::model
