// Checks a request against what the engine can ever run and fills in the
// server defaults it leaves out; the engine calls it in Submit, before the
// request reaches its queue.
//
// Thread-safety: a pure function.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "engine/serving/engine_config.h"
#include "engine/serving/request.h"

namespace kvserve::engine {

// Blocks of block_tokens positions that `tokens` positions take.
inline int BlocksFor(int64_t tokens, int block_tokens) {
  return static_cast<int>((tokens + block_tokens - 1) / block_tokens);
}

// InvalidArgument naming the field when the request can never run: an empty
// prompt, max_tokens < 1, n or logprobs beyond the caps, a token id outside
// [0, n_vocab), prompt + max_tokens beyond max_context or beyond the pool's
// pool_blocks blocks, an invalid compression spec or sampling option. A
// kv_compression with one half missing gets the other from config.
absl::Status ValidateRequest(const EngineConfig& config, int n_vocab, int max_context,
                             int pool_blocks, GenerationRequest* request);

}  // namespace kvserve::engine
