#include "config/server_config.h"

#include <cstdio>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/temp_dir.h"

namespace kvserve::config {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// A readable stand-in for the model file, named like one.
std::string FakeModel() {
  static const std::string path = [] {
    std::string p = kvserve::testing::ProcessTempDir() + "/Tiny-Model.Q4_1.gguf";
    std::ofstream(p) << "not really a model";
    return p;
  }();
  return path;
}

ServerConfigBuilder WithModel() {
  ServerConfigBuilder b;
  EXPECT_TRUE(b.Set("model", FakeModel()).ok());
  return b;
}

TEST(ServerConfigTest, DefaultsWithAReadableModel) {
  auto c = WithModel().Build();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_name, "Tiny-Model.Q4_1");
  EXPECT_EQ(c->host, "127.0.0.1");
  EXPECT_EQ(c->port, 8080);
  EXPECT_EQ(c->grpc_port, 50051);
  EXPECT_EQ(c->threads, 0);
  EXPECT_EQ(c->log_level, "info");
  EXPECT_EQ(c->engine.kv_cache_bytes, DefaultKvCacheBytes());
  EXPECT_EQ(c->engine.max_context, 0);
  EXPECT_EQ(c->drain_timeout_s, 30);
}

TEST(ServerConfigTest, DefaultKvCacheIsAQuarterOfMemoryAtMostTwoGiB) {
  const uint64_t d = DefaultKvCacheBytes();
  EXPECT_GT(d, 0u);
  EXPECT_LE(d, 2ull << 30);
}

TEST(ServerConfigTest, FlagsSetEveryOptionInEitherSpelling) {
  ServerConfigBuilder b = WithModel();
  for (auto [name, value] : std::vector<std::pair<const char*, const char*>>{
           {"model-name", "smol"},         {"host", "0.0.0.0"},     {"port", "9000"},
           {"grpc_port", "9001"},          {"threads", "2"},        {"log_level", "debug"},
           {"kv-cache-bytes", "1GiB"},     {"max_running", "7"},    {"max-waiting", "9"},
           {"max-batch-tokens", "64"},     {"max_context", "1024"}, {"max-n", "3"},
           {"max-logprobs", "4"},          {"block-tokens", "32"},  {"scheduler", "fcfs"},
           {"kv-policy", "h2o"},           {"kv_ratio", "0.25"},    {"kv-sink-blocks", "2"},
           {"kv-recent-tokens", "128"},    {"kv-alpha", "0.75"},    {"kv-ema-decay", "0.5"},
           {"kv-observation-window", "8"}, {"kv-beta", "0.25"},     {"kv-min-ratio", "0.0625"},
           {"drain_timeout", "2.5"},       {"device", "cuda:1"}}) {
    ASSERT_TRUE(b.Set(name, value).ok()) << name;
  }
  auto c = b.Build();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_name, "smol");
  EXPECT_EQ(c->host, "0.0.0.0");
  EXPECT_EQ(c->port, 9000);
  EXPECT_EQ(c->grpc_port, 9001);
  EXPECT_EQ(c->threads, 2);
  EXPECT_EQ(c->log_level, "debug");
  EXPECT_EQ(c->engine.kv_cache_bytes, 1ull << 30);
  EXPECT_EQ(c->engine.max_running, 7);
  EXPECT_EQ(c->engine.max_waiting, 9);
  EXPECT_EQ(c->engine.max_batch_tokens, 64);
  EXPECT_EQ(c->engine.max_context, 1024);
  EXPECT_EQ(c->engine.max_n, 3);
  EXPECT_EQ(c->engine.max_logprobs, 4);
  EXPECT_EQ(c->engine.block_tokens, 32);
  EXPECT_EQ(c->engine.kv_compression.policy, "h2o");
  EXPECT_EQ(c->engine.kv_compression.ratio, 0.25);
  EXPECT_EQ(c->engine.kv_compressor.policy.sink_blocks, 2);
  EXPECT_EQ(c->engine.kv_compressor.policy.recent_tokens, 128);
  EXPECT_EQ(c->engine.kv_compressor.policy.alpha, 0.75f);
  EXPECT_EQ(c->engine.kv_compressor.ema_decay, 0.5f);
  EXPECT_EQ(c->engine.kv_compressor.observation_window, 8);
  EXPECT_EQ(c->engine.kv_compressor.beta, 0.25f);
  EXPECT_EQ(c->engine.kv_compressor.min_ratio, 0.0625);
  EXPECT_EQ(c->drain_timeout_s, 2.5);
  EXPECT_EQ(c->device, "cuda:1");
}

TEST(ServerConfigTest, EveryOptionIsListedForHelp) {
  std::vector<std::string> names;
  for (const ConfigOption& o : ServerConfigOptions()) {
    names.push_back(o.name);
    EXPECT_FALSE(o.help.empty()) << o.name;
  }
  for (const char* expected :
       {"model", "model-name", "host", "port", "grpc-port", "threads", "log-level",
        "kv-cache-bytes", "max-running", "max-waiting", "max-batch-tokens", "max-context", "max-n",
        "max-logprobs", "drain-timeout", "tenants", "device"}) {
    EXPECT_THAT(names, ::testing::Contains(expected));
  }
}

TEST(ServerConfigTest, UnknownOptionAndUnparsableValuesNameTheOption) {
  ServerConfigBuilder b;
  auto s = b.Set("max-tokens", "3");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), StartsWith("max-tokens: unknown option"));
  s = b.Set("port", "80x");
  EXPECT_THAT(std::string(s.message()), StartsWith("port: expected an integer"));
  s = b.Set("max_n", "99999999999");
  EXPECT_THAT(std::string(s.message()), StartsWith("max_n: "));
  s = b.Set("kv-cache-bytes", "lots");
  EXPECT_THAT(std::string(s.message()), StartsWith("kv_cache_bytes: "));
}

TEST(ServerConfigTest, RejectsEachBadFieldByName) {
  struct Case {
    const char* option;
    const char* value;
    const char* field;  // prefix of the error message
  } cases[] = {
      {"model", "/nonexistent/x.gguf", "model"},
      {"host", "", "host"},
      {"port", "0", "port"},
      {"port", "-1", "port"},
      {"port", "70000", "port"},
      {"grpc-port", "-1", "grpc_port"},
      {"grpc-port", "65536", "grpc_port"},
      {"grpc-port", "8080", "grpc_port"},  // same as the HTTP port
      {"threads", "-1", "threads"},
      {"threads", "5000", "threads"},
      {"log-level", "loud", "log_level"},
      {"device", "gpu", "device"},
      {"device", "cuda:x", "device"},
      {"kv-cache-bytes", "0", "kv_cache_bytes"},
      {"max-running", "0", "max_running"},
      {"max-waiting", "0", "max_waiting"},
      {"max-batch-tokens", "0", "max_batch_tokens"},
      {"max-context", "-5", "max_context"},
      {"max-n", "0", "max_n"},
      {"max-logprobs", "-1", "max_logprobs"},
      {"block-tokens", "24", "block_tokens"},
      {"scheduler", "", "scheduler"},
      {"kv-policy", "lru", "kv_policy"},
      {"kv-ratio", "0", "kv_ratio"},
      {"kv-ratio", "1.5", "kv_ratio"},
      {"kv-sink-blocks", "-1", "kv_sink_blocks"},
      {"kv-recent-tokens", "-16", "kv_recent_tokens"},
      {"kv-alpha", "2", "kv_alpha"},
      {"kv-ema-decay", "1", "kv_ema_decay"},
      {"kv-observation-window", "0", "kv_observation_window"},
      {"kv-beta", "1", "kv_beta"},
      {"kv-min-ratio", "0", "kv_min_ratio"},
      {"drain-timeout", "-1", "drain_timeout"},
      {"drain-timeout", "-0.5", "drain_timeout"},
  };
  for (const auto& tc : cases) {
    ServerConfigBuilder b = WithModel();
    ASSERT_TRUE(b.Set(tc.option, tc.value).ok()) << tc.option;
    auto r = b.Build();
    ASSERT_FALSE(r.ok()) << tc.option << "=" << tc.value;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), StartsWith(std::string(tc.field) + ":"))
        << r.status();
  }
  ServerConfigBuilder none;
  auto r = none.Build();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), StartsWith("model: a GGUF path is required"));
}

TEST(ServerConfigTest, PrefixCacheIsOffByDefaultAndTakesBooleans) {
  EXPECT_FALSE(WithModel().Build()->engine.prefix_cache);
  for (const char* on : {"true", "on", "1"}) {
    ServerConfigBuilder b = WithModel();
    ASSERT_TRUE(b.Set("prefix-cache", on).ok()) << on;
    EXPECT_TRUE(b.Build()->engine.prefix_cache) << on;
  }
  ServerConfigBuilder b = WithModel();
  ASSERT_TRUE(b.Set("prefix-cache", "true").ok());
  ASSERT_TRUE(b.Set("prefix_cache", "off").ok());
  EXPECT_FALSE(b.Build()->engine.prefix_cache);
  const absl::Status bad = WithModel().Set("prefix-cache", "maybe");
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("prefix-cache"), std::string::npos) << bad;
}

TEST(ServerConfigTest, GrpcPortZeroDisablesGrpc) {
  ServerConfigBuilder b = WithModel();
  ASSERT_TRUE(b.Set("grpc-port", "0").ok());
  auto c = b.Build();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->grpc_port, 0);
}

TEST(ServerConfigTest, EmptyModelNameFallsBackToTheFileStem) {
  ServerConfigBuilder b = WithModel();
  ASSERT_TRUE(b.Set("model_name", "").ok());
  auto c = b.Build();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_name, "Tiny-Model.Q4_1");
}

TEST(ServerConfigTest, JsonFileThenFlagsOverride) {
  const std::string path = kvserve::testing::ProcessTempDir() + "/kvserve_config_test.json";
  std::ofstream(path) << R"({"model": ")" << FakeModel() << R"(", "port": 9100,
      "kv_cache_bytes": "512MiB", "max-running": 4, "model_name": "from-file",
      "max_context": 2048.0, "kv_policy": "h2o", "kv_ratio": 0.25,
      "debug_check_invariants": true, "drain_timeout": 0, "prefix_cache": true})";
  ServerConfigBuilder b;
  ASSERT_TRUE(b.ApplyFile(path).ok());
  ASSERT_TRUE(b.Set("port", "9200").ok());  // a flag given after the file wins
  auto c = b.Build();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->port, 9200);
  EXPECT_EQ(c->engine.kv_cache_bytes, 512ull << 20);
  EXPECT_EQ(c->engine.max_running, 4);
  EXPECT_EQ(c->engine.max_context, 2048);
  EXPECT_EQ(c->model_name, "from-file");
  EXPECT_EQ(c->engine.kv_compression.policy, "h2o");
  EXPECT_EQ(c->engine.kv_compression.ratio, 0.25);
  EXPECT_TRUE(c->engine.check_invariants);
  EXPECT_TRUE(c->engine.prefix_cache);
  EXPECT_EQ(c->drain_timeout_s, 0);  // 0 is valid: abort at once
  std::remove(path.c_str());
}

TEST(ServerConfigTest, TenantsFileFromTheConfigAndTheFlagWins) {
  EXPECT_EQ(WithModel().Build()->tenants_path, "");  // single-tenant by default
  ServerConfigBuilder b = WithModel();
  ASSERT_TRUE(b.ApplyJson(R"({"tenants": "/etc/kvserve/tenants/tenants.json"})", "c.json").ok());
  auto from_file = b.Build();
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ(from_file->tenants_path, "/etc/kvserve/tenants/tenants.json");
  ASSERT_TRUE(b.Set("tenants", "other.json").ok());  // --tenants after the file wins
  EXPECT_EQ(b.Build()->tenants_path, "other.json");
}

TEST(ServerConfigTest, JsonErrorsNameTheKeyAndTheSource) {
  struct Case {
    const char* json;
    const char* message_prefix;
  } cases[] = {
      {R"({"prot": 8080})", "prot: unknown option"},
      {R"({"port": true})", "port: expected an integer"},
      {R"({"port": [1]})", "port: expected a string, a number or a boolean"},
      {R"({"port": 1.5})", "port: expected an integer"},
      {R"({"kv_ratio": {}})", "kv_ratio: expected a string, a number or a boolean"},
      {R"({"port": "x"})", "port: expected an integer"},
      {R"({"drain_timeout": "soon"})", "drain_timeout: expected a number"},
      {R"({"max_n": 2, "max-n": 3})", "max_n: set twice"},
      {R"([1, 2])", "config: cfg.json must hold a JSON object"},
      {R"({"port": )", "config: cfg.json is not valid JSON"},
      {"", "config: cfg.json is not valid JSON"},
  };
  for (const auto& tc : cases) {
    ServerConfigBuilder b;
    absl::Status s = b.ApplyJson(tc.json, "cfg.json");
    ASSERT_FALSE(s.ok()) << tc.json;
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), StartsWith(tc.message_prefix)) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("cfg.json")) << s;
  }
  ServerConfigBuilder b;
  EXPECT_THAT(std::string(b.ApplyFile("/nonexistent/cfg.json").message()),
              StartsWith("config: cannot read"));
}

TEST(ParseByteSizeTest, PlainNumbersAndUnits) {
  struct Case {
    const char* text;
    uint64_t bytes;
  } cases[] = {
      {"4096", 4096},           {"0", 0},
      {"512MiB", 512ull << 20}, {"2GiB", 2ull << 30},
      {"2gib", 2ull << 30},     {"2 GiB", 2ull << 30},
      {"2G", 2ull << 30},       {"2Gi", 2ull << 30},
      {"1.5GiB", 3ull << 29},   {"4GB", 4000000000ull},
      {"100MB", 100000000ull},  {"64k", 65536},
      {"64KiB", 65536},         {"10KB", 10000},
      {"1TiB", 1ull << 40},     {"123b", 123},
      {" 8MiB ", 8ull << 20},
  };
  for (const auto& tc : cases) {
    auto v = ParseByteSize(tc.text);
    ASSERT_TRUE(v.ok()) << tc.text << ": " << v.status();
    EXPECT_EQ(*v, tc.bytes) << tc.text;
  }
}

TEST(ParseByteSizeTest, RejectsGarbage) {
  for (const char* bad : {"", "GiB", "-1", "-1GiB", "1.2.3G", "12 parsecs", "1e9", "0x10",
                          "99999999999999999999", "99999999TiB", "."}) {
    auto v = ParseByteSize(bad);
    EXPECT_FALSE(v.ok()) << bad;
    if (!v.ok()) {
      EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

}  // namespace
}  // namespace kvserve::config
