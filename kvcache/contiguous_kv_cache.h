// A KV store that gives each sequence one contiguous f16 buffer per layer,
// sized for the sequence's maximum length when it is added. It is what the
// CLI and the correctness tests use; the paged cache that the server uses
// implements the same KvStore interface.
//
// Thread-safety: as KvStore. AddSequence/RemoveSequence are engine-thread
// only and must not run during a forward pass.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "kvcache/kv_store.h"

namespace kvserve::kvcache {

class ContiguousKvCache : public KvStore {
 public:
  explicit ContiguousKvCache(const KvShape& shape) : shape_(shape) {}

  // Reserves room for positions [0, max_tokens) of a new sequence `seq`.
  // AlreadyExists if seq is present; InvalidArgument if max_tokens <= 0.
  absl::Status AddSequence(int seq, int max_tokens);
  // Frees the sequence; a no-op for unknown ids.
  void RemoveSequence(int seq);
  bool HasSequence(int seq) const { return seqs_.count(seq) != 0; }
  // Bytes held by all sequences.
  size_t bytes() const;

  const KvShape& shape() const override { return shape_; }
  void Write(int seq, int layer, int pos, int n, const float* k, const float* v) override;
  void Read(int seq, int layer, int end, std::vector<KvSpan>* spans) const override;

 private:
  struct Sequence {
    int capacity = 0;  // positions the caller reserved
    int stride = 0;    // capacity rounded up to kKvSpanAlign
    // Per layer: K [row_width][stride] and V [stride][row_width], f16.
    std::vector<std::vector<uint16_t>> k, v;
  };
  KvShape shape_;
  std::unordered_map<int, std::unique_ptr<Sequence>> seqs_;
  std::vector<uint16_t> scratch_;  // one converted K row, reused by Write
};

}  // namespace kvserve::kvcache
