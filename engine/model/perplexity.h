// Perplexity of a token stream under the model, the standard check that a
// forward pass (and later, a compressed KV cache) keeps the model's quality.
//
// The stream is cut into consecutive chunks of `ctx` tokens (a trailing
// partial chunk is dropped). Each chunk is evaluated from an empty cache, in
// micro-batches of at most `batch` tokens, and every position but the first
// is scored: NLL(token[j+1] | chunk[0..j]) for j = 0..ctx-2.
// perplexity = exp(mean NLL), NLL from a float64 log-softmax of the logits.
//
// With kv_compression set, each chunk runs over a PagedKvCache whose
// sequence is compressed by a KvCompressor between micro-batches (so with a
// small `batch`, later tokens really attend to the compressed cache); the
// last observation_window rows of each micro-batch score the blocks.
//
// Thread-safety: uses the runner, so one call at a time per runner.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_runner.h"
#include "kvcache/kv_compressor.h"

namespace kvserve::model {

struct PerplexityResult {
  double perplexity = 0;
  double mean_nll = 0;
  int64_t n_scored = 0;
  int n_chunks = 0;
  double seconds = 0;
  // With compression: the cache at the end of each chunk, summed over
  // chunks (bytes as stored, and the same positions in f16).
  int64_t kv_bytes = 0;
  int64_t kv_bytes_uncompressed = 0;
  double kv_policy_seconds = 0;  // time in compression decisions and moves
  // Units (layer blocks) per tier at the end of each chunk, summed.
  std::array<int64_t, kvcache::kNumKvTiers> kv_tier_units{};
};

struct PerplexityOptions {
  int ctx = 512;
  int batch = 512;
  // Positions per KV block of the compressed cache (a multiple of 16); keys
  // are quantized in groups of one block's positions.
  int block_tokens = 16;
  std::optional<kvcache::KvCompressionSpec> kv_compression;
  kvcache::KvCompressorOptions kv_compressor;
  // Called after each chunk with (chunks done, chunks total, running ppl).
  std::function<void(int, int, double)> progress;
};

absl::StatusOr<PerplexityResult> ComputePerplexity(ModelRunner* runner,
                                                   const std::vector<int32_t>& tokens,
                                                   const PerplexityOptions& options);

// log(sum(exp(x))) - x[target] over a logit row, in float64.
double TokenNll(const float* logits, int n_vocab, int32_t target);

}  // namespace kvserve::model
