#include "server/metrics.h"

#include <algorithm>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace kvserve::server {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

const char* FinishLabel(engine::FinishReason r) {
  switch (r) {
    case engine::FinishReason::kStop:
      return "stop";
    case engine::FinishReason::kLength:
      return "length";
    case engine::FinishReason::kAbort:
      return "abort";
    case engine::FinishReason::kError:
      return "error";
    default:
      return "none";
  }
}

// Sets a counter that mirrors a monotonic engine total.
void AdvanceTo(prometheus::Counter* c, double total) {
  const double delta = total - c->Value();
  if (delta > 0) c->Increment(delta);
}

std::string TierLabel(int t) { return std::string(kvcache::KvTierName(kvcache::TierFromIndex(t))); }

constexpr int kEvicted = kvcache::TierIndex(kvcache::KvTier::kEvicted);

// Stored / uncompressed bytes of a choice's KV cache: dense where the
// policies' usual targets (1/8 .. 1/2) lie.
const prometheus::Histogram::BucketBoundaries& KvRatioBuckets() {
  static const auto* const kBuckets = new prometheus::Histogram::BucketBoundaries{
      0.05, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0};
  return *kBuckets;
}

// Drops the series with exactly these labels, if there is one (`args` are
// what Add needs to make one, never used since it exists).
template <typename T, typename... Args>
void RemoveSeries(prometheus::Family<T>* family, const prometheus::Labels& labels, Args&&... args) {
  if (family->Has(labels)) family->Remove(&family->Add(labels, std::forward<Args>(args)...));
}

// Seconds, for the per-tenant latency histograms.
const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* const kBuckets = new prometheus::Histogram::BucketBoundaries{
      0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0};
  return *kBuckets;
}

}  // namespace

Metrics::Metrics(const std::string& model_name, const std::string& device)
    : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& reg = *registry_;
  BuildGauge()
      .Name("kvserve_model_info")
      .Help("Always 1; the labels name the served model and the device its matmuls run on.")
      .Register(reg)
      .Add({{"model_name", model_name}, {"device", device}})
      .Set(1);
  running_ = &BuildGauge()
                  .Name("kvserve_requests_running")
                  .Help("Sequences in the running batch.")
                  .Register(reg)
                  .Add({});
  waiting_ = &BuildGauge()
                  .Name("kvserve_requests_waiting")
                  .Help("Requests queued for scheduling, preempted ones included.")
                  .Register(reg)
                  .Add({});
  kv_capacity_bytes_ = &BuildGauge()
                            .Name("kvserve_kv_cache_capacity_bytes")
                            .Help("Size of the paged KV cache pool in bytes.")
                            .Register(reg)
                            .Add({});
  kv_used_bytes_ = &BuildGauge()
                        .Name("kvserve_kv_cache_used_bytes")
                        .Help("Bytes of the KV cache pool held by sequences.")
                        .Register(reg)
                        .Add({});
  kv_usage_ratio_ = &BuildGauge()
                         .Name("kvserve_kv_cache_usage_ratio")
                         .Help("Used over capacity of the KV cache pool, 0..1.")
                         .Register(reg)
                         .Add({});
  // One family, two kinds of series: state= counts whole blocks (all layers),
  // tier= counts (block, layer) units, since compression moves each layer of
  // a block on its own. docs/metrics.md tells users to select one kind.
  auto& blocks = BuildGauge()
                     .Name("kvserve_kv_cache_blocks")
                     .Help(
                         "KV cache blocks by state (whole blocks), or per-layer block units by "
                         "storage tier.")
                     .Register(reg);
  kv_blocks_free_ = &blocks.Add({{"state", "free"}});
  kv_blocks_used_ = &blocks.Add({{"state", "used"}});
  auto& tier_bytes =
      BuildGauge()
          .Name("kvserve_kv_cache_bytes")
          .Help("Bytes of the live KV cache by storage tier (evicted units hold none).")
          .Register(reg);
  for (int t = 0; t < kvcache::kNumKvTiers; ++t) {
    if (t != kEvicted) kv_tier_bytes_[t] = &tier_bytes.Add({{"tier", TierLabel(t)}});
    kv_tier_units_[t] = &blocks.Add({{"tier", TierLabel(t)}});
  }
  kv_uncompressed_bytes_ = &BuildGauge()
                                .Name("kvserve_kv_cache_uncompressed_bytes")
                                .Help("Bytes the live KV cache blocks would take if all were f16.")
                                .Register(reg)
                                .Add({});
  kv_saved_bytes_ = &BuildGauge()
                         .Name("kvserve_kv_cache_saved_bytes")
                         .Help("Uncompressed minus stored bytes of the live KV cache.")
                         .Register(reg)
                         .Add({});
  kv_compression_ratio_ =
      &BuildGauge()
           .Name("kvserve_kv_cache_compression_ratio")
           .Help("Stored over uncompressed bytes of the live KV cache (1 when it is empty).")
           .Register(reg)
           .Add({});

  preemptions_ = &BuildCounter()
                      .Name("kvserve_preemptions_total")
                      .Help("Sequences preempted (KV blocks freed, recomputed later).")
                      .Register(reg)
                      .Add({});
  prompt_tokens_ = &BuildCounter()
                        .Name("kvserve_prompt_tokens_total")
                        .Help("Prompt tokens of scheduled requests, counted once per request.")
                        .Register(reg)
                        .Add({});
  generation_tokens_ = &BuildCounter()
                            .Name("kvserve_generation_tokens_total")
                            .Help("Tokens sampled.")
                            .Register(reg)
                            .Add({});
  rejected_ = &BuildCounter()
                   .Name("kvserve_requests_rejected_total")
                   .Help("Requests the engine refused because its queue was full.")
                   .Register(reg)
                   .Add({});
  steps_ = &BuildCounter()
                .Name("kvserve_engine_steps_total")
                .Help("Forward passes run by the engine.")
                .Register(reg)
                .Add({});
  auto& quantized =
      BuildCounter()
          .Name("kvserve_kv_blocks_quantized_total")
          .Help("Per-layer KV block units moved into a quantized tier by compression.")
          .Register(reg);
  for (int t = 0; t < kvcache::kNumKvTiers; ++t) {
    if (kvcache::IsQuantized(kvcache::TierFromIndex(t))) {
      kv_moved_to_[t] = &quantized.Add({{"tier", TierLabel(t)}});
    }
  }
  kv_moved_to_[kEvicted] = &BuildCounter()
                                .Name("kvserve_kv_blocks_evicted_total")
                                .Help("Per-layer KV block units evicted by compression.")
                                .Register(reg)
                                .Add({});
  kv_compress_failed_ = &BuildCounter()
                             .Name("kvserve_kv_compression_failures_total")
                             .Help("KV compression moves dropped because the pool had no room.")
                             .Register(reg)
                             .Add({});
  kv_reclaim_rounds_ =
      &BuildCounter()
           .Name("kvserve_kv_reclaim_rounds_total")
           .Help("Memory-pressure rounds that compressed the KV cache instead of preempting.")
           .Register(reg)
           .Add({});
  kv_policy_seconds_ = &BuildCounter()
                            .Name("kvserve_kv_compression_seconds_total")
                            .Help("Time spent deciding and moving KV cache compression.")
                            .Register(reg)
                            .Add({});

  finished_ = &BuildCounter()
                   .Name("kvserve_requests_total")
                   .Help("Finished choices (one per choice of a request) by finish reason.")
                   .Register(reg);
  for (const char* r : {"stop", "length", "abort", "error"}) finished_->Add({{"finish_reason", r}});

  auto histogram = [&](const char* name, const char* help,
                       prometheus::Histogram::BucketBoundaries buckets) {
    return &BuildHistogram().Name(name).Help(help).Register(reg).Add({}, std::move(buckets));
  };
  ttft_ = histogram("kvserve_time_to_first_token_seconds",
                    "Time from submission to a choice's first token.",
                    {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                     5.0, 7.5, 10.0, 20.0, 40.0, 80.0});
  tpot_ = histogram("kvserve_time_per_output_token_seconds",
                    "Mean time between a choice's tokens after the first.",
                    {0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                     0.4, 0.5, 0.75, 1.0, 2.5});
  e2e_ = histogram("kvserve_e2e_request_latency_seconds",
                   "Time from submission to a choice's end (stop or length).",
                   {0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                    240.0, 480.0});
  queue_ = histogram(
      "kvserve_request_queue_time_seconds", "Time from submission to a choice's first scheduling.",
      {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0});
  const prometheus::Histogram::BucketBoundaries token_buckets = {
      1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
  request_prompt_tokens_ =
      histogram("kvserve_request_prompt_tokens", "Prompt length of finished choices, in tokens.",
                token_buckets);
  request_generation_tokens_ = histogram("kvserve_request_generation_tokens",
                                         "Tokens generated by finished choices.", token_buckets);
  step_duration_ = histogram(
      "kvserve_step_duration_seconds", "Duration of one engine step (forward pass over the batch).",
      {0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0});
  step_batch_tokens_ = histogram("kvserve_step_batch_tokens", "Tokens in one engine step's batch.",
                                 {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096});

  request_kv_ratio_ = &BuildHistogram()
                           .Name("kvserve_request_kv_compression_ratio")
                           .Help("Stored over uncompressed bytes of a finished choice's KV cache.")
                           .Register(reg);
  request_kv_saved_bytes_ =
      &BuildCounter()
           .Name("kvserve_request_kv_saved_bytes_total")
           .Help("KV cache bytes saved by compression, summed over finished choices.")
           .Register(reg);

  http_requests_ = &BuildCounter()
                        .Name("kvserve_http_requests_total")
                        .Help("HTTP requests by route, method and response status code.")
                        .Register(reg);

  auto gauge = [&](const char* name, const char* help) {
    return &BuildGauge().Name(name).Help(help).Register(reg);
  };
  auto counter = [&](const char* name, const char* help) {
    return &BuildCounter().Name(name).Help(help).Register(reg);
  };
  tenant_kv_bytes_ = gauge("kvserve_tenant_kv_bytes",
                           "KV cache bytes a tenant's running sequences hold, by tier.");
  tenant_kv_uncompressed_bytes_ =
      gauge("kvserve_tenant_kv_uncompressed_bytes",
            "Bytes the same KV blocks of a tenant would take uncompressed (f16).");
  tenant_kv_saved_bytes_ =
      gauge("kvserve_tenant_kv_saved_bytes", "Uncompressed minus stored KV bytes of a tenant.");
  tenant_kv_budget_bytes_ =
      gauge("kvserve_tenant_kv_budget_bytes", "A tenant's KV budget in bytes (0: none).");
  tenant_running_ = gauge("kvserve_tenant_requests_running", "A tenant's running sequences.");
  tenant_waiting_ = gauge("kvserve_tenant_requests_waiting", "A tenant's queued sequences.");
  tenant_requests_ = counter("kvserve_tenant_requests_total",
                             "A tenant's requests: outcome=\"finished\" or \"rejected\".");
  tenant_tokens_ = counter("kvserve_tenant_tokens_total",
                           "A tenant's tokens: kind=\"prompt\" (prefilled), \"cached\" "
                           "(prompt tokens served from the prefix cache) or \"generation\".");
  tenant_preemptions_ =
      counter("kvserve_tenant_preemptions_total", "Preemptions of a tenant's sequences.");
  tenant_budget_reclaims_ =
      counter("kvserve_tenant_kv_budget_reclaims_total",
              "Times a tenant's own sequences were compressed harder to stay in its KV budget.");
  tenant_queue_ = &BuildHistogram()
                       .Name("kvserve_tenant_request_queue_time_seconds")
                       .Help("Time from submission to first scheduling, per tenant.")
                       .Register(reg);
  tenant_ttft_ = &BuildHistogram()
                      .Name("kvserve_tenant_time_to_first_token_seconds")
                      .Help("Time from submission to the first token, per tenant.")
                      .Register(reg);
}

Metrics::~Metrics() = default;

void Metrics::OnChoiceFinished(const engine::RequestTimings& t) {
  finished_->Add({{"finish_reason", FinishLabel(t.finish)}}).Increment();
  if (!t.tenant.empty()) {
    // The engine names only tenants of its table here (bounded labels).
    const prometheus::Labels tenant = {{"tenant", t.tenant}};
    if (t.queue_s > 0) tenant_queue_->Add(tenant, LatencyBuckets()).Observe(t.queue_s);
    if (t.completion_tokens > 0 && t.ttft_s > 0) {
      tenant_ttft_->Add(tenant, LatencyBuckets()).Observe(t.ttft_s);
    }
  }
  if (t.queue_s > 0) queue_->Observe(t.queue_s);
  if (t.completion_tokens > 0 && t.ttft_s > 0) ttft_->Observe(t.ttft_s);
  if (t.completion_tokens >= 2) tpot_->Observe(t.tpot_s);
  if (t.finish == engine::FinishReason::kStop || t.finish == engine::FinishReason::kLength) {
    e2e_->Observe(t.e2e_s);
    request_prompt_tokens_->Observe(t.prompt_tokens);
    request_generation_tokens_->Observe(t.completion_tokens);
  }
  // A choice that ends before its prompt was prefilled has no cache to rate.
  if (t.kv_bytes_uncompressed > 0) {
    const prometheus::Labels policy = {{"policy", t.kv_policy}};
    // Buckets only matter when the series is created; later Adds find it.
    request_kv_ratio_->Add(policy, KvRatioBuckets())
        .Observe(static_cast<double>(t.kv_bytes) / static_cast<double>(t.kv_bytes_uncompressed));
    request_kv_saved_bytes_->Add(policy).Increment(
        static_cast<double>(std::max<int64_t>(0, t.kv_bytes_uncompressed - t.kv_bytes)));
  }
}

void Metrics::OnStep(int batch_tokens, double step_s) {
  step_duration_->Observe(step_s);
  step_batch_tokens_->Observe(batch_tokens);
}

void Metrics::RecordHttpRequest(std::string_view route, std::string_view method, int status) {
  http_requests_
      ->Add({{"route", std::string(route)},
             {"method", std::string(method)},
             {"status", std::to_string(status)}})
      .Increment();
}

std::string Metrics::Render(const engine::EngineStats& s) {
  std::lock_guard<std::mutex> lock(render_mu_);
  running_->Set(s.running);
  waiting_->Set(s.waiting);
  kv_capacity_bytes_->Set(static_cast<double>(s.kv_bytes_total));
  kv_used_bytes_->Set(static_cast<double>(s.kv_bytes_used));
  kv_usage_ratio_->Set(s.kv_bytes_total > 0 ? static_cast<double>(s.kv_bytes_used) /
                                                  static_cast<double>(s.kv_bytes_total)
                                            : 0.0);
  kv_blocks_free_->Set(s.kv_blocks_free);
  kv_blocks_used_->Set(s.kv_blocks_used);
  AdvanceTo(preemptions_, s.preemptions);
  AdvanceTo(prompt_tokens_, s.prompt_tokens);
  AdvanceTo(generation_tokens_, s.generation_tokens);
  AdvanceTo(rejected_, s.requests_rejected);
  AdvanceTo(steps_, s.steps);

  int64_t stored = 0;
  for (int t = 0; t < kvcache::kNumKvTiers; ++t) {
    stored += s.kv_tier_bytes[t];
    if (kv_tier_bytes_[t] != nullptr) {
      kv_tier_bytes_[t]->Set(static_cast<double>(s.kv_tier_bytes[t]));
    }
    kv_tier_units_[t]->Set(static_cast<double>(s.kv_tier_units[t]));
    if (kv_moved_to_[t] != nullptr) AdvanceTo(kv_moved_to_[t], s.kv_moved_to[t]);
  }
  kv_uncompressed_bytes_->Set(static_cast<double>(s.kv_bytes_uncompressed));
  kv_saved_bytes_->Set(static_cast<double>(std::max<int64_t>(0, s.kv_bytes_uncompressed - stored)));
  kv_compression_ratio_->Set(s.kv_bytes_uncompressed > 0
                                 ? static_cast<double>(stored) /
                                       static_cast<double>(s.kv_bytes_uncompressed)
                                 : 1.0);
  AdvanceTo(kv_compress_failed_, s.kv_compress_failed);
  AdvanceTo(kv_reclaim_rounds_, s.kv_reclaim_rounds);
  AdvanceTo(kv_policy_seconds_, s.kv_policy_seconds);
  RenderTenants(s);
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

void Metrics::RenderTenants(const engine::EngineStats& s) {
  std::vector<std::string> ids;
  for (const engine::TenantStats& t : s.tenants) {
    if (t.id.empty()) continue;
    ids.push_back(t.id);
    const prometheus::Labels l = {{"tenant", t.id}};
    for (int tier = 0; tier < kvcache::kNumKvTiers; ++tier) {
      if (tier == kEvicted) continue;
      tenant_kv_bytes_->Add({{"tenant", t.id}, {"tier", TierLabel(tier)}})
          .Set(static_cast<double>(t.kv_tier_bytes[tier]));
    }
    tenant_kv_uncompressed_bytes_->Add(l).Set(static_cast<double>(t.kv_bytes_uncompressed));
    tenant_kv_saved_bytes_->Add(l).Set(
        static_cast<double>(std::max<int64_t>(0, t.kv_bytes_uncompressed - t.kv_bytes)));
    tenant_kv_budget_bytes_->Add(l).Set(static_cast<double>(t.kv_budget_bytes));
    tenant_running_->Add(l).Set(t.running);
    tenant_waiting_->Add(l).Set(t.waiting);
    AdvanceTo(&tenant_requests_->Add({{"tenant", t.id}, {"outcome", "finished"}}),
              t.requests_finished);
    AdvanceTo(&tenant_requests_->Add({{"tenant", t.id}, {"outcome", "rejected"}}),
              t.requests_rejected);
    AdvanceTo(&tenant_tokens_->Add({{"tenant", t.id}, {"kind", "prompt"}}), t.prompt_tokens);
    AdvanceTo(&tenant_tokens_->Add({{"tenant", t.id}, {"kind", "cached"}}), t.cached_prompt_tokens);
    AdvanceTo(&tenant_tokens_->Add({{"tenant", t.id}, {"kind", "generation"}}),
              t.generation_tokens);
    AdvanceTo(&tenant_preemptions_->Add(l), t.preemptions);
    AdvanceTo(&tenant_budget_reclaims_->Add(l), t.budget_reclaims);
  }
  // A tenant a reload removed: its series go (its counters would restart
  // from zero if it came back, which Prometheus reads as a counter reset).
  for (const std::string& old : tenant_ids_) {
    if (std::find(ids.begin(), ids.end(), old) != ids.end()) continue;
    RemoveTenantSeries(old);
  }
  tenant_ids_ = std::move(ids);
}

void Metrics::RemoveTenantSeries(const std::string& id) {
  const prometheus::Labels l = {{"tenant", id}};
  for (int tier = 0; tier < kvcache::kNumKvTiers; ++tier) {
    RemoveSeries(tenant_kv_bytes_, {{"tenant", id}, {"tier", TierLabel(tier)}});
  }
  for (auto* f : {tenant_kv_uncompressed_bytes_, tenant_kv_saved_bytes_, tenant_kv_budget_bytes_,
                  tenant_running_, tenant_waiting_}) {
    RemoveSeries(f, l);
  }
  for (const char* outcome : {"finished", "rejected"}) {
    RemoveSeries(tenant_requests_, {{"tenant", id}, {"outcome", outcome}});
  }
  for (const char* kind : {"prompt", "cached", "generation"}) {
    RemoveSeries(tenant_tokens_, {{"tenant", id}, {"kind", kind}});
  }
  RemoveSeries(tenant_preemptions_, l);
  RemoveSeries(tenant_budget_reclaims_, l);
  RemoveSeries(tenant_queue_, l, LatencyBuckets());
  RemoveSeries(tenant_ttft_, l, LatencyBuckets());
}

}  // namespace kvserve::server
