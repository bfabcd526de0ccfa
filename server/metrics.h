// Prometheus metrics of the server (docs/metrics.md lists every one).
//
// Three sources feed them:
//   * Engine::Stats() at scrape time: gauges (running, waiting, KV cache and
//     its compression tiers) and the engine's cumulative counters
//     (preemptions, tokens, rejected, KV compression moves).
//   * EngineObserver callbacks on the engine thread: per-choice latency
//     histograms and finish-reason counters, per-policy KV compression of
//     finished choices, per-step duration.
//   * The HTTP front end: requests by route and status code.
// Everything lives in one prometheus-cpp registry rendered in the text
// exposition format 0.0.4 by Render(), which the HTTP server serves at
// /metrics (no separate exposer port).
//
// Thread-safety: all methods may be called concurrently (prometheus-cpp
// metrics are thread-safe; Render serialises itself with a mutex).
#pragma once

#include <array>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "engine/serving/engine_stats.h"
#include "kvcache/kv_tier.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace kvserve::server {

class Metrics : public engine::EngineObserver {
 public:
  // `model_name` and `device` (where the weight matmuls run: "cpu", "cuda")
  // label kvserve_model_info.
  explicit Metrics(const std::string& model_name, const std::string& device = "cpu");
  ~Metrics() override;

  // EngineObserver; called on the engine thread.
  void OnChoiceFinished(const engine::RequestTimings& timings) override;
  void OnStep(int batch_tokens, double step_s) override;

  // Counts one HTTP request. `route` must come from a fixed set (the
  // server's routes or "other") so that label values stay bounded.
  void RecordHttpRequest(std::string_view route, std::string_view method, int status);

  // Refreshes the gauges and engine counters from `stats` and returns the
  // whole registry in the Prometheus text format.
  std::string Render(const engine::EngineStats& stats);

  static constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

 private:
  std::shared_ptr<prometheus::Registry> registry_;

  // Gauges from Stats().
  prometheus::Gauge* running_;
  prometheus::Gauge* waiting_;
  prometheus::Gauge* kv_capacity_bytes_;
  prometheus::Gauge* kv_used_bytes_;
  prometheus::Gauge* kv_usage_ratio_;
  prometheus::Gauge* kv_blocks_free_;
  prometheus::Gauge* kv_blocks_used_;
  // KV compression, indexed by kvcache::TierIndex. kv_tier_bytes_[kEvicted]
  // is null: evicted units hold no bytes, so that series is not exported.
  std::array<prometheus::Gauge*, kvcache::kNumKvTiers> kv_tier_bytes_{};
  std::array<prometheus::Gauge*, kvcache::kNumKvTiers> kv_tier_units_{};
  prometheus::Gauge* kv_uncompressed_bytes_;
  prometheus::Gauge* kv_saved_bytes_;
  prometheus::Gauge* kv_compression_ratio_;
  // Counters mirrored from Stats(): advanced by the difference at scrape.
  prometheus::Counter* preemptions_;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generation_tokens_;
  prometheus::Counter* rejected_;
  prometheus::Counter* steps_;
  // [kInt8..kInt2]: kvserve_kv_blocks_quantized_total{tier}; [kEvicted]:
  // kvserve_kv_blocks_evicted_total; [kF16] is null (nothing moves up).
  std::array<prometheus::Counter*, kvcache::kNumKvTiers> kv_moved_to_{};
  prometheus::Counter* kv_compress_failed_;
  prometheus::Counter* kv_reclaim_rounds_;
  prometheus::Counter* kv_policy_seconds_;
  // From the observer.
  prometheus::Family<prometheus::Counter>* finished_;
  prometheus::Histogram* ttft_;
  prometheus::Histogram* tpot_;
  prometheus::Histogram* e2e_;
  prometheus::Histogram* queue_;
  prometheus::Histogram* request_prompt_tokens_;
  prometheus::Histogram* request_generation_tokens_;
  prometheus::Histogram* step_duration_;
  prometheus::Histogram* step_batch_tokens_;
  // Labelled by the choice's compression policy; series appear with the
  // first choice of each policy (the engine admits only the known names).
  prometheus::Family<prometheus::Histogram>* request_kv_ratio_;
  prometheus::Family<prometheus::Counter>* request_kv_saved_bytes_;
  // From the HTTP server.
  prometheus::Family<prometheus::Counter>* http_requests_;

  // Per tenant, labelled tenant="<id>": only tenants of the current table
  // (EngineStats::tenants, the default tenant left out), so the label's
  // values are bounded by the tenants file and never carry a key or a
  // prompt. Series of a tenant that a reload removed are dropped.
  void RenderTenants(const engine::EngineStats& s);
  void RemoveTenantSeries(const std::string& id);
  prometheus::Family<prometheus::Gauge>* tenant_kv_bytes_;  // {tenant, tier}
  prometheus::Family<prometheus::Gauge>* tenant_kv_uncompressed_bytes_;
  prometheus::Family<prometheus::Gauge>* tenant_kv_saved_bytes_;
  prometheus::Family<prometheus::Gauge>* tenant_kv_budget_bytes_;
  prometheus::Family<prometheus::Gauge>* tenant_running_;
  prometheus::Family<prometheus::Gauge>* tenant_waiting_;
  prometheus::Family<prometheus::Counter>* tenant_requests_;  // {tenant, outcome}
  prometheus::Family<prometheus::Counter>* tenant_tokens_;    // {tenant, kind}
  prometheus::Family<prometheus::Counter>* tenant_preemptions_;
  prometheus::Family<prometheus::Counter>* tenant_budget_reclaims_;
  prometheus::Family<prometheus::Histogram>* tenant_queue_;  // from the observer
  prometheus::Family<prometheus::Histogram>* tenant_ttft_;
  std::vector<std::string> tenant_ids_;  // rendered last time; guarded by render_mu_

  std::mutex render_mu_;  // one scrape at a time, so the counter deltas add up
};

}  // namespace kvserve::server
