// The engine thread's state of one choice of one request.
//
// Thread-safety: owned and touched by the engine thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/model/sampler.h"
#include "engine/serving/request.h"
#include "engine/serving/stop_matcher.h"
#include "engine/tokenizer/tokenizer.h"

namespace kvserve::engine {

class RequestState;

struct Sequence {
  using Clock = std::chrono::steady_clock;

  int id = 0;                       // KV cache sequence id, unique while alive
  RequestState* request = nullptr;  // not owned; outlives its sequences
  int choice = 0;
  int priority = 0;
  uint64_t arrival = 0;  // submission order, for FCFS ties
  // Index of the request's tenant in ScheduleLimits::tenants (0 when the
  // engine has no tenant table).
  int tenant = 0;

  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int prompt_len = 0;
  int num_computed = 0;  // leading tokens whose K/V are in the cache
  int generated = 0;
  bool running = false;
  kvcache::KvCompressionSpec kv_spec;  // this choice's KV compression
  int prefill_chunk_tokens = 0;        // GenerationRequest::prefill_chunk_tokens
  // Prefix cache: the key that scopes sharing (tenant and compression spec)
  // and the prompt tokens its last attachment took from the cache.
  std::string cache_salt;
  int cached_tokens = 0;
  bool prefix_attached = false;  // attached while waiting, this step only
  bool kv_tracked = false;       // known to the engine's KvCompressor

  std::unique_ptr<model::Sampler> sampler;
  std::unique_ptr<StopMatcher> stop;
  std::unique_ptr<tokenizer::StreamingDecoder> decoder;
  absl::flat_hash_map<int32_t, int> output_counts;  // for presence/frequency penalties
  std::vector<uint8_t> seen;                        // [n_vocab] for repetition penalty

  FinishReason finish = FinishReason::kNone;
  bool sent_prompt_logprobs = false;
  std::vector<TokenLogprob> pending_prompt_logprobs;  // until the first sampled token
  std::optional<Clock::time_point> first_scheduled, first_token, last_token;

  // Tokens still to run through the model before the next sample.
  int pending() const { return static_cast<int>(tokens.size()) - num_computed; }
};

}  // namespace kvserve::engine
