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
  // KV compression, each setting by its option name.
  auto bad = [](const char* name, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", why));
  };
  if (!kvcache::ValidateCompressionSpec({c.kv_compression.policy, 1.0}).ok()) {
    std::string names;
    for (std::string_view n : kvcache::CompressionPolicyNames()) {
      absl::StrAppend(&names, names.empty() ? "" : ", ", std::string(n));
    }
    return bad("kv_policy",
               absl::StrCat("unknown policy '", c.kv_compression.policy, "'; valid: ", names));
  }
  const kvcache::KvCompressorOptions& k = c.kv_compressor;
  const struct {
    const char* name;
    bool ok;
    const char* range;
    double value;
  } checks[] = {
      {"kv_ratio", c.kv_compression.ratio > 0 && c.kv_compression.ratio <= 1, "in (0, 1]",
       c.kv_compression.ratio},
      {"kv_sink_blocks", k.policy.sink_blocks >= 0, ">= 0", double(k.policy.sink_blocks)},
      {"kv_recent_tokens", k.policy.recent_tokens >= 0, ">= 0", double(k.policy.recent_tokens)},
      {"kv_alpha", k.policy.alpha >= 0 && k.policy.alpha <= 1, "in [0, 1]", k.policy.alpha},
      {"kv_ema_decay", k.ema_decay >= 0 && k.ema_decay < 1, "in [0, 1)", k.ema_decay},
      {"kv_observation_window", k.observation_window >= 1, ">= 1", double(k.observation_window)},
      {"kv_beta", k.beta > 0 && k.beta < 1, "in (0, 1)", k.beta},
      {"kv_min_ratio", k.min_ratio > 0 && k.min_ratio <= 1, "in (0, 1]", k.min_ratio},
  };
  for (const auto& ch : checks) {
    if (!ch.ok) return bad(ch.name, absl::StrCat("must be ", ch.range, ", got ", ch.value));
  }
  if (absl::Status st = kvcache::ValidateCompressorOptions(k); !st.ok()) {
    return bad("kv_compressor", std::string(st.message()));
  }
  return c;
}

}  // namespace kvserve::engine
