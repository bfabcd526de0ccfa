#include "engine/serving/request_validation.h"

#include "absl/strings/str_cat.h"
#include "kvcache/kv_compressor.h"

namespace kvserve::engine {

absl::Status ValidateRequest(const EngineConfig& config, int n_vocab, int max_context,
                             int pool_blocks, GenerationRequest* request) {
  GenerationRequest& r = *request;
  if (r.prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (r.max_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens must be >= 1, got ", r.max_tokens));
  }
  if (r.n < 1 || r.n > config.max_n) {
    return absl::InvalidArgumentError(
        absl::StrCat("n must be in 1..", config.max_n, ", got ", r.n));
  }
  if (r.logprobs > config.max_logprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("logprobs must be at most ", config.max_logprobs, ", got ", r.logprobs));
  }
  for (int32_t t : r.prompt) {
    if (t < 0 || t >= n_vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", t, " is outside the vocabulary [0, ", n_vocab, ")"));
    }
  }
  const int64_t total = static_cast<int64_t>(r.prompt.size()) + r.max_tokens;
  if (total > max_context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "This model's maximum context length is ", max_context, " tokens. However, you requested ",
        total, " tokens (", r.prompt.size(), " in the prompt, ", r.max_tokens,
        " for the completion). Please reduce the prompt or max_tokens."));
  }
  const int blocks = BlocksFor(total, config.block_tokens);
  if (blocks > pool_blocks) {
    return absl::InvalidArgumentError(absl::StrCat("the request needs ", blocks, " KV blocks (",
                                                   total, " tokens) but the server's KV cache has ",
                                                   pool_blocks,
                                                   "; reduce the prompt or max_tokens"));
  }
  if (r.kv_compression) {
    // A front end may give only one half of the spec; the rest is the
    // server default's.
    if (r.kv_compression->policy.empty()) r.kv_compression->policy = config.kv_compression.policy;
    if (r.kv_compression->ratio == 0) r.kv_compression->ratio = config.kv_compression.ratio;
    if (absl::Status st = kvcache::ValidateCompressionSpec(*r.kv_compression); !st.ok()) return st;
  }
  if (r.prefill_chunk_tokens < 0) {
    return absl::InvalidArgumentError("prefill_chunk_tokens must be >= 0 (0: the scheduler's)");
  }
  const SamplingOptions& s = r.sampling;
  if (s.temperature < 0 || s.top_p <= 0 || s.top_p > 1 || s.top_k < 0 || s.min_p < 0 ||
      s.min_p > 1 || s.repetition_penalty <= 0) {
    return absl::InvalidArgumentError(
        "sampling: temperature >= 0, 0 < top_p <= 1, top_k >= 0, 0 <= min_p <= 1 and "
        "repetition_penalty > 0 are required");
  }
  return absl::OkStatus();
}

}  // namespace kvserve::engine
