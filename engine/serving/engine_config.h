// Limits and policies of the serving engine, validated once.
//
// Thread-safety: an immutable value.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "kvcache/kv_compressor.h"

namespace kvserve::engine {

struct EngineConfig {
  size_t kv_cache_bytes = 256ull << 20;  // paged KV pool size
  int block_tokens = 16;                 // tokens per KV block
  int max_running = 64;                  // sequences in the running batch
  int max_waiting = 256;                 // queued requests before Submit says ResourceExhausted
  int max_batch_tokens = 512;            // token budget of one forward pass (chunked prefill)
  int max_context = 0;                   // prompt + output limit; 0 = the model's context
  int max_n = 8;                         // cap of GenerationRequest::n
  int max_logprobs = 20;                 // cap of GenerationRequest::logprobs
  std::string scheduler = "fair";        // scheduling policy by name (MakeScheduler)
  // KV compression: the spec of requests that do not give one, and the
  // knobs shared by every sequence (scores, protection, pressure).
  kvcache::KvCompressionSpec kv_compression;
  kvcache::KvCompressorOptions kv_compressor;
  // Automatic prefix caching: a request whose prompt starts with the same
  // full blocks of tokens as an earlier one of the same tenant and the same
  // compression spec reuses their KV and prefills only the rest. Cached
  // prompt blocks stay f16 until memory pressure (the pool, or the tenant's
  // budget) makes the compressor take them out of the cache and compress
  // them; so with the cache on, compression is lazy. Off: every request
  // prefills its whole prompt and compresses to its target eagerly.
  bool prefix_cache = false;
  // Debug hook: after every engine step, verify the KV cache's invariants
  // (PagedKvCache::CheckInvariants) and that the blocks held by live
  // sequences are exactly the pool's used blocks; a violation aborts with
  // the cache's debug dump. Costs O(blocks) per step; on in tests.
  bool check_invariants = false;
};

// Checks ranges (every count >= 1, block_tokens a multiple of 16, pool big
// enough for one block); InvalidArgument names the field.
absl::StatusOr<EngineConfig> ValidateEngineConfig(EngineConfig candidate);

}  // namespace kvserve::engine
