// What the engine reports: a snapshot of gauges and counters (Stats()) and
// per-event callbacks (EngineObserver) from which the server edge builds
// Prometheus metrics. Nothing here depends on a metrics library.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/serving/request.h"
#include "engine/serving/tenant.h"
#include "kvcache/kv_tier.h"

namespace kvserve::engine {

struct EngineStats {
  // Gauges.
  int running = 0;  // sequences in the running batch
  int waiting = 0;  // requests queued (incl. preempted ones awaiting recompute)
  int kv_blocks_total = 0;
  int kv_blocks_free = 0;
  int kv_blocks_used = 0;
  int64_t kv_bytes_total = 0;
  int64_t kv_bytes_used = 0;
  // KV compression. Units are one layer of one block; evicted units hold 0
  // bytes. Indexed by kvcache::TierIndex.
  std::array<int64_t, kvcache::kNumKvTiers> kv_tier_units{};
  std::array<int64_t, kvcache::kNumKvTiers> kv_tier_bytes{};
  int64_t kv_bytes_uncompressed = 0;  // live blocks' size if all were f16
  // Counters since start.
  int64_t requests_submitted = 0;
  int64_t requests_finished = 0;
  int64_t requests_rejected = 0;
  int64_t preemptions = 0;
  int64_t prompt_tokens = 0;      // prompt tokens prefilled (recomputes included)
  int64_t generation_tokens = 0;  // tokens sampled
  int64_t steps = 0;              // forward passes
  // Units moved into each tier by compression ([kEvicted]: evictions).
  std::array<int64_t, kvcache::kNumKvTiers> kv_moved_to{};
  int64_t kv_compress_failed = 0;  // moves the pool had no room for
  int64_t kv_reclaim_rounds = 0;   // memory-pressure rounds (instead of preempting)
  double kv_policy_seconds = 0;    // time in compression decisions and moves
  // Prefix cache: blocks indexed, and prompt tokens that hit it.
  int64_t prefix_cache_blocks = 0;
  int64_t prefix_cache_hit_tokens = 0;
  // One entry per configured tenant, in SetTenants order; empty without a
  // tenant table (requests of the default tenant count only in the totals).
  std::vector<TenantStats> tenants;
};

// Timings of one finished choice, in seconds.
struct RequestTimings {
  double queue_s = 0;  // submit -> first scheduled
  double ttft_s = 0;   // submit -> first token (0 if none)
  double tpot_s = 0;   // mean time per output token after the first (0 if < 2 tokens)
  double e2e_s = 0;    // submit -> finish
  int prompt_tokens = 0;
  int completion_tokens = 0;
  FinishReason finish = FinishReason::kNone;
  std::string tenant;                 // GenerationRequest::tenant as charged ("" = default)
  int cached_tokens = 0;              // prompt tokens served from the prefix cache
  std::string kv_policy;              // the choice's compression policy
  int64_t kv_bytes = 0;               // its KV cache at the end, as stored
  int64_t kv_bytes_uncompressed = 0;  // the same positions in f16
};

// Called on the engine thread; implementations must be quick and thread-safe
// with respect to their own readers.
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void OnChoiceFinished(const RequestTimings& timings) = 0;
  virtual void OnStep(int batch_tokens, double step_s) = 0;
};

}  // namespace kvserve::engine
