// Scheduling policies: which sequences run in the next forward pass, with how
// many tokens each, and which are preempted to make room.
//
// A policy only reads the KV cache (queries); the engine applies the
// decision (reserving blocks, freeing preempted sequences) in one place.
// Policies are strategy objects chosen by name through MakeScheduler.
//
// Thread-safety: engine thread only.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/serving/sequence.h"
#include "kvcache/paged_kv_cache.h"

namespace kvserve::engine {

struct ScheduleLimits {
  int max_batch_tokens = 512;  // tokens in one forward pass
  int max_running = 64;
  // False: schedule only sequences already running (the engine sets it after
  // compressing to make room, so the room goes to those sequences).
  bool admit = true;
};

struct ScheduledChunk {
  Sequence* seq = nullptr;  // not owned
  int n_tokens = 0;         // tokens [num_computed, num_computed + n_tokens) run now
};

struct SchedulerDecision {
  std::vector<ScheduledChunk> chunks;
  std::vector<Sequence*> preempted;  // to free and recompute later; not owned
  std::vector<Sequence*> admitted;   // moved from waiting to running; not owned
  bool empty() const { return chunks.empty(); }
};

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  // `running` and `waiting` hold the engine's sequences (not owned). The
  // policy may reorder both vectors but must not add or drop sequences; the
  // engine moves admitted/preempted ones afterwards.
  virtual SchedulerDecision Schedule(std::vector<Sequence*>& running,
                                     std::vector<Sequence*>& waiting,
                                     const kvcache::PagedKvCache& kv,
                                     const ScheduleLimits& limits) = 0;
};

// "fcfs": by priority (higher first), then arrival. Decodes of running
// sequences first (one token each, lowest latency), then the remaining
// prefill chunks of running sequences, then new admissions while the token
// budget, max_running and free blocks allow. When blocks run out, the
// lowest-priority, latest-arrived running sequence not yet scheduled is
// preempted (recomputed later), never an out-of-memory failure; no new
// sequence is admitted in a step that preempts, nor when limits.admit is
// false.
absl::StatusOr<std::unique_ptr<Scheduler>> MakeScheduler(const std::string& name);

}  // namespace kvserve::engine
