#include "server/metrics.h"

#include <map>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

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
  EXPECT_EQ(s["kvserve_model_info{model_name=\"smol\"}"], 1);
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
