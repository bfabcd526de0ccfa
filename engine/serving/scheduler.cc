#include "engine/serving/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace kvserve::engine {
namespace {

bool Before(const Sequence* a, const Sequence* b) {
  if (a->priority != b->priority) return a->priority > b->priority;
  if (a->arrival != b->arrival) return a->arrival < b->arrival;
  return a->choice < b->choice;
}

// Tokens of `s` to run this step: what is pending, within the step's budget
// and the request's own prefill chunk limit.
int ChunkSize(const Sequence& s, int budget) {
  int n = std::min(s.pending(), budget);
  const int cap = s.prefill_chunk_tokens;
  if (cap > 0) n = std::min(n, cap);
  return n;
}

class FcfsScheduler : public Scheduler {
 public:
  SchedulerDecision Schedule(std::vector<Sequence*>& running, std::vector<Sequence*>& waiting,
                             const kvcache::PagedKvCache& kv,
                             const ScheduleLimits& limits) override {
    SchedulerDecision d;
    std::stable_sort(running.begin(), running.end(), Before);
    std::stable_sort(waiting.begin(), waiting.end(), Before);
    int budget = limits.max_batch_tokens;
    int free_blocks = kv.pool().n_free();
    std::vector<Sequence*> live = running;  // candidates still running this step
    std::vector<uint8_t> scheduled(live.size(), 0);

    // Preempts the last unscheduled live sequence after index `self`, or
    // `self` itself when none is left. Returns true if `self` was taken.
    auto preempt_for = [&](size_t self) {
      for (size_t v = live.size(); v-- > self + 1;) {
        if (live[v] == nullptr || scheduled[v]) continue;
        free_blocks += kv.NumBlocks(live[v]->id);
        d.preempted.push_back(live[v]);
        live[v] = nullptr;
        return false;
      }
      free_blocks += kv.NumBlocks(live[self]->id);
      d.preempted.push_back(live[self]);
      live[self] = nullptr;
      return true;
    };
    auto try_run = [&](size_t i, int n) {
      Sequence* s = live[i];
      for (;;) {
        const int need = kv.BlocksNeeded(s->id, s->num_computed + n);
        if (need <= free_blocks) {
          free_blocks -= need;
          budget -= n;
          scheduled[i] = 1;
          d.chunks.push_back({s, n});
          return;
        }
        if (preempt_for(i)) return;
      }
    };
    // Pass 1: decodes. Pass 2: prefill chunks of running sequences.
    for (int pass = 0; pass < 2; ++pass) {
      for (size_t i = 0; i < live.size() && budget > 0; ++i) {
        Sequence* s = live[i];
        if (s == nullptr || scheduled[i] || s->pending() == 0) continue;
        const bool decode = s->pending() == 1 && s->num_computed >= s->prompt_len;
        if ((pass == 0) != decode) continue;
        try_run(i, ChunkSize(*s, budget));
      }
    }
    // Admissions.
    int n_running = 0;
    for (Sequence* s : live) n_running += s != nullptr;
    if (d.preempted.empty() && limits.admit) {
      for (Sequence* s : waiting) {
        if (budget <= 0 || n_running >= limits.max_running) break;
        const int n = ChunkSize(*s, budget);
        const int need = kv.BlocksNeeded(s->id, s->num_computed + n);
        if (need > free_blocks) break;  // FCFS: do not let later ones jump the queue
        free_blocks -= need;
        budget -= n;
        ++n_running;
        d.admitted.push_back(s);
        d.chunks.push_back({s, n});
      }
    }
    return d;
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Scheduler>> MakeScheduler(const std::string& name) {
  if (name == "fcfs") return std::make_unique<FcfsScheduler>();
  return absl::InvalidArgumentError(
      absl::StrCat("scheduler: unknown policy '", name, "' (available: fcfs)"));
}

}  // namespace kvserve::engine
