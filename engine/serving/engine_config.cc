#include "engine/serving/engine_config.h"

#include "absl/strings/str_cat.h"

namespace kvserve::engine {

absl::StatusOr<EngineConfig> ValidateEngineConfig(EngineConfig c) {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v < 1) return absl::InvalidArgumentError(absl::StrCat(name, ": must be >= 1, got ", v));
    return absl::OkStatus();
  };
  for (absl::Status s :
       {positive("max_running", c.max_running), positive("max_waiting", c.max_waiting),
        positive("max_batch_tokens", c.max_batch_tokens), positive("max_n", c.max_n),
        positive("block_tokens", c.block_tokens)}) {
    if (!s.ok()) return s;
  }
  if (c.block_tokens % 16 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_tokens: must be a multiple of 16, got ", c.block_tokens));
  }
  if (c.max_context < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_context: must be >= 0, got ", c.max_context));
  }
  if (c.max_logprobs < 0 || c.max_logprobs > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_logprobs: must be in 0..1000, got ", c.max_logprobs));
  }
  if (c.kv_cache_bytes == 0) return absl::InvalidArgumentError("kv_cache_bytes: must be > 0");
  if (c.scheduler.empty()) return absl::InvalidArgumentError("scheduler: must name a policy");
  // KV compression: the default spec under its option names, then the
  // compressor's knobs (whose errors name their options too).
  if (!kvcache::IsCompressionPolicy(c.kv_compression.policy)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_policy: unknown policy '", c.kv_compression.policy,
                     "'; valid: ", kvcache::CompressionPolicyNameList()));
  }
  if (!(c.kv_compression.ratio > 0 && c.kv_compression.ratio <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_ratio: must be in (0, 1], got ", c.kv_compression.ratio));
  }
  if (absl::Status st = kvcache::ValidateCompressorOptions(c.kv_compressor); !st.ok()) return st;
  return c;
}

}  // namespace kvserve::engine
