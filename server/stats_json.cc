#include "server/stats_json.h"

#include <algorithm>
#include <array>
#include <string>

#include "kvcache/kv_tier.h"

namespace kvserve::server {
namespace {

using nlohmann::json;

std::string TierKey(int t) { return std::string(kvcache::KvTierName(kvcache::TierFromIndex(t))); }

// {"f16": v[0], "int8": v[1], ...} over every tier.
json ByTier(const std::array<int64_t, kvcache::kNumKvTiers>& v) {
  json out = json::object();
  for (int t = 0; t < kvcache::kNumKvTiers; ++t) out[TierKey(t)] = v[t];
  return out;
}

}  // namespace

namespace {

// Configured tenants only (the default tenant of unkeyed requests is the
// server's totals), in the table's order.
json TenantsJson(const engine::EngineStats& s) {
  json out = json::array();
  for (const engine::TenantStats& t : s.tenants) {
    if (t.id.empty()) continue;
    const int64_t saved = std::max<int64_t>(0, t.kv_bytes_uncompressed - t.kv_bytes);
    out.push_back({{"tenant", t.id},
                   {"running", t.running},
                   {"waiting", t.waiting},
                   {"kv_bytes", t.kv_bytes},
                   {"kv_uncompressed_bytes", t.kv_bytes_uncompressed},
                   {"kv_saved_bytes", saved},
                   {"kv_budget_bytes", t.kv_budget_bytes},
                   {"kv_bytes_by_tier", ByTier(t.kv_tier_bytes)},
                   {"requests_finished", t.requests_finished},
                   {"requests_rejected", t.requests_rejected},
                   {"prompt_tokens", t.prompt_tokens},
                   {"cached_prompt_tokens", t.cached_prompt_tokens},
                   {"generation_tokens", t.generation_tokens},
                   {"preemptions", t.preemptions}});
  }
  return out;
}

}  // namespace

json StatsJson(const engine::EngineStats& s, const StatsContext& context) {
  int64_t stored = 0;
  for (int64_t b : s.kv_tier_bytes) stored += b;
  const int64_t saved = std::max<int64_t>(0, s.kv_bytes_uncompressed - stored);
  const double ratio =
      s.kv_bytes_uncompressed > 0
          ? static_cast<double>(stored) / static_cast<double>(s.kv_bytes_uncompressed)
          : 1.0;

  json quantized = json::object();
  for (int t = 0; t < kvcache::kNumKvTiers; ++t) {
    if (kvcache::IsQuantized(kvcache::TierFromIndex(t))) quantized[TierKey(t)] = s.kv_moved_to[t];
  }
  constexpr int kEvicted = kvcache::TierIndex(kvcache::KvTier::kEvicted);

  json out = {
      {"object", "kvserve.stats"},
      {"timestamp", context.timestamp_s},
      {"uptime_seconds", context.uptime_s},
      {"model", context.model_name},
      {"requests", {{"running", s.running}, {"waiting", s.waiting}}},
      {"kv_cache",
       {
           {"capacity_bytes", s.kv_bytes_total},
           {"used_bytes", s.kv_bytes_used},
           {"free_bytes", std::max<int64_t>(0, s.kv_bytes_total - s.kv_bytes_used)},
           {"blocks_total", s.kv_blocks_total},
           {"blocks_used", s.kv_blocks_used},
           {"blocks_free", s.kv_blocks_free},
           {"stored_bytes", stored},
           {"uncompressed_bytes", s.kv_bytes_uncompressed},
           {"saved_bytes", saved},
           {"compression_ratio", ratio},
           {"bytes_by_tier", ByTier(s.kv_tier_bytes)},
           {"units_by_tier", ByTier(s.kv_tier_units)},
       }},
      {"totals",
       {
           {"requests_submitted", s.requests_submitted},
           {"requests_finished", s.requests_finished},
           {"requests_rejected", s.requests_rejected},
           {"prompt_tokens", s.prompt_tokens},
           {"generation_tokens", s.generation_tokens},
           {"steps", s.steps},
           {"preemptions", s.preemptions},
           {"kv_blocks_quantized_by_tier", std::move(quantized)},
           {"kv_blocks_evicted", s.kv_moved_to[kEvicted]},
           {"kv_compression_failures", s.kv_compress_failed},
           {"kv_reclaim_rounds", s.kv_reclaim_rounds},
           {"kv_compression_seconds", s.kv_policy_seconds},
       }},
      {"tenants", TenantsJson(s)},
  };
  if (!context.device.empty()) {
    out["device"] = {{"name", context.device},
                     {"description", context.device_description},
                     {"memory_bytes", context.device_memory_bytes}};
  }
  return out;
}

}  // namespace kvserve::server
