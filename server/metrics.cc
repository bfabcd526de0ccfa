#include "server/metrics.h"

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
void AdvanceTo(prometheus::Counter* c, int64_t total) {
  const double delta = static_cast<double>(total) - c->Value();
  if (delta > 0) c->Increment(delta);
}

}  // namespace

Metrics::Metrics(const std::string& model_name)
    : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& reg = *registry_;
  BuildGauge()
      .Name("kvserve_model_info")
      .Help("Always 1; the label names the served model.")
      .Register(reg)
      .Add({{"model_name", model_name}})
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
  auto& blocks =
      BuildGauge().Name("kvserve_kv_cache_blocks").Help("KV cache blocks by state.").Register(reg);
  kv_blocks_free_ = &blocks.Add({{"state", "free"}});
  kv_blocks_used_ = &blocks.Add({{"state", "used"}});

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

  http_requests_ = &BuildCounter()
                        .Name("kvserve_http_requests_total")
                        .Help("HTTP requests by route, method and response status code.")
                        .Register(reg);
}

Metrics::~Metrics() = default;

void Metrics::OnChoiceFinished(const engine::RequestTimings& t) {
  finished_->Add({{"finish_reason", FinishLabel(t.finish)}}).Increment();
  if (t.queue_s > 0) queue_->Observe(t.queue_s);
  if (t.completion_tokens > 0 && t.ttft_s > 0) ttft_->Observe(t.ttft_s);
  if (t.completion_tokens >= 2) tpot_->Observe(t.tpot_s);
  if (t.finish == engine::FinishReason::kStop || t.finish == engine::FinishReason::kLength) {
    e2e_->Observe(t.e2e_s);
    request_prompt_tokens_->Observe(t.prompt_tokens);
    request_generation_tokens_->Observe(t.completion_tokens);
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
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace kvserve::server
