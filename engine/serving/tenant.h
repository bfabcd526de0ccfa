// What the engine enforces per tenant: a plain value the server builds from
// its tenants file (config/tenants.h) and hands to Engine::SetTenants.
//
// Thread-safety: plain values.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "kvcache/kv_tier.h"

namespace kvserve::engine {

struct TenantLimits {
  std::string id;               // non-empty; requests name it in GenerationRequest::tenant
  int64_t kv_budget_bytes = 0;  // KV bytes its sequences may hold at once (as stored); 0 = no cap
  int max_concurrent = 0;       // requests running at once; 0 = no cap beyond max_running
  // Requests waiting to run; those a free running slot (max_concurrent, the
  // server's max_running) will start at the next step do not count.
  int max_queued = 0;   // 0 = no cap beyond max_waiting
  double weight = 1.0;  // > 0: share of each step's token budget against other tenants
};

// Counters and gauges of one configured tenant (EngineStats::tenants).
// Requests with an empty or unknown tenant id count only in the totals.
struct TenantStats {
  std::string id;
  int running = 0;       // sequences running
  int waiting = 0;       // requests queued
  int64_t kv_bytes = 0;  // KV bytes its sequences hold, shared blocks once
  std::array<int64_t, kvcache::kNumKvTiers> kv_tier_bytes{};  // kv_bytes by tier (kEvicted: 0)
  int64_t kv_bytes_uncompressed = 0;                          // what the same blocks take in f16
  int64_t kv_budget_bytes = 0;                                // its budget (0 = none)
  int64_t requests_submitted = 0;
  int64_t requests_finished = 0;
  int64_t requests_rejected = 0;     // Submit refused (queue full, invalid)
  int64_t prompt_tokens = 0;         // prompt tokens prefilled (recomputes included)
  int64_t cached_prompt_tokens = 0;  // prompt tokens served from the prefix cache
  int64_t generation_tokens = 0;
  int64_t preemptions = 0;
  int64_t budget_reclaims = 0;  // compression rounds forced by its budget
};

}  // namespace kvserve::engine
