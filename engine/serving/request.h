// What a front end asks of the engine and what it gets back: plain structs,
// free of any wire format (HTTP JSON and gRPC messages are translated to
// these at the server edge).
//
// Thread-safety: plain values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kvcache/kv_compressor.h"

namespace kvserve::engine {

struct SamplingOptions {
  float temperature = 1.0f;  // 0 = greedy
  float top_p = 1.0f;        // 1 = off
  int top_k = 0;             // 0 = off
  float min_p = 0.0f;        // 0 = off
  // Per request; choice i of a request with n > 1 uses seed + i. Without a
  // seed the engine draws one.
  std::optional<uint64_t> seed;
  // OpenAI semantics: logit -= presence * [count > 0] + frequency * count,
  // over tokens generated so far.
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  // llama.cpp/HF semantics over prompt and generated tokens: positive
  // logits divided, negative multiplied. 1 = off.
  float repetition_penalty = 1.0f;
};

struct GenerationRequest {
  std::string request_id;       // for logs and metrics only
  std::vector<int32_t> prompt;  // token ids, non-empty
  int max_tokens = 16;          // >= 1; prompt + max_tokens <= the engine's max context
  SamplingOptions sampling;
  std::vector<std::string> stop;  // stop strings; the matched text is not returned
  bool ignore_eos = false;        // keep going past end-of-generation tokens
  int n = 1;                      // independent choices, 1..EngineConfig::max_n
  // -1: no log-probabilities. k >= 0: each generated token's log-probability
  // plus the k most likely alternatives (k <= EngineConfig::max_logprobs).
  int logprobs = -1;
  // Prompt tokens whose log-probabilities are wanted too (OpenAI "echo" with
  // logprobs): each prompt token after the first gets its log-probability
  // given the tokens before it.
  bool prompt_logprobs = false;
  int priority = 0;  // higher runs first and is preempted last
  // The tenant the request is charged to (a TenantLimits::id given to
  // Engine::SetTenants); empty in single-tenant mode. Budgets, fairness and
  // the prefix cache group by it; cached blocks are never shared across it.
  std::string tenant;
  // KV compression of this request's sequences; unset: the server default.
  std::optional<kvcache::KvCompressionSpec> kv_compression;
  // 0: the scheduler sizes prefill chunks. N > 0: the prompt enters at most N
  // tokens per step and the compression policy assesses the sequence after
  // every chunk (not only once the whole prompt is in), so what later prompt
  // tokens see is the compressed cache. Evaluation uses it to measure
  // perplexity with compression in the loop (echo + logprobs).
  int prefill_chunk_tokens = 0;
};

enum class FinishReason {
  kNone,    // not finished
  kStop,    // end-of-generation token or stop string
  kLength,  // max_tokens reached
  kAbort,   // cancelled by the client (disconnect, deadline)
  kError,   // see StreamEvent::error
};

struct TokenLogprob {
  int32_t token = 0;
  std::string text;      // the token's bytes (may be a partial UTF-8 character)
  float logprob = 0.0f;  // log-softmax of the model's logits, before sampling filters
  std::vector<std::pair<int32_t, float>> top;  // most likely alternatives, descending
};

// One piece of output for one choice. A choice's last event has finish set.
struct StreamEvent {
  int choice = 0;
  std::string text;             // new text: whole UTF-8 characters, stop strings held back/removed
  std::vector<int32_t> tokens;  // tokens whose text this event completes
  std::vector<TokenLogprob> logprobs;         // one per token in `tokens` (if requested)
  std::vector<TokenLogprob> prompt_logprobs;  // first event of choice 0 only (if requested)
  FinishReason finish = FinishReason::kNone;
  absl::Status error;  // set when finish == kError
  // Set on a choice's final event.
  int prompt_tokens = 0;
  int cached_tokens = 0;  // of prompt_tokens, served from the prefix cache
  int completion_tokens = 0;
  // The choice's KV cache when it finished: bytes as stored, and what the
  // same positions take uncompressed (f16).
  int64_t kv_bytes = 0;
  int64_t kv_bytes_uncompressed = 0;
};

}  // namespace kvserve::engine
