// What the engine reports: a snapshot of gauges and counters (Stats()) and
// per-event callbacks (EngineObserver) from which the server edge builds
// Prometheus metrics. Nothing here depends on a metrics library.
#pragma once

#include <cstdint>

#include "engine/serving/request.h"

namespace kvserve::engine {

struct EngineStats {
  // Gauges.
  int running = 0;           // sequences in the running batch
  int waiting = 0;           // requests queued (incl. preempted ones awaiting recompute)
  int kv_blocks_total = 0;
  int kv_blocks_free = 0;
  int kv_blocks_used = 0;
  int64_t kv_bytes_total = 0;
  int64_t kv_bytes_used = 0;
  // Counters since start.
  int64_t requests_submitted = 0;
  int64_t requests_finished = 0;
  int64_t requests_rejected = 0;
  int64_t preemptions = 0;
  int64_t prompt_tokens = 0;      // prompt tokens prefilled (recomputes included)
  int64_t generation_tokens = 0;  // tokens sampled
  int64_t steps = 0;              // forward passes
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
