// Per-token processing of a logit row before and after sampling: the
// repetition penalties that need the sequence's history, and the
// log-probabilities returned to clients.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/serving/request.h"

namespace kvserve::engine {

// Applies, in place on logits [n_vocab]:
//   repetition_penalty r (tokens in `seen`, prompt and output): l > 0 ? l / r : l * r;
//   presence p and frequency f (tokens in `output_counts`): l -= p + f * count.
void ApplyPenalties(const SamplingOptions& s, const absl::flat_hash_map<int32_t, int>& output_counts,
                    const std::vector<uint8_t>& seen, float* logits, int n_vocab);

// log-softmax of `token` and the `top` most likely tokens (descending,
// ties by lower id), all from logits [n_vocab] in float64.
TokenLogprob ComputeLogprob(const float* logits, int n_vocab, int32_t token, int top);

}  // namespace kvserve::engine
