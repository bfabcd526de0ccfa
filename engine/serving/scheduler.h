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

// What the scheduler must respect for one tenant this step.
struct TenantShare {
  double weight = 1.0;     // > 0
  int max_concurrent = 0;  // requests running at once; 0 = no cap
  // Blocks the tenant's sequences may still add this step before its KV
  // budget is reached (its budget minus what it holds, in f16 blocks, since
  // new blocks start uncompressed); < 0: no budget.
  int64_t budget_blocks = -1;
  // Tokens it has been served so far, divided by its weight (the engine
  // keeps this virtual time across steps). Lower goes first.
  double vtime = 0;
};

struct ScheduleLimits {
  int max_batch_tokens = 512;  // tokens in one forward pass
  int max_running = 64;
  // False: schedule only sequences already running (the engine sets it after
  // compressing to make room, so the room goes to those sequences).
  bool admit = true;
  // Indexed by Sequence::tenant. Empty: one tenant without caps.
  std::vector<TenantShare> tenants;
};

struct ScheduledChunk {
  Sequence* seq = nullptr;  // not owned
  int n_tokens = 0;         // tokens [num_computed, num_computed + n_tokens) run now
};

struct SchedulerDecision {
  std::vector<ScheduledChunk> chunks;
  std::vector<Sequence*> preempted;  // to free and recompute later; not owned
  std::vector<Sequence*> admitted;   // moved from waiting to running; not owned
  // Tenants (indexes) whose KV budget, not the pool, forced a preemption or
  // kept a running sequence from growing: the engine compresses their own
  // sequences harder before accepting that.
  std::vector<int> over_budget;
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

// Every policy: decodes of running sequences first (one token each, lowest
// latency), then the remaining prefill chunks of running sequences, then new
// admissions while the token budget, max_running and free blocks allow. When
// blocks run out, the lowest-priority, latest-arrived running sequence not
// yet scheduled is preempted (recomputed later), never an out-of-memory
// failure; no new sequence is admitted in a step that preempts, nor when
// limits.admit is false. Tenant limits hold under every policy: a tenant
// never runs more than max_concurrent requests, and when its budget_blocks
// are spent its sequences wait, or one of its own running sequences is
// preempted; other tenants' sequences are never preempted for it.
//
// "fcfs": by priority (higher first), then arrival, across tenants.
// "fair": the token budget goes to tenants by weight. Prefill chunks and
//   admissions are handed out one sequence at a time to the tenant with the
//   lowest virtual time (TenantShare::vtime plus this step's tokens over its
//   weight); within a tenant, by priority then arrival. A tenant that floods
//   the server thus cannot hold the budget against a lighter one. When a
//   chunk completes the prompt of a tenant at least half a step behind every
//   other tenant asking for prefill, the rest of that step goes to it alone,
//   so its first token is not delayed by a step full of others' prefill.
//   With one tenant it is fcfs.
absl::StatusOr<std::unique_ptr<Scheduler>> MakeScheduler(const std::string& name);
// The names MakeScheduler accepts, for error messages and help.
const std::vector<std::string>& SchedulerNames();

}  // namespace kvserve::engine
