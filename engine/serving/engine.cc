#include "engine/serving/engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "engine/model/model_runner.h"
#include "engine/serving/logits_processing.h"
#include "engine/serving/prefix_attacher.h"
#include "engine/serving/request_state.h"
#include "engine/serving/request_validation.h"
#include "engine/serving/scheduler.h"
#include "engine/serving/sequence.h"
#include "engine/serving/tenant_book.h"
#include "kvcache/kv_compressor.h"
#include "kvcache/paged_kv_cache.h"

namespace kvserve::engine {

using Clock = std::chrono::steady_clock;

class EngineImpl {
 public:
  EngineImpl(const EngineConfig& config, model::ModelRunner* runner,
             const tokenizer::Tokenizer* tokenizer, EngineObserver* observer,
             std::unique_ptr<kvcache::PagedKvCache> kv,
             std::unique_ptr<kvcache::KvCompressor> compressor,
             std::unique_ptr<Scheduler> scheduler)
      : config_(config),
        runner_(runner),
        tokenizer_(tokenizer),
        observer_(observer),
        kv_(std::move(kv)),
        compressor_(std::move(compressor)),
        scheduler_(std::move(scheduler)),
        prefix_(kv_.get(), config.prefix_cache) {
    PublishStats();
    thread_ = std::thread([this] { Loop(); });
  }

  ~EngineImpl() { Shutdown(); }

  absl::StatusOr<std::shared_ptr<RequestHandle>> Submit(GenerationRequest r) {
    if (absl::Status st = ValidateRequest(config_, runner_->config().n_vocab, max_context(),
                                          kv_->pool().n_blocks(), &r);
        !st.ok()) {
      return st;
    }
    const int64_t total = static_cast<int64_t>(r.prompt.size()) + r.max_tokens;
    const int blocks = BlocksFor(total, config_.block_tokens);
    std::shared_ptr<RequestState> state;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return absl::UnavailableError("the server is shutting down");
      if (draining_.load()) {
        return absl::UnavailableError("the server is draining; retry on another replica");
      }
      // Requests naming an unknown tenant are the default tenant's.
      if (!submit_limits_.contains(r.tenant)) r.tenant.clear();
      SubmitCounts& counts = submit_counts_[r.tenant];
      // Requests not yet running that will start at the next step, because a
      // running slot is free, are not waiting: without this a burst that
      // arrives between two steps would be counted as queued in full and
      // rejected below its limits. KV room is not foreseen; a request that
      // finds none waits, and may then leave the queue over its cap.
      const int free_slots = std::max(0, config_.max_running - stats_.running);
      if (queued_ - free_slots >= config_.max_waiting) {
        ++rejected_;
        ++counts.rejected;
        return absl::ResourceExhaustedError(absl::StrCat("the server's queue is full (",
                                                         config_.max_waiting,
                                                         " requests waiting); retry later"));
      }
      if (auto it = submit_limits_.find(r.tenant);
          it != submit_limits_.end() && it->second.max_queued > 0 &&
          counts.queued - TenantFreeSlots(it->second, counts.running, free_slots) >=
              it->second.max_queued) {
        ++rejected_;
        ++counts.rejected;
        return absl::ResourceExhaustedError(
            absl::StrCat("tenant '", r.tenant, "' has ", counts.queued,
                         " requests queued (its max_queued); retry later"));
      }
      if (auto it = submit_limits_.find(r.tenant);
          it != submit_limits_.end() && it->second.kv_budget_bytes > 0) {
        // New blocks start uncompressed, so a request must fit its tenant's
        // budget in f16 to be sure to make progress.
        const int64_t need =
            static_cast<int64_t>(blocks) * static_cast<int64_t>(kv_->pool().bytes_per_block());
        if (need > it->second.kv_budget_bytes) {
          ++rejected_;
          ++counts.rejected;
          return absl::InvalidArgumentError(
              absl::StrCat("the request needs ", need, " bytes of KV cache (", total,
                           " tokens) but tenant '", r.tenant, "' has a budget of ",
                           it->second.kv_budget_bytes, " bytes; reduce the prompt or max_tokens"));
        }
      }
      ++counts.queued;
      ++counts.submitted;
      state = std::make_shared<RequestState>(std::move(r), next_arrival_++, [this] { Wake(); });
      inbox_.push_back(state);
      ++queued_;
      ++submitted_;
      ++in_flight_;
    }
    cv_.notify_one();
    return std::static_pointer_cast<RequestHandle>(state);
  }

  EngineStats Stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    EngineStats st = stats_;
    // Submit's counters move without an engine step (a rejection does not
    // wake the engine), so they are read live rather than from the last
    // step's snapshot.
    st.requests_submitted = submitted_;
    st.requests_rejected = rejected_;
    for (TenantStats& t : st.tenants) {
      if (auto it = submit_counts_.find(t.id); it != submit_counts_.end()) {
        t.requests_submitted = it->second.submitted;
        t.requests_rejected = it->second.rejected;
      }
    }
    return st;
  }

  absl::Status SetTenants(std::vector<TenantLimits> tenants) {
    absl::flat_hash_set<std::string> ids;
    for (const TenantLimits& t : tenants) {
      if (t.id.empty()) return absl::InvalidArgumentError("tenant id must not be empty");
      if (!ids.insert(t.id).second) {
        return absl::InvalidArgumentError(absl::StrCat("tenant id '", t.id, "' appears twice"));
      }
      if (!(t.weight > 0) || t.kv_budget_bytes < 0 || t.max_concurrent < 0 || t.max_queued < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tenant '", t.id,
            "': weight must be > 0 and kv_budget_bytes, max_concurrent, max_queued >= 0"));
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      submit_limits_.clear();
      for (const TenantLimits& t : tenants) submit_limits_[t.id] = t;
      tenant_limits_ = std::move(tenants);
      tenants_changed_ = true;
    }
    cv_.notify_one();
    return absl::OkStatus();
  }

  bool Ready() const { return ready_.load() && !draining_.load(); }

  void Drain() {
    // Under mu_ so that no Submit that saw draining_ false is still between
    // its check and its push once Drain returns.
    std::lock_guard<std::mutex> lock(mu_);
    draining_.store(true);
  }

  int InFlight() const {
    std::lock_guard<std::mutex> lock(mu_);
    return in_flight_;
  }

  bool WaitIdle(absl::Duration timeout) const {
    std::unique_lock<std::mutex> lock(mu_);
    auto idle = [&] { return in_flight_ == 0; };
    if (timeout == absl::InfiniteDuration()) {
      idle_cv_.wait(lock, idle);
      return true;
    }
    // wait_for adds the timeout to now(); a century keeps that from
    // overflowing and is forever for a server.
    const absl::Duration bounded =
        std::clamp(timeout, absl::ZeroDuration(), absl::Hours(24 * 365 * 100));
    return idle_cv_.wait_for(lock, absl::ToChronoNanoseconds(bounded), idle);
  }

  void Shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_ && !thread_.joinable()) return;
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    ready_.store(false);
  }

  const EngineConfig& config() const { return config_; }

 private:
  int max_context() const {
    const int model_ctx = runner_->config().n_ctx_train;
    return config_.max_context > 0 ? std::min(config_.max_context, model_ctx) : model_ctx;
  }

  void Wake() {
    { std::lock_guard<std::mutex> lock(mu_); }
    cv_.notify_one();
  }

  void Loop() {
    ready_.store(true);
    for (;;) {
      std::vector<std::shared_ptr<RequestState>> incoming;
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (running_.empty() && waiting_.empty()) {
          // A new tenant table wakes it too, so Stats() lists the tenants
          // without waiting for a request.
          cv_.wait(lock, [&] { return stopping_ || !inbox_.empty() || tenants_changed_; });
        }
        if (stopping_) break;
        incoming.swap(inbox_);
        if (tenants_changed_) {
          tenants_.SetTable(tenant_limits_);
          tenants_changed_ = false;
          for (auto& s : seqs_) s->tenant = tenants_.IndexOf(s->request->request.tenant);
        }
      }
      for (auto& r : incoming) Admit(std::move(r));
      HandleCancellations();
      Step();
      if (config_.check_invariants) CheckInvariants();
      PublishStats();
    }
    // Shutdown: everything in flight ends as aborted. Requests still in
    // the inbox are admitted first so that each of their choices gets its
    // final event too.
    std::vector<std::shared_ptr<RequestState>> incoming;
    {
      std::lock_guard<std::mutex> lock(mu_);
      incoming.swap(inbox_);
    }
    for (auto& r : incoming) Admit(std::move(r));
    for (auto& r : requests_) r->cancelled.store(true);
    HandleCancellations();
    PublishStats();
  }

  void Admit(std::shared_ptr<RequestState> r) {
    const GenerationRequest& req = r->request;
    const int n_vocab = runner_->config().n_vocab;
    uint64_t seed = req.sampling.seed.value_or(0);
    if (!req.sampling.seed)
      seed = std::random_device{}() ^ (static_cast<uint64_t>(r->arrival) << 32);
    for (int c = 0; c < req.n; ++c) {
      auto s = std::make_unique<Sequence>();
      s->id = next_seq_id_++;
      s->request = r.get();
      s->choice = c;
      s->priority = req.priority;
      s->tenant = tenants_.IndexOf(req.tenant);
      s->arrival = r->arrival;
      s->tokens = req.prompt;
      s->prompt_len = static_cast<int>(req.prompt.size());
      s->kv_spec = req.kv_compression.value_or(config_.kv_compression);
      s->prefill_chunk_tokens = req.prefill_chunk_tokens;
      s->cache_salt = PrefixAttacher::Salt(req.tenant, s->kv_spec);
      model::SamplingParams sp;
      sp.temperature = req.sampling.temperature;
      sp.top_k = req.sampling.top_k;
      sp.top_p = req.sampling.top_p;
      sp.min_p = req.sampling.min_p;
      sp.seed = seed + c;
      s->sampler = std::make_unique<model::Sampler>(sp);
      s->stop = std::make_unique<StopMatcher>(req.stop);
      s->decoder = std::make_unique<tokenizer::StreamingDecoder>(tokenizer_, /*skip_special=*/true);
      if (req.sampling.repetition_penalty != 1.0f) {
        s->seen.assign(n_vocab, 0);
        for (int32_t t : req.prompt) s->seen[t] = 1;
      }
      waiting_.push_back(s.get());
      seqs_.push_back(std::move(s));
    }
    requests_.push_back(std::move(r));
  }

  // Ends every sequence of cancelled requests and drops finished requests.
  void HandleCancellations() {
    for (auto& s : seqs_) {
      if (s->finish == FinishReason::kNone && s->request->cancelled.load()) {
        Finish(s.get(), FinishReason::kAbort, {});
      }
    }
    ReapFinished();
  }

  void ReapFinished() {
    auto gone = [](const Sequence* s) { return s->finish != FinishReason::kNone; };
    running_.erase(std::remove_if(running_.begin(), running_.end(), gone), running_.end());
    waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(), gone), waiting_.end());
    seqs_.erase(std::remove_if(seqs_.begin(), seqs_.end(),
                               [&](const std::unique_ptr<Sequence>& s) { return gone(s.get()); }),
                seqs_.end());
    const size_t before = requests_.size();
    requests_.erase(
        std::remove_if(requests_.begin(), requests_.end(),
                       [&](const std::shared_ptr<RequestState>& r) {
                         for (const auto& s : seqs_) {
                           if (s->request == r.get()) return false;
                         }
                         ++tenants_.counters(tenants_.IndexOf(r->request.tenant)).requests_finished;
                         return true;
                       }),
        requests_.end());
    const int finished = static_cast<int>(before - requests_.size());
    requests_finished_ += finished;
    if (finished > 0) {
      bool idle;
      {
        std::lock_guard<std::mutex> lock(mu_);
        in_flight_ -= finished;
        idle = in_flight_ == 0;
      }
      if (idle) idle_cv_.notify_all();
    }
  }

  // KV bytes each tenant's sequences hold as stored ([tenant]).
  std::vector<int64_t> TenantHeldBytes() const {
    std::vector<int64_t> held(tenants_.size(), 0);
    for (const Sequence* s : running_) {
      held[s->tenant] += static_cast<int64_t>(kv_->SequenceBytes(s->id));
    }
    return held;
  }

  ScheduleLimits MakeLimits() {
    ScheduleLimits limits;
    limits.max_batch_tokens = config_.max_batch_tokens;
    limits.max_running = config_.max_running;
    std::vector<uint8_t> active(tenants_.size(), 0);
    for (const Sequence* s : running_) active[s->tenant] = 1;
    for (const Sequence* s : waiting_) active[s->tenant] = 1;
    // What tenants hold matters only against a budget: skip the walk over
    // every block when no tenant has one.
    bool any_budget = false;
    for (int t = 1; t < tenants_.size(); ++t) any_budget |= tenants_.limits(t).kv_budget_bytes > 0;
    limits.tenants =
        tenants_.Shares(any_budget ? TenantHeldBytes() : std::vector<int64_t>(tenants_.size(), 0),
                        active, static_cast<int64_t>(kv_->pool().bytes_per_block()),
                        /*credit=*/2.0 * config_.max_batch_tokens);
    return limits;
  }

  // Tenants whose KV budget stopped their sequences: compress their own
  // sequences harder until each of their running sequences could take one
  // more block within the budget. Returns whether any room was made.
  bool ReclaimTenantBudgets(const std::vector<int>& over_budget) {
    bool any = false;
    const int64_t block_bytes = static_cast<int64_t>(kv_->pool().bytes_per_block());
    for (int t : over_budget) {
      const int64_t budget = tenants_.limits(t).kv_budget_bytes;
      if (budget <= 0) continue;
      std::vector<int> seqs;
      for (const Sequence* s : running_) {
        if (s->tenant == t && compressor_->Compresses(s->id)) seqs.push_back(s->id);
      }
      if (seqs.empty()) continue;
      ++tenants_.counters(t).budget_reclaims;
      auto done = [&] {
        int64_t held = 0;
        int n = 0;
        for (const Sequence* s : running_) {
          if (s->tenant != t) continue;
          held += static_cast<int64_t>(kv_->SequenceBytes(s->id));
          ++n;
        }
        return held + n * block_bytes <= budget;
      };
      any |= compressor_->ReclaimUntil(seqs, done);
    }
    return any;
  }

  void Step() {
    if (running_.empty() && waiting_.empty()) return;
    prefix_.AttachWaiting(waiting_);
    ScheduleLimits limits = MakeLimits();
    SchedulerDecision d = scheduler_->Schedule(running_, waiting_, *kv_, limits);
    if (!d.preempted.empty() && prefix_.AnyAttached(waiting_)) {
      // Running sequences come before waiting ones: the cached blocks the
      // waiting ones pinned for their admission go back first, and this
      // step admits no one.
      prefix_.DetachWaiting(waiting_);
      limits = MakeLimits();
      limits.admit = false;
      d = scheduler_->Schedule(running_, waiting_, *kv_, limits);
    }
    if (!d.over_budget.empty() && ReclaimTenantBudgets(d.over_budget)) {
      // A tenant over its budget compresses its own sequences harder before
      // waiting or preempting its own; other tenants are not touched.
      limits = MakeLimits();
      limits.admit = false;
      d = scheduler_->Schedule(running_, waiting_, *kv_, limits);
    }
    if (!d.preempted.empty()) {
      // Memory is short: compress harder before preempting anyone. Aim for
      // the blocks the preemptions would have freed, then plan again,
      // without admissions: what compression freed goes to the running
      // sequences (admitting new ones would bring the pressure straight
      // back).
      int want = kv_->n_available();
      for (const Sequence* s : d.preempted) want += kv_->BlocksReleasedByFree(s->id);
      compressor_->Reclaim(want);
      limits = MakeLimits();
      limits.admit = false;
      d = scheduler_->Schedule(running_, waiting_, *kv_, limits);
    }
    // Apply the decision: preemptions free blocks first, then reservations.
    for (Sequence* s : d.preempted) {
      ReleaseKv(s);
      s->num_computed = 0;
      s->running = false;
      running_.erase(std::find(running_.begin(), running_.end(), s));
      waiting_.push_back(s);
      ++preemptions_;
      ++tenants_.counters(s->tenant).preemptions;
    }
    for (Sequence* s : d.admitted) {
      waiting_.erase(std::find(waiting_.begin(), waiting_.end(), s));
      running_.push_back(s);
      s->running = true;
      tenants_.counters(s->tenant).cached_prompt_tokens += prefix_.Keep(s);
      if (!s->first_scheduled) {
        s->first_scheduled = Clock::now();
        if (s->choice == 0) {
          // Prefilled tokens: the cached ones are counted as cached.
          prompt_tokens_ += s->prompt_len - s->cached_tokens;
          tenants_.counters(s->tenant).prompt_tokens += s->prompt_len - s->cached_tokens;
        }
      }
    }
    prefix_.DetachWaiting(waiting_);
    if (d.empty() && running_.empty()) prefix_.SkipNextAttach();
    if (d.empty()) {
      // Nothing fits this step (cannot persist: with nothing running, and no
      // cached prefix attached in the next step, every block is free or
      // evictable); do not spin.
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      return;
    }
    batch_.Clear();
    ran_.clear();
    const int window = config_.kv_compressor.observation_window;
    for (const ScheduledChunk& ch : d.chunks) {
      Sequence* s = ch.seq;
      KV_CHECK_MSG(kv_->Reserve(s->id, s->num_computed + ch.n_tokens),
                   "scheduler promised blocks that are not free");
      if (!s->kv_tracked) {
        compressor_->AddSequence(s->id, s->kv_spec);
        s->kv_tracked = true;
      }
      // A prompt is assessed once all of it is in: its last rows (in QA,
      // the question) are then the observation window that decides what
      // the document keeps, as in SnapKV. Until then only memory pressure
      // (Reclaim) compresses it.
      // A request that chunks its prefill asks for assessment after every
      // chunk instead.
      if (s->num_computed + ch.n_tokens >= s->prompt_len || s->prefill_chunk_tokens > 0) {
        ran_.push_back(s->id);
      }
      // Rows whose attention feeds the scores: every decode row, and the
      // last `window` rows of a prefill chunk (the observation window).
      const bool observed = compressor_->Compresses(s->id);
      if (observed) batch_.mass_sink = compressor_.get();
      const bool want_prompt_lp =
          s->request->request.prompt_logprobs && s->choice == 0 && !s->sent_prompt_logprobs;
      const int end = s->num_computed + ch.n_tokens;
      for (int p = s->num_computed; p < end; ++p) {
        const bool last = p + 1 == static_cast<int>(s->tokens.size());
        const bool prompt_lp = want_prompt_lp && p + 1 < s->prompt_len;
        batch_.Add(s->tokens[p], p, s->id, last || prompt_lp, observed && p >= end - window);
      }
    }
    const auto t0 = Clock::now();
    absl::Status st = runner_->Forward(batch_, kv_.get(), &logits_);
    const double step_s = std::chrono::duration<double>(Clock::now() - t0).count();
    ++steps_;
    if (observer_) observer_->OnStep(batch_.size(), step_s);
    if (!st.ok()) {
      // A forward failure is not the requests' fault, but they cannot go on.
      for (const ScheduledChunk& ch : d.chunks) Finish(ch.seq, FinishReason::kError, st);
      ReapFinished();
      return;
    }
    for (const ScheduledChunk& ch : d.chunks) {
      if (ch.seq->num_computed < ch.seq->prompt_len) {
        prefix_.IndexComputedPrompt(ch.seq, ch.seq->num_computed + ch.n_tokens);
      }
    }
    compressor_->EndStep(ran_);
    for (const ScheduledChunk& ch : d.chunks) tenants_.Charge(ch.seq->tenant, ch.n_tokens);
    const int n_vocab = runner_->config().n_vocab;
    int row = 0;
    for (const ScheduledChunk& ch : d.chunks) {
      Sequence* s = ch.seq;
      const int begin = s->num_computed;
      s->num_computed += ch.n_tokens;
      const bool want_prompt_lp =
          s->request->request.prompt_logprobs && s->choice == 0 && !s->sent_prompt_logprobs;
      std::vector<TokenLogprob> prompt_lps;
      const float* sample_row = nullptr;
      for (int p = begin; p < s->num_computed; ++p) {
        const bool last = p + 1 == static_cast<int>(s->tokens.size());
        const bool prompt_lp = want_prompt_lp && p + 1 < s->prompt_len;
        if (!last && !prompt_lp) continue;
        const float* lr = logits_.data() + static_cast<size_t>(row++) * n_vocab;
        if (prompt_lp) {
          TokenLogprob lp = ComputeLogprob(lr, n_vocab, s->tokens[p + 1],
                                           std::max(0, s->request->request.logprobs));
          lp.text = tokenizer_->TokenToPiece(lp.token);
          s->pending_prompt_logprobs.push_back(std::move(lp));
        }
        if (last) sample_row = lr;
      }
      if (sample_row != nullptr) SampleNext(s, sample_row);
    }
    ReapFinished();
  }

  void CheckInvariants() const {
    absl::Status st = kv_->CheckInvariants();
    KV_CHECK_MSG(st.ok(), (std::string(st.message()) + "\n" + kv_->DebugString()).c_str());
    // With no sequence alive, only the prefix cache holds blocks.
    if (seqs_.empty()) {
      KV_CHECK_MSG(kv_->pool().n_used() == kv_->prefix_cache().n_indexed(),
                   kv_->DebugString().c_str());
    }
    KV_CHECK(kv_->num_sequences() <= static_cast<int>(seqs_.size()));
  }

  void SampleNext(Sequence* s, const float* row) {
    const GenerationRequest& req = s->request->request;
    const int n_vocab = runner_->config().n_vocab;
    const float* probs_row = row;
    const SamplingOptions& so = req.sampling;
    if (so.repetition_penalty != 1.0f || so.presence_penalty != 0.0f ||
        so.frequency_penalty != 0.0f) {
      penalized_.assign(row, row + n_vocab);
      ApplyPenalties(so, s->output_counts, s->seen, penalized_.data(), n_vocab);
      probs_row = penalized_.data();
    }
    const int32_t token = s->sampler->Sample(probs_row, n_vocab);
    const auto now = Clock::now();
    if (!s->first_token) s->first_token = now;
    s->last_token = now;
    s->tokens.push_back(token);
    ++s->generated;
    ++generation_tokens_;
    ++tenants_.counters(s->tenant).generation_tokens;
    ++s->output_counts[token];
    if (!s->seen.empty()) s->seen[token] = 1;

    StreamEvent e;
    e.choice = s->choice;
    if (!s->sent_prompt_logprobs && req.prompt_logprobs && s->choice == 0) {
      e.prompt_logprobs = std::move(s->pending_prompt_logprobs);
      s->sent_prompt_logprobs = true;
    }
    e.tokens.push_back(token);
    if (req.logprobs >= 0) {
      TokenLogprob lp = ComputeLogprob(row, n_vocab, token, req.logprobs);
      lp.text = tokenizer_->TokenToPiece(token);
      e.logprobs.push_back(std::move(lp));
    }
    FinishReason finish = FinishReason::kNone;
    if (!req.ignore_eos && tokenizer_->IsEog(token)) {
      finish = FinishReason::kStop;
    } else {
      bool stopped = false;
      e.text = s->stop->Push(s->decoder->Push(token), &stopped);
      if (stopped) finish = FinishReason::kStop;
    }
    if (finish == FinishReason::kNone && s->generated >= req.max_tokens) {
      finish = FinishReason::kLength;
    }
    if (finish != FinishReason::kNone) {
      FinishWith(s, finish, absl::OkStatus(), std::move(e));
    } else {
      s->request->Push(std::move(e));
    }
  }

  void Finish(Sequence* s, FinishReason reason, absl::Status error) {
    StreamEvent e;
    e.choice = s->choice;
    FinishWith(s, reason, std::move(error), std::move(e));
  }

  // Emits the choice's final event (flushing held-back text unless it was
  // cut by a stop string) and frees its blocks.
  void FinishWith(Sequence* s, FinishReason reason, absl::Status error, StreamEvent e) {
    if (reason == FinishReason::kLength || (reason == FinishReason::kStop && e.text.empty())) {
      bool ignored = false;
      std::string tail = s->stop->Push(s->decoder->Flush(), &ignored);
      if (!ignored) tail += s->stop->Flush();
      e.text += tail;
    }
    e.finish = reason;
    e.error = std::move(error);
    e.prompt_tokens = s->prompt_len;
    e.cached_tokens = s->cached_tokens;
    e.completion_tokens = s->generated;
    e.kv_bytes = static_cast<int64_t>(kv_->SequenceBytes(s->id));
    e.kv_bytes_uncompressed = static_cast<int64_t>(kv_->SequenceUncompressedBytes(s->id));
    s->finish = reason;
    ReleaseKv(s);
    if (observer_) {
      RequestTimings t;
      const auto now = Clock::now();
      auto secs = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
      const auto sub = s->request->submitted;
      t.queue_s = s->first_scheduled ? secs(*s->first_scheduled - sub) : secs(now - sub);
      t.ttft_s = s->first_token ? secs(*s->first_token - sub) : 0;
      t.tpot_s =
          s->generated >= 2 ? secs(*s->last_token - *s->first_token) / (s->generated - 1) : 0;
      t.e2e_s = secs(now - sub);
      t.prompt_tokens = s->prompt_len;
      t.completion_tokens = s->generated;
      t.finish = reason;
      t.tenant = tenants_.limits(s->tenant).id;
      t.cached_tokens = s->cached_tokens;
      t.kv_policy = s->kv_spec.policy;
      t.kv_bytes = e.kv_bytes;
      t.kv_bytes_uncompressed = e.kv_bytes_uncompressed;
      observer_->OnChoiceFinished(t);
    }
    s->request->Push(std::move(e));
  }

  // Frees s's blocks and forgets its scores (a preempted sequence starts
  // over when it is recomputed).
  void ReleaseKv(Sequence* s) {
    kv_->Free(s->id);
    compressor_->RemoveSequence(s->id);
    s->kv_tracked = false;
  }

  void PublishStats() {
    EngineStats st;
    st.running = static_cast<int>(running_.size());
    const auto& pool = kv_->pool();
    st.kv_blocks_total = pool.n_blocks();
    st.kv_blocks_free = pool.n_free();
    st.kv_blocks_used = pool.n_used();
    st.kv_bytes_total = static_cast<int64_t>(pool.capacity_bytes());
    st.kv_bytes_used = static_cast<int64_t>(pool.used_bytes());
    for (int t = 0; t < kvcache::kNumKvTiers; ++t) {
      const auto tier = kvcache::TierFromIndex(t);
      st.kv_tier_units[t] = pool.units(tier);
      st.kv_tier_bytes[t] = pool.units(tier) * static_cast<int64_t>(pool.unit_bytes(tier));
    }
    st.kv_bytes_uncompressed = pool.n_used() * static_cast<int64_t>(pool.bytes_per_block());
    const kvcache::KvCompressionCounters& cc = compressor_->counters();
    st.kv_moved_to = cc.moved_to;
    st.kv_compress_failed = cc.failed;
    st.kv_reclaim_rounds = cc.reclaim_rounds;
    st.kv_policy_seconds = cc.policy_seconds;
    st.prefix_cache_blocks = kv_->prefix_cache().n_indexed();
    st.prefix_cache_hit_tokens = prefix_.hit_tokens();
    st.preemptions = preemptions_;
    st.prompt_tokens = prompt_tokens_;
    st.generation_tokens = generation_tokens_;
    st.steps = steps_;
    std::lock_guard<std::mutex> lock(mu_);
    // Waiting counts queued requests' sequences not yet admitted too.
    int inbox_seqs = 0;
    for (const auto& r : inbox_) inbox_seqs += r->request.n;
    st.waiting = static_cast<int>(waiting_.size()) + inbox_seqs;
    // requests_submitted and requests_rejected are filled by Stats().
    st.requests_finished = requests_finished_;
    queued_ = CountQueued();
    PublishTenantStats(&st);
    stats_ = st;
  }

  // Of a tenant's requests not yet running, how many the next step can start:
  // the slots its max_concurrent leaves, and no more than the server's.
  static int TenantFreeSlots(const TenantLimits& limits, int tenant_running,
                             int server_free_slots) {
    if (limits.max_concurrent <= 0) return server_free_slots;
    return std::min(server_free_slots, std::max(0, limits.max_concurrent - tenant_running));
  }

  // Requests submitted and not yet running (the inbox and those with no
  // running sequence), in total and per tenant id into submit_counts_, which
  // Submit's max_queued checks read, with the running requests per tenant.
  // mu_ held.
  int CountQueued() {
    for (auto& [id, c] : submit_counts_) c.queued = c.running = 0;
    for (const auto& r : inbox_) ++submit_counts_[r->request.tenant].queued;
    running_requests_scratch_.clear();
    for (const Sequence* s : running_) running_requests_scratch_.insert(s->request);
    for (const RequestState* r : running_requests_scratch_)
      ++submit_counts_[r->request.tenant].running;
    int n = static_cast<int>(inbox_.size());
    for (const auto& r : requests_) {
      if (running_requests_scratch_.contains(r.get())) continue;
      ++submit_counts_[r->request.tenant].queued;
      ++n;
    }
    return n;
  }

  // Fills st->tenants with the configured tenants' rows: one pass over the
  // sequences, and none at all without a tenant table (single-tenant mode
  // pays nothing per step). mu_ held.
  void PublishTenantStats(EngineStats* st) {
    if (tenants_.size() == 1) return;  // only the default tenant
    std::vector<TenantStats> rows;
    for (int t = 0; t < tenants_.size(); ++t) {
      rows.push_back(tenants_.counters(t));
      rows.back().kv_budget_bytes = tenants_.limits(t).kv_budget_bytes;
    }
    const int64_t block_bytes = static_cast<int64_t>(kv_->pool().bytes_per_block());
    const auto& pool = kv_->pool();
    for (const Sequence* s : running_) {
      if (s->tenant == 0) continue;
      TenantStats& ts = rows[s->tenant];
      ++ts.running;
      ts.kv_bytes_uncompressed += kv_->NumBlocks(s->id) * block_bytes;
      for (int l = 0; l < kv_->shape().n_layers; ++l) {
        kv_->Tiers(s->id, l, &tiers_scratch_);
        for (kvcache::KvTier tier : tiers_scratch_) {
          if (tier == kvcache::KvTier::kEvicted) continue;
          ts.kv_tier_bytes[kvcache::TierIndex(tier)] += static_cast<int64_t>(pool.unit_bytes(tier));
        }
      }
    }
    for (const Sequence* s : waiting_) ++rows[s->tenant].waiting;
    for (const auto& r : inbox_) rows[tenants_.IndexOf(r->request.tenant)].waiting += r->request.n;
    for (int t = 1; t < tenants_.size(); ++t) {
      TenantStats& ts = rows[t];
      for (int64_t b : ts.kv_tier_bytes) ts.kv_bytes += b;
      st->tenants.push_back(std::move(ts));  // submitted/rejected: Stats()
    }
  }

  const EngineConfig config_;
  model::ModelRunner* const runner_;             // not owned
  const tokenizer::Tokenizer* const tokenizer_;  // not owned
  EngineObserver* const observer_;               // not owned; may be null
  std::unique_ptr<kvcache::PagedKvCache> kv_;
  std::unique_ptr<kvcache::KvCompressor> compressor_;  // over *kv_
  std::unique_ptr<Scheduler> scheduler_;

  // Engine thread only.
  std::vector<std::shared_ptr<RequestState>> requests_;
  std::vector<std::unique_ptr<Sequence>> seqs_;
  std::vector<Sequence*> running_, waiting_;
  model::Batch batch_;
  std::vector<float> logits_, penalized_;
  std::vector<int> ran_;  // sequence ids in the current step's batch
  int next_seq_id_ = 0;
  int64_t preemptions_ = 0, prompt_tokens_ = 0, generation_tokens_ = 0, steps_ = 0;
  int64_t requests_finished_ = 0;
  TenantBook tenants_;
  std::vector<kvcache::KvTier> tiers_scratch_;
  absl::flat_hash_set<const RequestState*> running_requests_scratch_;  // CountQueued's
  PrefixAttacher prefix_;                                              // over *kv_

  // Shared with front-end threads.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  // Signalled when in_flight_ drops to 0.
  mutable std::condition_variable idle_cv_;
  std::vector<std::shared_ptr<RequestState>> inbox_;  // guarded by mu_
  bool stopping_ = false;                             // guarded by mu_
  // Submitted (in inbox_ or requests_) and not yet reaped.
  int in_flight_ = 0;  // guarded by mu_
  // Written under mu_; atomic so that Ready() need not lock.
  std::atomic<bool> draining_{false};
  int queued_ = 0;                        // guarded by mu_
  uint64_t next_arrival_ = 0;             // guarded by mu_
  int64_t submitted_ = 0, rejected_ = 0;  // guarded by mu_
  EngineStats stats_;                     // guarded by mu_
  // The tenant table from SetTenants, picked up by the engine thread at its
  // next step when tenants_changed_, and by id for Submit's checks.
  std::vector<TenantLimits> tenant_limits_;                       // guarded by mu_
  bool tenants_changed_ = false;                                  // guarded by mu_
  absl::flat_hash_map<std::string, TenantLimits> submit_limits_;  // guarded by mu_
  struct SubmitCounts {
    int queued = 0;   // submitted and not yet running (recounted every step)
    int running = 0;  // with a running sequence at the last step
    int64_t submitted = 0, rejected = 0;
  };
  absl::flat_hash_map<std::string, SubmitCounts> submit_counts_;  // guarded by mu_
  std::atomic<bool> ready_{false};
  std::thread thread_;
};

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineConfig& config,
                                                       model::ModelRunner* runner,
                                                       const tokenizer::Tokenizer* tokenizer,
                                                       EngineObserver* observer) {
  auto valid = ValidateEngineConfig(config);
  if (!valid.ok()) return valid.status();
  const model::ModelConfig& mc = runner->config();
  auto kv = kvcache::PagedKvCache::Create({mc.n_layers, mc.n_kv_head, mc.head_dim},
                                          valid->kv_cache_bytes, valid->block_tokens);
  if (!kv.ok()) return kv.status();
  auto compressor = kvcache::KvCompressor::Create(kv->get(), valid->kv_compressor);
  if (!compressor.ok()) return compressor.status();
  auto scheduler = MakeScheduler(valid->scheduler);
  if (!scheduler.ok()) return scheduler.status();
  return std::unique_ptr<Engine>(
      new Engine(std::make_unique<EngineImpl>(*valid, runner, tokenizer, observer, std::move(*kv),
                                              std::move(*compressor), std::move(*scheduler))));
}

Engine::Engine(std::unique_ptr<EngineImpl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() { Shutdown(); }

absl::StatusOr<std::shared_ptr<RequestHandle>> Engine::Submit(GenerationRequest request) {
  return impl_->Submit(std::move(request));
}
EngineStats Engine::Stats() const { return impl_->Stats(); }
absl::Status Engine::SetTenants(std::vector<TenantLimits> tenants) {
  return impl_->SetTenants(std::move(tenants));
}
bool Engine::Ready() const { return impl_->Ready(); }
const EngineConfig& Engine::config() const { return impl_->config(); }
void Engine::Drain() { impl_->Drain(); }
int Engine::InFlight() const { return impl_->InFlight(); }
bool Engine::WaitIdle(absl::Duration timeout) const { return impl_->WaitIdle(timeout); }
void Engine::Shutdown() { impl_->Shutdown(); }

}  // namespace kvserve::engine
