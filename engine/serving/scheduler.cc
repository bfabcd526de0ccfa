#include "engine/serving/scheduler.h"

#include <algorithm>
#include <limits>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/check.h"

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

// Whether s keeps its whole prompt in f16: its prompt's blocks are then all
// needed by the time its first token comes out. A sequence with a policy
// does not, even at ratio 1: under pressure the compressor shrinks it rather
// than preempting anyone.
bool KeepsWholePrompt(const Sequence& s) { return s.kv_spec.policy == "none"; }

// One call's working state. Both policies share it: they differ only in the
// order in which prefill chunks and admissions are handed out.
class Planner {
 public:
  Planner(std::vector<Sequence*>& running, std::vector<Sequence*>& waiting,
          const kvcache::PagedKvCache& kv, const ScheduleLimits& limits)
      : kv_(kv), limits_(limits), waiting_(waiting), live_(running) {
    std::stable_sort(running.begin(), running.end(), Before);
    std::stable_sort(waiting.begin(), waiting.end(), Before);
    live_ = running;
    scheduled_.assign(live_.size(), 0);
    budget_ = limits.max_batch_tokens;
    // Unused prefix-cache blocks are free for the taking (Reserve evicts them).
    free_blocks_ = kv.n_available();
    const size_t nt = std::max<size_t>(1, limits.tenants.size());
    tenant_blocks_.assign(nt, std::numeric_limits<int64_t>::max());
    given_.assign(nt, 0);
    running_requests_.resize(nt);
    admit_blocked_.assign(nt, 0);
    for (size_t t = 0; t < limits.tenants.size(); ++t) {
      if (limits.tenants[t].budget_blocks >= 0) tenant_blocks_[t] = limits.tenants[t].budget_blocks;
    }
    for (Sequence* s : live_) {
      running_requests_[TenantOf(s)].insert(s->request);
      if (KeepsWholePrompt(*s) && s->num_computed < s->prompt_len) {
        Owe(s, kv.BlocksNeeded(s->id, s->prompt_len));
      }
    }
  }

  // Pass 1: every running sequence's decode token.
  void Decodes() {
    for (size_t i = 0; i < live_.size() && budget_ > 0; ++i) {
      Sequence* s = live_[i];
      if (s == nullptr || scheduled_[i] || !IsDecode(*s)) continue;
      TryRun(i, 1);
    }
  }

  // Pass 2: prefill chunks of running sequences, then admissions, handed out
  // one sequence at a time to next_tenant()'s first candidate (-1 = any
  // tenant, in global priority/arrival order).
  template <typename NextTenant>
  void Prefills(NextTenant next_tenant) {
    for (;;) {
      if (budget_ <= 0) return;
      const int t = next_tenant(*this);
      if (t == kNone) return;
      const size_t before = d_.chunks.size();
      if (RunNextPrefill(t)) {
        FocusIfFinishingBehind(t, before);
        continue;
      }
      // Every call changes the state (admits, or closes admissions for the
      // tenant or, pool-blocked, for all), so the loop ends. A pool-blocked
      // admission must not end the step's prefills: other tenants' running
      // sequences still get theirs (otherwise, with the lowest-vtime tenant
      // waiting for room that only those prefills would free, nothing
      // progresses).
      AdmitNext(t);
      FocusIfFinishingBehind(t, before);
    }
  }

  // Time to first token for a tenant that has been served least: when a
  // chunk just handed to tenant t completes a prompt (its first token comes
  // out of this step) and t is at least half a step's budget behind every
  // other tenant still asking for prefill, the rest of the step goes to t
  // alone. The step stays short instead of being filled with the others'
  // prefill, so a light tenant's first token under a flood costs about what
  // it costs on an idle server; the others lose at most that step's slack.
  // Only for the fair policy (fcfs passes kAny, never a tenant).
  void FocusIfFinishingBehind(int t, size_t before) {
    if (t < 0 || focus_ != kNone || d_.chunks.size() == before) return;
    const ScheduledChunk& c = d_.chunks.back();
    const Sequence& s = *c.seq;
    if (s.num_computed >= s.prompt_len || s.num_computed + c.n_tokens < s.prompt_len) return;
    const TenantShare& mine = Share(t);
    const double my_v = mine.vtime + given_[t] / mine.weight;
    const double margin = 0.5 * limits_.max_batch_tokens / mine.weight;
    bool others = false;
    for (int u = 0; u < static_cast<int>(given_.size()); ++u) {
      if (u == t || !HasCandidate(u)) continue;
      others = true;
      const TenantShare& sh = Share(u);
      if (sh.vtime + given_[u] / sh.weight - my_v < margin) return;
    }
    if (others) focus_ = t;
  }

  // The tenant with the lowest virtual time that has a candidate, or kNone.
  int LowestVtimeTenant() const {
    if (focus_ != kNone) return HasCandidate(focus_) ? focus_ : kNone;
    int best = kNone;
    double best_v = 0;
    for (int t = 0; t < static_cast<int>(given_.size()); ++t) {
      if (!HasCandidate(t)) continue;
      const TenantShare& sh = Share(t);
      const double v = sh.vtime + given_[t] / sh.weight;
      if (best == kNone || v < best_v) best = t, best_v = v;
    }
    return best;
  }
  int AnyTenant() const {
    for (int t = 0; t < static_cast<int>(given_.size()); ++t) {
      if (HasCandidate(t)) return kAny;
    }
    return kNone;
  }

  SchedulerDecision Take() {
    std::sort(over_budget_.begin(), over_budget_.end());
    over_budget_.erase(std::unique(over_budget_.begin(), over_budget_.end()), over_budget_.end());
    d_.over_budget = over_budget_;
    return std::move(d_);
  }

  static constexpr int kNone = -2;
  static constexpr int kAny = -1;

 private:
  static bool IsDecode(const Sequence& s) {
    return s.pending() == 1 && s.num_computed >= s.prompt_len;
  }
  int TenantOf(const Sequence* s) const {
    return std::clamp(s->tenant, 0, static_cast<int>(given_.size()) - 1);
  }
  const TenantShare& Share(int t) const {
    static const TenantShare kDefault;
    return limits_.tenants.empty() ? kDefault : limits_.tenants[t];
  }
  bool Matches(const Sequence* s, int t) const { return t == kAny || TenantOf(s) == t; }

  // Index in live_ of the first running sequence of tenant t (or any) with
  // prefill work left, or -1.
  int NextRunning(int t) const {
    for (size_t i = 0; i < live_.size(); ++i) {
      const Sequence* s = live_[i];
      if (s != nullptr && !scheduled_[i] && s->pending() > 0 && !IsDecode(*s) && Matches(s, t)) {
        return static_cast<int>(i);
      }
    }
    return -1;
  }
  // Index in waiting_ of the next admission candidate of tenant t (or any).
  int NextWaiting(int t) const {
    if (!admissions_open()) return -1;
    for (size_t w = 0; w < waiting_.size(); ++w) {
      const Sequence* s = waiting_[w];
      if (taken_.contains(s) || admit_blocked_[TenantOf(s)]) continue;
      if (Matches(s, t)) return static_cast<int>(w);
    }
    return -1;
  }
  bool admissions_open() const {
    return limits_.admit && d_.preempted.empty() && !pool_blocked_ &&
           n_running() < limits_.max_running;
  }
  bool HasCandidate(int t) const { return NextRunning(t) >= 0 || NextWaiting(t) >= 0; }
  int n_running() const {
    int n = 0;
    for (const Sequence* s : live_) n += s != nullptr;
    return n + static_cast<int>(d_.admitted.size());
  }

  bool RunNextPrefill(int t) {
    const int i = NextRunning(t);
    if (i < 0) return false;
    TryRun(i, ChunkSize(*live_[i], budget_));
    return true;
  }

  // Admits tenant t's (or anyone's) next waiting sequence if the limits
  // allow, else closes admissions for that tenant (its own cap or budget) or
  // for everyone (the pool).
  void AdmitNext(int t) {
    const int w = NextWaiting(t);
    KV_CHECK(w >= 0);  // callers pick t for having a candidate
    Sequence* s = waiting_[w];
    const int tenant = TenantOf(s);
    const int cap = Share(tenant).max_concurrent;
    auto& reqs = running_requests_[tenant];
    if (cap > 0 && !reqs.contains(s->request) && static_cast<int>(reqs.size()) >= cap) {
      admit_blocked_[tenant] = 1;  // its own cap: others go on
      return;
    }
    const int n = ChunkSize(*s, budget_);
    const int need = kv_.BlocksNeeded(s->id, s->num_computed + n);
    if (need > tenant_blocks_[tenant]) {
      admit_blocked_[tenant] = 1;  // its own budget: others go on
      return;
    }
    if (need > free_blocks_) {
      pool_blocked_ = true;  // no jumping the queue for the pool
      return;
    }
    // Admissions leave the running prompts the blocks they still need, and
    // an uncompressed prompt is admitted only when all of it fits besides:
    // admitted on its first chunk alone, prompts that cannot all fit would
    // take turns preempting one another and recomputing their prefill. With
    // nothing running it is admitted anyway (it must start somewhere; it may
    // then preempt itself).
    const int whole =
        KeepsWholePrompt(*s) ? std::max(need, kv_.BlocksNeeded(s->id, s->prompt_len)) : need;
    if (whole + owed_total_ > free_blocks_ && n_running() > 0) {
      pool_blocked_ = true;
      return;
    }
    taken_.insert(s);
    Commit(s, n, need);
    if (whole > need) Owe(s, whole - need);
    reqs.insert(s->request);
    d_.admitted.push_back(s);
  }

  void Commit(Sequence* s, int n, int need) {
    if (auto it = owed_.find(s); it != owed_.end()) {
      const int paid = std::min(need, it->second);
      it->second -= paid;
      owed_total_ -= paid;
    }
    free_blocks_ -= need;
    tenant_blocks_[TenantOf(s)] -= need;
    budget_ -= n;
    given_[TenantOf(s)] += n;
    d_.chunks.push_back({s, n});
  }

  // Schedules n tokens of live_[i], preempting to make room; with a tenant
  // budget short, only that tenant's own sequences make room.
  void TryRun(size_t i, int n) {
    Sequence* s = live_[i];
    const int t = TenantOf(s);
    for (;;) {
      const int need = kv_.BlocksNeeded(s->id, s->num_computed + n);
      const bool tenant_ok = need <= tenant_blocks_[t];
      if (tenant_ok && need <= free_blocks_) {
        scheduled_[i] = 1;
        Commit(s, n, need);
        return;
      }
      if (!tenant_ok) over_budget_.push_back(t);
      if (PreemptFor(i, tenant_ok ? kAny : t)) return;
    }
  }

  // Preempts the last unscheduled live sequence after index `self` (of
  // tenant t, unless kAny), or `self` itself when none is left. True if
  // `self` was taken.
  bool PreemptFor(size_t self, int t) {
    for (size_t v = live_.size(); v-- > self + 1;) {
      if (live_[v] == nullptr || scheduled_[v] || !Matches(live_[v], t)) continue;
      Preempt(v);
      return false;
    }
    Preempt(self);
    return true;
  }
  void Preempt(size_t v) {
    Sequence* s = live_[v];
    // Shared blocks stay with their other holders: count only what freeing
    // it really releases.
    const int blocks = kv_.BlocksReleasedByFree(s->id);
    free_blocks_ += blocks;
    int64_t& tb = tenant_blocks_[TenantOf(s)];
    if (tb != std::numeric_limits<int64_t>::max()) tb += blocks;
    d_.preempted.push_back(s);
    live_[v] = nullptr;
    if (auto it = owed_.find(s); it != owed_.end()) {
      owed_total_ -= it->second;
      owed_.erase(it);
    }
  }

  // Blocks s's prompt still needs beyond this step's chunks: admissions
  // leave room for them.
  void Owe(const Sequence* s, int blocks) {
    owed_[s] += blocks;
    owed_total_ += blocks;
  }

  const kvcache::PagedKvCache& kv_;
  const ScheduleLimits& limits_;
  std::vector<Sequence*>& waiting_;
  std::vector<Sequence*> live_;  // running candidates; preempted ones become null
  std::vector<uint8_t> scheduled_;
  int budget_ = 0;
  int free_blocks_ = 0;
  std::vector<int64_t> tenant_blocks_;  // [tenant] blocks it may still add
  std::vector<double> given_;           // [tenant] tokens scheduled this step
  std::vector<absl::flat_hash_set<const RequestState*>> running_requests_;  // [tenant]
  std::vector<uint8_t> admit_blocked_;          // [tenant] its own limit stops its admissions
  absl::flat_hash_set<const Sequence*> taken_;  // admitted this step
  bool pool_blocked_ = false;
  absl::flat_hash_map<const Sequence*, int> owed_;  // see Owe
  int64_t owed_total_ = 0;
  int focus_ = kNone;  // FocusIfFinishingBehind's tenant, once set
  std::vector<int> over_budget_;
  SchedulerDecision d_;
};

class PolicyScheduler : public Scheduler {
 public:
  explicit PolicyScheduler(bool fair) : fair_(fair) {}

  SchedulerDecision Schedule(std::vector<Sequence*>& running, std::vector<Sequence*>& waiting,
                             const kvcache::PagedKvCache& kv,
                             const ScheduleLimits& limits) override {
    Planner p(running, waiting, kv, limits);
    p.Decodes();
    if (fair_) {
      p.Prefills([](const Planner& q) { return q.LowestVtimeTenant(); });
    } else {
      p.Prefills([](const Planner& q) { return q.AnyTenant(); });
    }
    return p.Take();
  }

 private:
  const bool fair_;
};

}  // namespace

const std::vector<std::string>& SchedulerNames() {
  static const std::vector<std::string> kNames = {"fcfs", "fair"};
  return kNames;
}

absl::StatusOr<std::unique_ptr<Scheduler>> MakeScheduler(const std::string& name) {
  if (name == "fcfs") return std::make_unique<PolicyScheduler>(/*fair=*/false);
  if (name == "fair") return std::make_unique<PolicyScheduler>(/*fair=*/true);
  return absl::InvalidArgumentError(
      absl::StrCat("scheduler: unknown policy '", name,
                   "' (available: ", absl::StrJoin(SchedulerNames(), ", "), ")"));
}

}  // namespace kvserve::engine
