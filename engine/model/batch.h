// One forward pass's input: tokens of one or many sequences, prefill chunks
// and decode steps mixed.
//
// Thread-safety: a plain value.
#pragma once

#include <cstdint>
#include <vector>

#include "kvcache/kv_store.h"

namespace kvserve::model {

struct Batch {
  std::vector<int32_t> tokens;     // [n]
  std::vector<int32_t> positions;  // [n] absolute position in its sequence
  std::vector<int32_t> seq_ids;    // [n] KV store sequence handle
  std::vector<uint8_t> logits;     // [n] non-zero: return this row's logits
  // [n] non-zero: report this row's attention per cached block to
  // mass_sink (the compression policies' signal).
  std::vector<uint8_t> observe;
  // Not owned; null: no attention reporting.
  kvcache::AttentionMassSink* mass_sink = nullptr;

  int size() const { return static_cast<int>(tokens.size()); }
  void Add(int32_t token, int32_t pos, int32_t seq, bool want_logits, bool observe_row = false) {
    tokens.push_back(token);
    positions.push_back(pos);
    seq_ids.push_back(seq);
    logits.push_back(want_logits ? 1 : 0);
    observe.push_back(observe_row ? 1 : 0);
  }
  void Clear() {
    tokens.clear();
    positions.clear();
    seq_ids.clear();
    logits.clear();
    observe.clear();
  }
};

}  // namespace kvserve::model
