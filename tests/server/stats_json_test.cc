// The /v1/stats snapshot: every documented field is present with the
// engine's value, and the derived ones (free, stored, saved, ratio) follow
// the same rules as the Prometheus gauges.
#include "server/stats_json.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kvcache/kv_tier.h"

namespace kvserve::server {
namespace {

using json = nlohmann::json;
using kvcache::KvTier;
using kvcache::TierIndex;

engine::EngineStats SampleStats() {
  engine::EngineStats s;
  s.running = 3;
  s.waiting = 2;
  s.kv_blocks_total = 100;
  s.kv_blocks_used = 40;
  s.kv_blocks_free = 60;
  s.kv_bytes_total = 1000000;
  s.kv_bytes_used = 400000;
  s.kv_tier_units[TierIndex(KvTier::kF16)] = 50;
  s.kv_tier_units[TierIndex(KvTier::kInt8)] = 20;
  s.kv_tier_units[TierIndex(KvTier::kInt4)] = 10;
  s.kv_tier_units[TierIndex(KvTier::kInt2)] = 4;
  s.kv_tier_units[TierIndex(KvTier::kEvicted)] = 6;
  s.kv_tier_bytes[TierIndex(KvTier::kF16)] = 100000;
  s.kv_tier_bytes[TierIndex(KvTier::kInt8)] = 22000;
  s.kv_tier_bytes[TierIndex(KvTier::kInt4)] = 6000;
  s.kv_tier_bytes[TierIndex(KvTier::kInt2)] = 2000;
  s.kv_bytes_uncompressed = 180000;
  s.requests_submitted = 11;
  s.requests_finished = 7;
  s.requests_rejected = 1;
  s.preemptions = 5;
  s.prompt_tokens = 1234;
  s.generation_tokens = 567;
  s.steps = 89;
  s.kv_moved_to[TierIndex(KvTier::kInt8)] = 21;
  s.kv_moved_to[TierIndex(KvTier::kInt4)] = 12;
  s.kv_moved_to[TierIndex(KvTier::kInt2)] = 4;
  s.kv_moved_to[TierIndex(KvTier::kEvicted)] = 6;
  s.kv_compress_failed = 2;
  s.kv_reclaim_rounds = 3;
  s.kv_policy_seconds = 0.25;
  return s;
}

StatsContext SampleContext() {
  StatsContext c;
  c.model_name = "smollm2";
  c.timestamp_s = 1700000000.5;
  c.uptime_s = 42.0;
  return c;  // no device: the CPU-only server's case
}

TEST(StatsJsonTest, CarriesEveryFieldOfTheSnapshot) {
  const json j = StatsJson(SampleStats(), SampleContext());
  EXPECT_EQ(j["object"], "kvserve.stats");
  EXPECT_DOUBLE_EQ(j["timestamp"].get<double>(), 1700000000.5);
  EXPECT_DOUBLE_EQ(j["uptime_seconds"].get<double>(), 42.0);
  EXPECT_EQ(j["model"], "smollm2");
  EXPECT_EQ(j["requests"], json({{"running", 3}, {"waiting", 2}}));

  const json& kv = j["kv_cache"];
  EXPECT_EQ(kv["capacity_bytes"], 1000000);
  EXPECT_EQ(kv["used_bytes"], 400000);
  EXPECT_EQ(kv["free_bytes"], 600000);
  EXPECT_EQ(kv["blocks_total"], 100);
  EXPECT_EQ(kv["blocks_used"], 40);
  EXPECT_EQ(kv["blocks_free"], 60);
  EXPECT_EQ(
      kv["bytes_by_tier"],
      json({{"f16", 100000}, {"int8", 22000}, {"int4", 6000}, {"int2", 2000}, {"evicted", 0}}));
  EXPECT_EQ(kv["units_by_tier"],
            json({{"f16", 50}, {"int8", 20}, {"int4", 10}, {"int2", 4}, {"evicted", 6}}));
  EXPECT_EQ(kv["stored_bytes"], 130000);
  EXPECT_EQ(kv["uncompressed_bytes"], 180000);
  EXPECT_EQ(kv["saved_bytes"], 50000);
  EXPECT_DOUBLE_EQ(kv["compression_ratio"].get<double>(), 130000.0 / 180000.0);

  const json& t = j["totals"];
  EXPECT_EQ(t["requests_submitted"], 11);
  EXPECT_EQ(t["requests_finished"], 7);
  EXPECT_EQ(t["requests_rejected"], 1);
  EXPECT_EQ(t["prompt_tokens"], 1234);
  EXPECT_EQ(t["generation_tokens"], 567);
  EXPECT_EQ(t["steps"], 89);
  EXPECT_EQ(t["preemptions"], 5);
  EXPECT_EQ(t["kv_blocks_quantized_by_tier"], json({{"int8", 21}, {"int4", 12}, {"int2", 4}}));
  EXPECT_EQ(t["kv_blocks_evicted"], 6);
  EXPECT_EQ(t["kv_compression_failures"], 2);
  EXPECT_EQ(t["kv_reclaim_rounds"], 3);
  EXPECT_DOUBLE_EQ(t["kv_compression_seconds"].get<double>(), 0.25);

  ASSERT_TRUE(j["tenants"].is_array());
  EXPECT_TRUE(j["tenants"].empty());
}

TEST(StatsJsonTest, ConfiguredTenantsAreListedWithTheirUse) {
  engine::EngineStats s;
  engine::TenantStats acme;
  acme.id = "acme";
  acme.running = 1;
  acme.kv_bytes = 3000;
  acme.kv_tier_bytes[kvcache::TierIndex(kvcache::KvTier::kInt4)] = 3000;
  acme.kv_bytes_uncompressed = 8000;
  acme.kv_budget_bytes = 10000;
  acme.cached_prompt_tokens = 64;
  engine::TenantStats fallback;  // the default tenant: only in the totals
  fallback.requests_finished = 3;
  s.tenants = {acme, fallback};
  json j = StatsJson(s, {});
  ASSERT_EQ(j["tenants"].size(), 1u);
  const json& t = j["tenants"][0];
  EXPECT_EQ(t["tenant"], "acme");
  EXPECT_EQ(t["running"], 1);
  EXPECT_EQ(t["kv_bytes"], 3000);
  EXPECT_EQ(t["kv_saved_bytes"], 5000);
  EXPECT_EQ(t["kv_budget_bytes"], 10000);
  EXPECT_EQ(t["kv_bytes_by_tier"]["int4"], 3000);
  EXPECT_EQ(t["cached_prompt_tokens"], 64);
}

TEST(StatsJsonTest, KeysAreExactlyTheDocumentedOnes) {
  // A new field must be added to docs/metrics.md as well as here.
  const json j = StatsJson(SampleStats(), SampleContext());
  std::vector<std::string> top, kv, totals;
  for (const auto& [k, v] : j.items()) top.push_back(k);
  for (const auto& [k, v] : j["kv_cache"].items()) kv.push_back(k);
  for (const auto& [k, v] : j["totals"].items()) totals.push_back(k);
  // nlohmann::json keeps keys sorted.
  EXPECT_EQ(top, (std::vector<std::string>{"kv_cache", "model", "object", "requests", "tenants",
                                           "timestamp", "totals", "uptime_seconds"}));
  EXPECT_EQ(kv, (std::vector<std::string>{"blocks_free", "blocks_total", "blocks_used",
                                          "bytes_by_tier", "capacity_bytes", "compression_ratio",
                                          "free_bytes", "saved_bytes", "stored_bytes",
                                          "uncompressed_bytes", "units_by_tier", "used_bytes"}));
  EXPECT_EQ(totals, (std::vector<std::string>{
                        "generation_tokens", "kv_blocks_evicted", "kv_blocks_quantized_by_tier",
                        "kv_compression_failures", "kv_compression_seconds", "kv_reclaim_rounds",
                        "preemptions", "prompt_tokens", "requests_finished", "requests_rejected",
                        "requests_submitted", "steps"}));
}

TEST(StatsJsonTest, DeviceIsReportedWhenKnown) {
  EXPECT_FALSE(StatsJson(SampleStats(), SampleContext()).contains("device"));
  StatsContext c = SampleContext();
  c.device = "cuda";
  c.device_description = "cuda:0 NVIDIA H200 (143771 MiB)";
  c.device_memory_bytes = 270u << 20;
  const json j = StatsJson(SampleStats(), c);
  EXPECT_EQ(j["device"]["name"], "cuda");
  EXPECT_EQ(j["device"]["description"], "cuda:0 NVIDIA H200 (143771 MiB)");
  EXPECT_EQ(j["device"]["memory_bytes"], 270u << 20);
}

TEST(StatsJsonTest, EmptyCacheHasRatioOneAndNothingSaved) {
  engine::EngineStats s;
  s.kv_bytes_total = 4096;
  const json j = StatsJson(s, SampleContext());
  EXPECT_EQ(j["kv_cache"]["stored_bytes"], 0);
  EXPECT_EQ(j["kv_cache"]["saved_bytes"], 0);
  EXPECT_EQ(j["kv_cache"]["free_bytes"], 4096);
  EXPECT_DOUBLE_EQ(j["kv_cache"]["compression_ratio"].get<double>(), 1.0);
}

TEST(StatsJsonTest, SavedAndFreeNeverGoNegative) {
  // Inconsistent inputs (stored above the f16 size, used above capacity)
  // still give no negative bytes for the page to plot; the ratio says what
  // happened.
  engine::EngineStats s;
  s.kv_tier_bytes[TierIndex(KvTier::kF16)] = 5000;
  s.kv_bytes_uncompressed = 4000;
  s.kv_bytes_total = 100;
  s.kv_bytes_used = 200;
  const json j = StatsJson(s, SampleContext());
  EXPECT_EQ(j["kv_cache"]["saved_bytes"], 0);
  EXPECT_EQ(j["kv_cache"]["free_bytes"], 0);
  EXPECT_DOUBLE_EQ(j["kv_cache"]["compression_ratio"].get<double>(), 1.25);
}

}  // namespace
}  // namespace kvserve::server
