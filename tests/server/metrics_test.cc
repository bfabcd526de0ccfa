#include "server/metrics.h"

#include <map>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvcache/kv_tier.h"

namespace kvserve::server {
namespace {

using ::testing::HasSubstr;

// "name{labels}" -> value for every sample line of a text exposition.
std::map<std::string, double> Samples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

engine::EngineStats SomeStats() {
  engine::EngineStats s;
  s.running = 3;
  s.waiting = 2;
  s.kv_blocks_total = 100;
  s.kv_blocks_free = 75;
  s.kv_blocks_used = 25;
  s.kv_bytes_total = 4000;
  s.kv_bytes_used = 1000;
  s.requests_rejected = 4;
  s.preemptions = 5;
  s.prompt_tokens = 600;
  s.generation_tokens = 70;
  s.steps = 8;
  return s;
}

TEST(MetricsTest, GaugesAndCountersComeFromEngineStats) {
  Metrics m("smol");
  const std::string text = m.Render(SomeStats());
  auto s = Samples(text);
  EXPECT_EQ(s["kvserve_requests_running"], 3);
  EXPECT_EQ(s["kvserve_requests_waiting"], 2);
  EXPECT_EQ(s["kvserve_kv_cache_capacity_bytes"], 4000);
  EXPECT_EQ(s["kvserve_kv_cache_used_bytes"], 1000);
  EXPECT_DOUBLE_EQ(s["kvserve_kv_cache_usage_ratio"], 0.25);
  EXPECT_EQ(s["kvserve_kv_cache_blocks{state=\"free\"}"], 75);
  EXPECT_EQ(s["kvserve_kv_cache_blocks{state=\"used\"}"], 25);
  EXPECT_EQ(s["kvserve_preemptions_total"], 5);
  EXPECT_EQ(s["kvserve_prompt_tokens_total"], 600);
  EXPECT_EQ(s["kvserve_generation_tokens_total"], 70);
  EXPECT_EQ(s["kvserve_requests_rejected_total"], 4);
  EXPECT_EQ(s["kvserve_engine_steps_total"], 8);
  EXPECT_EQ(s["kvserve_model_info{device=\"cpu\",model_name=\"smol\"}"], 1);
  EXPECT_THAT(text, HasSubstr("# TYPE kvserve_requests_running gauge"));
  EXPECT_THAT(text, HasSubstr("# TYPE kvserve_preemptions_total counter"));
  EXPECT_THAT(text, HasSubstr("# HELP kvserve_kv_cache_usage_ratio "));
  EXPECT_EQ(std::string(Metrics::kContentType).rfind("text/plain; version=0.0.4", 0), 0u);

  // Counters follow the engine's totals across scrapes.
  engine::EngineStats later = SomeStats();
  later.generation_tokens = 100;
  later.kv_bytes_total = 0;  // no division by zero
  s = Samples(m.Render(later));
  EXPECT_EQ(s["kvserve_generation_tokens_total"], 100);
  EXPECT_EQ(s["kvserve_kv_cache_usage_ratio"], 0);
}

TEST(MetricsTest, ObserverFeedsHistogramsAndFinishCounters) {
  Metrics m("smol");
  auto s = Samples(m.Render({}));
  // Every finish reason is exported from the start, at zero.
  for (const char* r : {"stop", "length", "abort", "error"}) {
    EXPECT_EQ(s["kvserve_requests_total{finish_reason=\"" + std::string(r) + "\"}"], 0) << r;
  }
  engine::RequestTimings t;
  t.queue_s = 0.01;
  t.ttft_s = 0.2;
  t.tpot_s = 0.03;
  t.e2e_s = 1.5;
  t.prompt_tokens = 20;
  t.completion_tokens = 44;
  t.finish = engine::FinishReason::kLength;
  m.OnChoiceFinished(t);
  engine::RequestTimings aborted;
  aborted.finish = engine::FinishReason::kAbort;
  aborted.queue_s = 0.5;
  m.OnChoiceFinished(aborted);
  m.OnStep(64, 0.004);
  s = Samples(m.Render({}));
  EXPECT_EQ(s["kvserve_requests_total{finish_reason=\"length\"}"], 1);
  EXPECT_EQ(s["kvserve_requests_total{finish_reason=\"abort\"}"], 1);
  EXPECT_EQ(s["kvserve_time_to_first_token_seconds_count"], 1);
  EXPECT_DOUBLE_EQ(s["kvserve_time_to_first_token_seconds_sum"], 0.2);
  EXPECT_EQ(s["kvserve_time_to_first_token_seconds_bucket{le=\"0.1\"}"], 0);
  EXPECT_EQ(s["kvserve_time_to_first_token_seconds_bucket{le=\"0.25\"}"], 1);
  EXPECT_EQ(s["kvserve_time_to_first_token_seconds_bucket{le=\"+Inf\"}"], 1);
  EXPECT_EQ(s["kvserve_time_per_output_token_seconds_count"], 1);
  // Only finished (stop/length) choices count towards end-to-end latency.
  EXPECT_EQ(s["kvserve_e2e_request_latency_seconds_count"], 1);
  EXPECT_EQ(s["kvserve_request_queue_time_seconds_count"], 2);
  EXPECT_EQ(s["kvserve_request_generation_tokens_sum"], 44);
  EXPECT_EQ(s["kvserve_step_duration_seconds_count"], 1);
  EXPECT_EQ(s["kvserve_step_batch_tokens_sum"], 64);
}

// A cache of 10 blocks x 4 layers = 40 units, partly compressed. Sizes per
// unit: f16 1000, int8 500, int4 250, int2 125.
engine::EngineStats CompressedStats() {
  engine::EngineStats s;
  using kvcache::KvTier;
  using kvcache::TierIndex;
  s.kv_tier_units[TierIndex(KvTier::kF16)] = 12;
  s.kv_tier_units[TierIndex(KvTier::kInt8)] = 8;
  s.kv_tier_units[TierIndex(KvTier::kInt4)] = 8;
  s.kv_tier_units[TierIndex(KvTier::kInt2)] = 4;
  s.kv_tier_units[TierIndex(KvTier::kEvicted)] = 8;
  s.kv_tier_bytes[TierIndex(KvTier::kF16)] = 12000;
  s.kv_tier_bytes[TierIndex(KvTier::kInt8)] = 4000;
  s.kv_tier_bytes[TierIndex(KvTier::kInt4)] = 2000;
  s.kv_tier_bytes[TierIndex(KvTier::kInt2)] = 500;
  s.kv_bytes_uncompressed = 40000;
  s.kv_moved_to[TierIndex(KvTier::kInt8)] = 16;  // 8 of them moved on to int4
  s.kv_moved_to[TierIndex(KvTier::kInt4)] = 8;
  s.kv_moved_to[TierIndex(KvTier::kInt2)] = 4;
  s.kv_moved_to[TierIndex(KvTier::kEvicted)] = 8;
  s.kv_compress_failed = 3;
  s.kv_reclaim_rounds = 2;
  s.kv_policy_seconds = 0.25;
  return s;
}

TEST(MetricsTest, KvCompressionGaugesAndCountersComeFromEngineStats) {
  Metrics m("smol");
  auto s = Samples(m.Render({}));
  // Before anything is cached: every tier series exists at 0, ratio 1.
  for (const char* t : {"f16", "int8", "int4", "int2"}) {
    EXPECT_EQ(s.count("kvserve_kv_cache_bytes{tier=\"" + std::string(t) + "\"}"), 1u) << t;
  }
  EXPECT_EQ(s.count("kvserve_kv_cache_blocks{tier=\"evicted\"}"), 1u);
  EXPECT_EQ(s["kvserve_kv_cache_compression_ratio"], 1);
  EXPECT_EQ(s["kvserve_kv_cache_saved_bytes"], 0);
  EXPECT_EQ(s["kvserve_kv_blocks_quantized_total{tier=\"int4\"}"], 0);

  const std::string text = m.Render(CompressedStats());
  s = Samples(text);
  EXPECT_EQ(s["kvserve_kv_cache_bytes{tier=\"f16\"}"], 12000);
  EXPECT_EQ(s["kvserve_kv_cache_bytes{tier=\"int8\"}"], 4000);
  EXPECT_EQ(s["kvserve_kv_cache_bytes{tier=\"int4\"}"], 2000);
  EXPECT_EQ(s["kvserve_kv_cache_bytes{tier=\"int2\"}"], 500);
  // Evicted units hold no bytes, so there is no such bytes series.
  EXPECT_EQ(s.count("kvserve_kv_cache_bytes{tier=\"evicted\"}"), 0u);
  EXPECT_EQ(s["kvserve_kv_cache_blocks{tier=\"f16\"}"], 12);
  EXPECT_EQ(s["kvserve_kv_cache_blocks{tier=\"int8\"}"], 8);
  EXPECT_EQ(s["kvserve_kv_cache_blocks{tier=\"int4\"}"], 8);
  EXPECT_EQ(s["kvserve_kv_cache_blocks{tier=\"int2\"}"], 4);
  EXPECT_EQ(s["kvserve_kv_cache_blocks{tier=\"evicted\"}"], 8);
  EXPECT_EQ(s["kvserve_kv_cache_uncompressed_bytes"], 40000);
  EXPECT_EQ(s["kvserve_kv_cache_saved_bytes"], 40000 - 18500);
  EXPECT_DOUBLE_EQ(s["kvserve_kv_cache_compression_ratio"], 18500.0 / 40000);
  EXPECT_EQ(s["kvserve_kv_blocks_quantized_total{tier=\"int8\"}"], 16);
  EXPECT_EQ(s["kvserve_kv_blocks_quantized_total{tier=\"int4\"}"], 8);
  EXPECT_EQ(s["kvserve_kv_blocks_quantized_total{tier=\"int2\"}"], 4);
  // Nothing is ever moved into f16, so it has no quantized series.
  EXPECT_EQ(s.count("kvserve_kv_blocks_quantized_total{tier=\"f16\"}"), 0u);
  EXPECT_EQ(s["kvserve_kv_blocks_evicted_total"], 8);
  EXPECT_EQ(s["kvserve_kv_compression_failures_total"], 3);
  EXPECT_EQ(s["kvserve_kv_reclaim_rounds_total"], 2);
  EXPECT_DOUBLE_EQ(s["kvserve_kv_compression_seconds_total"], 0.25);
  // The block-state series of the same family are untouched by the tiers.
  EXPECT_EQ(s["kvserve_kv_cache_blocks{state=\"used\"}"], 0);
  EXPECT_THAT(text, HasSubstr("# TYPE kvserve_kv_cache_bytes gauge"));
  EXPECT_THAT(text, HasSubstr("# TYPE kvserve_kv_blocks_quantized_total counter"));
  EXPECT_THAT(text, HasSubstr("# TYPE kvserve_kv_compression_seconds_total counter"));

  // Counters follow the engine's totals; gauges follow the cache, and the
  // saved bytes never go negative even if the engine reported more stored
  // than uncompressed bytes.
  engine::EngineStats later = CompressedStats();
  later.kv_moved_to[kvcache::TierIndex(kvcache::KvTier::kInt2)] = 10;
  later.kv_policy_seconds = 0.75;
  later.kv_bytes_uncompressed = 10000;
  s = Samples(m.Render(later));
  EXPECT_EQ(s["kvserve_kv_blocks_quantized_total{tier=\"int2\"}"], 10);
  EXPECT_DOUBLE_EQ(s["kvserve_kv_compression_seconds_total"], 0.75);
  EXPECT_EQ(s["kvserve_kv_cache_saved_bytes"], 0);
  EXPECT_DOUBLE_EQ(s["kvserve_kv_cache_compression_ratio"], 1.85);
}

TEST(MetricsTest, FinishedChoicesFeedPerPolicyCompression) {
  Metrics m("smol");
  auto s = Samples(m.Render({}));
  // Series appear with the first choice of a policy.
  EXPECT_EQ(s.count("kvserve_request_kv_compression_ratio_count{policy=\"h2o\"}"), 0u);

  engine::RequestTimings h2o;
  h2o.finish = engine::FinishReason::kStop;
  h2o.kv_policy = "h2o";
  h2o.kv_bytes = 3000;
  h2o.kv_bytes_uncompressed = 12000;
  m.OnChoiceFinished(h2o);
  engine::RequestTimings quant = h2o;
  quant.kv_policy = "quant-uniform";
  quant.kv_bytes = 6000;
  m.OnChoiceFinished(quant);
  engine::RequestTimings h2o_again = h2o;
  h2o_again.kv_bytes = 12000;  // nothing compressed: ratio 1, nothing saved
  m.OnChoiceFinished(h2o_again);
  // A choice aborted before prefill has no cache and is not observed.
  engine::RequestTimings empty;
  empty.finish = engine::FinishReason::kAbort;
  empty.kv_policy = "snapkv";
  m.OnChoiceFinished(empty);

  s = Samples(m.Render({}));
  const std::string h = "kvserve_request_kv_compression_ratio";
  EXPECT_EQ(s[h + "_count{policy=\"h2o\"}"], 2);
  EXPECT_DOUBLE_EQ(s[h + "_sum{policy=\"h2o\"}"], 1.25);
  EXPECT_EQ(s[h + "_bucket{policy=\"h2o\",le=\"0.2\"}"], 0);
  EXPECT_EQ(s[h + "_bucket{policy=\"h2o\",le=\"0.25\"}"], 1);
  EXPECT_EQ(s[h + "_bucket{policy=\"h2o\",le=\"0.9\"}"], 1);
  EXPECT_EQ(s[h + "_bucket{policy=\"h2o\",le=\"1\"}"], 2);
  EXPECT_EQ(s[h + "_count{policy=\"quant-uniform\"}"], 1);
  EXPECT_EQ(s[h + "_bucket{policy=\"quant-uniform\",le=\"0.4\"}"], 0);
  EXPECT_EQ(s[h + "_bucket{policy=\"quant-uniform\",le=\"0.5\"}"], 1);
  EXPECT_EQ(s.count(h + "_count{policy=\"snapkv\"}"), 0u);
  EXPECT_EQ(s["kvserve_request_kv_saved_bytes_total{policy=\"h2o\"}"], 9000);
  EXPECT_EQ(s["kvserve_request_kv_saved_bytes_total{policy=\"quant-uniform\"}"], 6000);
  EXPECT_EQ(s.count("kvserve_request_kv_saved_bytes_total{policy=\"snapkv\"}"), 0u);
}

TEST(MetricsTest, HttpRequestsByRouteMethodAndStatus) {
  Metrics m("smol");
  m.RecordHttpRequest("/v1/completions", "POST", 200);
  m.RecordHttpRequest("/v1/completions", "POST", 200);
  m.RecordHttpRequest("/v1/completions", "POST", 429);
  m.RecordHttpRequest("other", "GET", 404);
  auto s = Samples(m.Render({}));
  EXPECT_EQ(
      s["kvserve_http_requests_total{method=\"POST\",route=\"/v1/completions\",status=\"200\"}"],
      2);
  EXPECT_EQ(
      s["kvserve_http_requests_total{method=\"POST\",route=\"/v1/completions\",status=\"429\"}"],
      1);
  EXPECT_EQ(s["kvserve_http_requests_total{method=\"GET\",route=\"other\",status=\"404\"}"], 1);
}

}  // namespace
}  // namespace kvserve::server

namespace kvserve::server {
namespace {

TEST(MetricsTenantTest, ConfiguredTenantsGetLabelledSeriesAndRemovedOnesGo) {
  Metrics m("smol");
  engine::EngineStats s;
  engine::TenantStats acme;
  acme.id = "acme";
  acme.running = 2;
  acme.waiting = 1;
  acme.kv_tier_bytes[kvcache::TierIndex(kvcache::KvTier::kF16)] = 4000;
  acme.kv_tier_bytes[kvcache::TierIndex(kvcache::KvTier::kInt4)] = 1000;
  acme.kv_bytes = 5000;
  acme.kv_bytes_uncompressed = 12000;
  acme.kv_budget_bytes = 65536;
  acme.requests_finished = 3;
  acme.requests_rejected = 1;
  acme.prompt_tokens = 900;
  acme.cached_prompt_tokens = 640;
  acme.generation_tokens = 30;
  acme.preemptions = 2;
  engine::TenantStats beta;
  beta.id = "beta";
  engine::TenantStats fallback;  // the default tenant: never labelled
  fallback.requests_finished = 7;
  s.tenants = {acme, beta, fallback};

  engine::RequestTimings t;
  t.tenant = "acme";
  t.finish = engine::FinishReason::kStop;
  t.queue_s = 0.2;
  t.ttft_s = 0.3;
  t.completion_tokens = 4;
  m.OnChoiceFinished(t);

  auto x = Samples(m.Render(s));
  EXPECT_EQ(x["kvserve_tenant_kv_bytes{tenant=\"acme\",tier=\"f16\"}"], 4000);
  EXPECT_EQ(x["kvserve_tenant_kv_bytes{tenant=\"acme\",tier=\"int4\"}"], 1000);
  EXPECT_EQ(x.count("kvserve_tenant_kv_bytes{tenant=\"acme\",tier=\"evicted\"}"), 0u);
  EXPECT_EQ(x["kvserve_tenant_kv_saved_bytes{tenant=\"acme\"}"], 7000);
  EXPECT_EQ(x["kvserve_tenant_kv_budget_bytes{tenant=\"acme\"}"], 65536);
  EXPECT_EQ(x["kvserve_tenant_requests_running{tenant=\"acme\"}"], 2);
  EXPECT_EQ(x["kvserve_tenant_requests_waiting{tenant=\"acme\"}"], 1);
  EXPECT_EQ(x["kvserve_tenant_requests_total{outcome=\"rejected\",tenant=\"acme\"}"], 1);
  EXPECT_EQ(x["kvserve_tenant_requests_total{outcome=\"finished\",tenant=\"acme\"}"], 3);
  EXPECT_EQ(x["kvserve_tenant_tokens_total{kind=\"cached\",tenant=\"acme\"}"], 640);
  EXPECT_EQ(x["kvserve_tenant_preemptions_total{tenant=\"acme\"}"], 2);
  EXPECT_EQ(x["kvserve_tenant_request_queue_time_seconds_count{tenant=\"acme\"}"], 1);
  EXPECT_EQ(x["kvserve_tenant_time_to_first_token_seconds_count{tenant=\"acme\"}"], 1);
  EXPECT_EQ(x["kvserve_tenant_requests_running{tenant=\"beta\"}"], 0);
  for (const auto& [name, value] : x) {
    EXPECT_EQ(name.find("tenant=\"\""), std::string::npos) << name;
  }

  // Counters only move forward; a reload that drops beta drops its series.
  acme.requests_finished = 5;
  s.tenants = {acme};
  x = Samples(m.Render(s));
  EXPECT_EQ(x["kvserve_tenant_requests_total{outcome=\"finished\",tenant=\"acme\"}"], 5);
  for (const auto& [name, value] : x) {
    EXPECT_EQ(name.find("beta"), std::string::npos) << name;
  }
}

}  // namespace
}  // namespace kvserve::server
