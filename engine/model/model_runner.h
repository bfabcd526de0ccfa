// The backend interface: runs the decoder over a batch. The CPU
// implementation is LlamaModel; a GPU backend implements the same contract.
//
// Thread-safety: Forward is called by one thread at a time (the engine
// thread); config() is safe from any thread.
#pragma once

#include <vector>

#include "absl/status/status.h"
#include "engine/model/batch.h"
#include "engine/model/model_config.h"
#include "kvcache/kv_store.h"

namespace kvserve::model {

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  virtual const ModelConfig& config() const = 0;

  // Runs the batch. For each row i, K/V of (seq_ids[i], positions[i]) are
  // written to `kv`, and row i attends to positions [0, positions[i]] of its
  // sequence (earlier rows of the same batch included). Rows of one sequence
  // must appear in increasing position order.
  // logits: resized to [n_logit_rows, n_vocab], rows in batch order of the
  // rows with batch.logits[i] set.
  // InvalidArgument for malformed batches (token out of range, negative
  // position, ragged vectors); the KV store is then untouched. Any other
  // error (a device failure) may leave the rows' K/V partly written: the
  // caller must drop the batch's sequences.
  virtual absl::Status Forward(const Batch& batch, kvcache::KvStore* kv,
                               std::vector<float>* logits) = 0;
};

}  // namespace kvserve::model
