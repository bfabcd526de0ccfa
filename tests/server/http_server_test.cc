// The HTTP front end in process, over real sockets, on a tiny random model:
// routes, error statuses and bodies, streaming, metrics, and requests whose
// client goes away being cancelled (their KV blocks come back).
#include "server/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "engine/model/llama_model.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "server/tenant_registry.h"
#include "tests/engine/model/tiny_serving_model.h"
#include "tests/support/temp_dir.h"

namespace kvserve::server {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

constexpr int kContext = 2048;

class HttpServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tiny = testing::LoadTinyServingModel("http_server_tiny", kContext);
    ASSERT_TRUE(tiny.ok()) << tiny.status();
    model_ = tiny->model.release();
    tokenizer_ = tiny->tokenizer.release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete model_;
  }

  void Start(engine::EngineConfig c = {}) {
    c.kv_cache_bytes = 64ull << 20;
    c.max_context = kContext;
    metrics_ = std::make_unique<Metrics>("tiny");
    auto e = engine::Engine::Create(c, model_, tokenizer_, metrics_.get());
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    if (!tenants_json_.empty()) {
      const std::string path =
          kvserve::testing::ProcessTempDir() + "/http_server_test_tenants.json";
      std::ofstream(path, std::ios::trunc) << tenants_json_;
      auto t = TenantRegistry::Load(path, engine_.get());
      ASSERT_TRUE(t.ok()) << t.status();
      tenants_ = std::move(*t);
    }
    HttpServerOptions o;
    o.tenants = tenants_.get();
    o.port = 0;
    o.model_name = "tiny";
    o.max_context = kContext;
    o.chart_js_path = chart_js_path_;
    auto s = HttpServer::Start(o, engine_.get(), tokenizer_, metrics_.get());
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    ASSERT_GT(server_->port(), 0);
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client_->set_read_timeout(60, 0);
    // The engine thread reports ready after its first idle turn.
    for (int i = 0; i < 1000 && !engine_->Ready(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  void TearDown() override {
    client_.reset();
    if (server_ != nullptr) server_->Stop();
    if (engine_ != nullptr) engine_->Shutdown();
    server_.reset();
    engine_.reset();
    tenants_.reset();
  }

  httplib::Result Post(const std::string& path, const json& body) {
    return client_->Post(path.c_str(), body.dump(), "application/json");
  }

  // Waits (bounded) until the engine holds no sequence and no KV block.
  bool EngineDrains() {
    for (int i = 0; i < 2000; ++i) {
      engine::EngineStats s = engine_->Stats();
      if (s.running == 0 && s.waiting == 0 && s.kv_blocks_used == 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

  static json ErrorOf(const httplib::Result& r) {
    json body = json::parse(r->body);
    EXPECT_TRUE(body.contains("error")) << r->body;
    const json& e = body["error"];
    EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty());
    EXPECT_TRUE(e["type"].is_string());
    EXPECT_TRUE(e.contains("param") && e.contains("code"));
    EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
    return e;
  }

  static model::LlamaModel* model_;
  static tokenizer::Tokenizer* tokenizer_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<httplib::Client> client_;
  std::string chart_js_path_;  // HttpServerOptions::chart_js_path for Start()
  std::string tenants_json_;   // a tenants file for Start(); empty = single-tenant
  std::unique_ptr<TenantRegistry> tenants_;
};

model::LlamaModel* HttpServerTest::model_ = nullptr;
tokenizer::Tokenizer* HttpServerTest::tokenizer_ = nullptr;

// A long generation that only ends when cancelled (or after max_tokens).
json LongRequest(bool stream) {
  return {{"prompt", {10, 11, 12, 13}},
          {"max_tokens", 2000},
          {"ignore_eos", true},
          {"temperature", 0},
          {"stream", stream}};
}

TEST_F(HttpServerTest, ProbesAndModels) {
  Start();
  auto r = client_->Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body), json({{"status", "ok"}}));
  r = client_->Get("/ready");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = client_->Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  json models = json::parse(r->body);
  EXPECT_EQ(models["object"], "list");
  ASSERT_EQ(models["data"].size(), 1u);
  EXPECT_EQ(models["data"][0]["id"], "tiny");
  EXPECT_EQ(models["data"][0]["object"], "model");
  EXPECT_EQ(models["data"][0]["owned_by"], "kvserve");
  EXPECT_TRUE(models["data"][0]["created"].is_number_integer());
  r = client_->Get("/v1/models/tiny");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["id"], "tiny");
  r = client_->Get("/v1/models/other");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(ErrorOf(r)["code"], "model_not_found");
}

TEST_F(HttpServerTest, UnknownRoutesAre404AndWrongMethods405AsJson) {
  Start();
  auto r = client_->Get("/v2/nothing");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_THAT(ErrorOf(r)["message"].get<std::string>(), HasSubstr("/v2/nothing"));
  r = client_->Get("/v1/completions");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->get_header_value("Allow"), "POST");
  ErrorOf(r);
  r = client_->Post("/health", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->get_header_value("Allow"), "GET");
  r = client_->Delete("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  r = client_->Options("/v1/chat/completions");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 204);
  EXPECT_EQ(r->get_header_value("Access-Control-Allow-Origin"), "*");
}

std::string KeyHash(std::string_view key) { return config::FormatKeyHash(config::HashApiKey(key)); }

// One request of each route, as a client would send it.
struct RouteCall {
  const char* method;
  const char* path;
  json body;  // POST only
};
const std::vector<RouteCall>& EveryRoute() {
  static const std::vector<RouteCall> routes = {
      {"GET", "/ready", nullptr},
      {"GET", "/v1/models", nullptr},
      {"GET", "/v1/models/tiny", nullptr},
      {"POST", "/v1/completions", json{{"prompt", {10, 11}}, {"max_tokens", 2}}},
      {"POST", "/v1/chat/completions",
       json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 2}}},
      {"GET", "/metrics", nullptr},
      {"GET", "/v1/stats", nullptr},
      {"GET", "/dashboard", nullptr},
      {"GET", "/dashboard/chart.js", nullptr},
  };
  return routes;
}

TEST_F(HttpServerTest, WithTenantsEveryRouteButHealthNeedsAKey) {
  tenants_json_ = R"({"tenants": [{"id": "acme", "api_keys": [")" + KeyHash("key-a") +
                  R"("]}, {"id": "beta", "api_keys": [")" + KeyHash("key-b") + R"("]}]})";
  Start();
  auto call = [&](const RouteCall& route, const httplib::Headers& headers) {
    return std::string(route.method) == "GET"
               ? client_->Get(route.path, headers)
               : client_->Post(route.path, headers, route.body.dump(), "application/json");
  };
  for (const RouteCall& route : EveryRoute()) {
    for (const httplib::Headers& bad : std::vector<httplib::Headers>{
             {},
             {{"Authorization", "Bearer wrong"}},
             {{"Authorization", "key-a"}},
             {{"Authorization", "Bearer key-a"}, {"Authorization", "Bearer key-b"}}}) {
      auto r = call(route, bad);
      ASSERT_TRUE(r) << route.path;
      EXPECT_EQ(r->status, 401) << route.path;
      const json e = ErrorOf(r);
      EXPECT_EQ(e["type"], "invalid_request_error") << route.path;
      EXPECT_EQ(e["code"], "invalid_api_key") << route.path;
      EXPECT_EQ(r->get_header_value("WWW-Authenticate"), "Bearer realm=\"kvserve\"");
      // Only the browser pages offer Basic, which makes browsers ask.
      EXPECT_EQ(r->get_header_value_count("WWW-Authenticate"),
                absl::StartsWith(route.path, "/dashboard") ? 2u : 1u)
          << route.path;
    }
    for (const char* key : {"key-a", "key-b"}) {
      auto r = call(route, {{"Authorization", std::string("Bearer ") + key}});
      ASSERT_TRUE(r) << route.path;
      // chart.js is 404 here (no Chart.js file), the chat route 400 if the
      // tiny model has no usable template: past authentication either way.
      EXPECT_NE(r->status, 401) << route.path << " " << r->body;
      if (route.path != std::string("/dashboard/chart.js") &&
          route.path != std::string("/v1/chat/completions")) {
        EXPECT_EQ(r->status, 200) << route.path << " " << r->body;
      }
    }
  }
  // The probe that must work without a key, and CORS preflights, which
  // browsers send without credentials.
  auto health = client_->Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  auto preflight = client_->Options("/v1/completions");
  ASSERT_TRUE(preflight);
  EXPECT_EQ(preflight->status, 204);
  auto basic = client_->Get("/v1/models", {{"Authorization", "Basic OmtleS1h"}});  // ":key-a"
  ASSERT_TRUE(basic);
  EXPECT_EQ(basic->status, 200);
}

// A refused POST must consume its body: on a kept-alive connection the
// body would otherwise be read as the next request.
TEST_F(HttpServerTest, ARefusedPostLeavesTheConnectionUsable) {
  tenants_json_ = R"({"tenants": [{"id": "acme", "api_keys": [")" + KeyHash("key-a") + R"("]}]})";
  Start();
  client_->set_keep_alive(true);
  const std::string body = json{{"prompt", {10, 11}}, {"max_tokens", 2}}.dump();
  for (int i = 0; i < 3; ++i) {
    auto refused = client_->Post("/v1/completions", {{"Authorization", "Bearer wrong"}}, body,
                                 "application/json");
    ASSERT_TRUE(refused);
    EXPECT_EQ(refused->status, 401);
    auto next = client_->Get("/v1/models", {{"Authorization", "Bearer key-a"}});
    ASSERT_TRUE(next);
    EXPECT_EQ(next->status, 200) << next->body;
  }
}

TEST_F(HttpServerTest, ARequestIsChargedToTheTenantOfItsKey) {
  tenants_json_ = R"({"tenants": [{"id": "acme", "api_keys": [")" + KeyHash("key-a") +
                  R"("]}, {"id": "beta", "api_keys": [")" + KeyHash("key-b") + R"("]}]})";
  Start();
  auto r = client_->Post("/v1/completions", {{"Authorization", "Bearer key-b"}},
                         json{{"prompt", {10, 11}}, {"max_tokens", 2}}.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  auto submitted = [&](const std::string& id) {
    for (const engine::TenantStats& t : engine_->Stats().tenants) {
      if (t.id == id) return t.requests_submitted;
    }
    return int64_t{-1};
  };
  for (int i = 0; i < 1000 && submitted("beta") != 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(submitted("beta"), 1);
  EXPECT_EQ(submitted("acme"), 0);
  EXPECT_EQ(submitted(""), -1);  // nothing fell to the default tenant
}

// Many clients connecting at the same moment are all served (cpp-httplib's
// own listen backlog of 5 would reset some of them).
TEST_F(HttpServerTest, BurstOfConnectionsIsServed) {
  Start();
  constexpr int kClients = 128;
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  std::atomic<bool> go{false};
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&] {
      httplib::Client c("127.0.0.1", server_->port());
      c.set_connection_timeout(30, 0);
      c.set_read_timeout(30, 0);
      while (!go.load()) std::this_thread::yield();
      auto r = c.Get("/health");
      if (r && r->status == 200) ++ok;
    });
  }
  go = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kClients);
}

TEST_F(HttpServerTest, CompletionFromTokensAndText) {
  Start();
  auto r = Post("/v1/completions", {{"model", "tiny"},
                                    {"prompt", {10, 11, 12}},
                                    {"max_tokens", 6},
                                    {"temperature", 0},
                                    {"ignore_eos", true},
                                    {"n", 2},
                                    {"logprobs", 2}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_THAT(r->get_header_value("X-Request-Id"), ::testing::StartsWith("cmpl-"));
  json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_EQ(j["id"], r->get_header_value("X-Request-Id"));
  ASSERT_EQ(j["choices"].size(), 2u);
  for (int i = 0; i < 2; ++i) {
    const json& c = j["choices"][i];
    EXPECT_EQ(c["index"], i);
    EXPECT_EQ(c["finish_reason"], "length");
    EXPECT_EQ(c["logprobs"]["tokens"].size(), 6u);
  }
  // Greedy: both choices agree.
  EXPECT_EQ(j["choices"][0]["text"], j["choices"][1]["text"]);
  EXPECT_EQ(j["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(j["usage"]["completion_tokens"], 12);
  EXPECT_EQ(j["usage"]["total_tokens"], 15);
  // Uncompressed by default: both choices' blocks, as stored.
  EXPECT_GT(j["usage"]["kv_bytes"].get<int64_t>(), 0);
  EXPECT_EQ(j["usage"]["kv_bytes"], j["usage"]["kv_bytes_uncompressed"]);
  EXPECT_EQ(j["usage"]["kv_compression_ratio"], 1.0);

  // The tiny vocabulary has single-character tokens for 'A'..'Z'.
  r = Post("/v1/completions",
           {{"prompt", "ABC"}, {"max_tokens", 3}, {"ignore_eos", true}, {"echo", true}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  j = json::parse(r->body);
  EXPECT_EQ(j["usage"]["prompt_tokens"], 3);
  EXPECT_THAT(j["choices"][0]["text"].get<std::string>(), ::testing::StartsWith("ABC"));
  EXPECT_TRUE(EngineDrains());
}

// Reads a streamed response: the SSE payloads, "[DONE]" included.
std::vector<std::string> SsePayloads(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    const size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) break;
    out.push_back(body.substr(pos + 6, end - pos - 6));
    pos = end + 2;
  }
  return out;
}

TEST_F(HttpServerTest, StreamingMatchesTheNonStreamedText) {
  Start();
  json req = {
      {"prompt", {20, 21, 22}}, {"max_tokens", 12}, {"temperature", 0}, {"ignore_eos", true}};
  auto whole = Post("/v1/completions", req);
  ASSERT_TRUE(whole);
  ASSERT_EQ(whole->status, 200);
  const std::string want = json::parse(whole->body)["choices"][0]["text"];

  req["stream"] = true;
  req["stream_options"] = {{"include_usage", true}};
  auto r = Post("/v1/completions", req);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_THAT(r->get_header_value("Content-Type"), ::testing::StartsWith("text/event-stream"));
  std::vector<std::string> events = SsePayloads(r->body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  json usage = json::parse(events[events.size() - 2]);
  EXPECT_EQ(usage["choices"], json::array());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 12);
  std::string text;
  std::vector<std::string> finishes;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    json chunk = json::parse(events[i]);
    EXPECT_TRUE(chunk["usage"].is_null());
    text += chunk["choices"][0]["text"].get<std::string>();
    if (!chunk["choices"][0]["finish_reason"].is_null()) {
      finishes.push_back(chunk["choices"][0]["finish_reason"]);
    }
  }
  EXPECT_EQ(text, want);
  EXPECT_EQ(finishes, std::vector<std::string>{"length"});
}

TEST_F(HttpServerTest, RequestErrors) {
  Start();
  struct Case {
    const char* path;
    std::string body;
    int status;
    const char* param;  // "" = null
    const char* code;   // "" = null
  } cases[] = {
      {"/v1/completions", "{\"prompt\": ", 400, "", ""},
      {"/v1/completions", R"({"prompt": [1], "max_tokens": "ten"})", 400, "max_tokens", ""},
      {"/v1/completions", R"({"prompt": [1], "max_tokens": 0, "stream": true})", 400, "max_tokens",
       ""},
      {"/v1/completions", R"({"prompt": [1], "temperature": -1})", 400, "temperature", ""},
      {"/v1/completions", R"({"prompt": [1], "n": 99})", 400, "n", ""},
      {"/v1/completions", R"({"prompt": [1], "model": "gpt-4"})", 404, "model", "model_not_found"},
      {"/v1/completions", R"({"prompt": [1, 64]})", 400, "prompt", ""},
      {"/v1/completions", "{\"prompt\": [1], \"max_tokens\": " + std::to_string(kContext) + "}",
       400, "max_tokens", "context_length_exceeded"},
      // "abc" has no tokens in the tiny vocabulary.
      {"/v1/completions", R"({"prompt": "abc"})", 400, "prompt", ""},
      {"/v1/chat/completions", R"({"messages": "hello"})", 400, "messages", ""},
      // The tiny model has no chat template.
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}]})", 400, "", ""},
      {"/v1/chat/completions", R"({"model": "x", "messages": [{"role": "user", "content": "Hi"}]})",
       404, "model", "model_not_found"},
  };
  for (const Case& tc : cases) {
    auto r = client_->Post(tc.path, tc.body, "application/json");
    ASSERT_TRUE(r) << tc.body;
    EXPECT_EQ(r->status, tc.status) << tc.body << " -> " << r->body;
    json e = ErrorOf(r);
    EXPECT_EQ(e["type"], "invalid_request_error");
    if (*tc.param != '\0') {
      EXPECT_EQ(e["param"], tc.param) << r->body;
    }
    if (*tc.code != '\0') {
      EXPECT_EQ(e["code"], tc.code) << r->body;
    } else {
      EXPECT_TRUE(e["code"].is_null()) << r->body;
    }
  }
  // A prompt of kContext tokens leaves no room: the context check names it.
  json ids = json::array();
  for (int i = 0; i < kContext; ++i) ids.push_back(5);
  auto r = Post("/v1/completions", {{"prompt", ids}, {"max_tokens", 1}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(ErrorOf(r)["code"], "context_length_exceeded");
  EXPECT_EQ(ErrorOf(r)["param"], "prompt");
  // Still serving.
  r = Post("/v1/completions", {{"prompt", {3}}, {"max_tokens", 1}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpServerTest, MetricsEndpointCountsRequests) {
  Start();
  ASSERT_TRUE(client_->Get("/v2/missing"));
  auto r = Post("/v1/completions", {{"prompt", {3, 4}}, {"max_tokens", 2}, {"ignore_eos", true}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  // The engine publishes its counters after the step and the access log
  // counts a request after its response is sent: poll until both caught up.
  const std::vector<std::string> want = {
      "kvserve_http_requests_total{method=\"POST\",route=\"/v1/completions\",status=\"200\"} 1",
      "kvserve_http_requests_total{method=\"GET\",route=\"other\",status=\"404\"} 1",
      "kvserve_generation_tokens_total 2",
      "kvserve_requests_total{finish_reason=\"length\"} 1",
      "kvserve_kv_cache_capacity_bytes ",
  };
  std::string body;
  for (int i = 0; i < 1000; ++i) {
    r = client_->Get("/metrics");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200);
    EXPECT_THAT(r->get_header_value("Content-Type"), ::testing::StartsWith("text/plain"));
    body = r->body;
    bool all = true;
    for (const std::string& w : want) all &= body.find(w) != std::string::npos;
    if (all) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (const std::string& w : want) EXPECT_THAT(body, HasSubstr(w));
}

TEST_F(HttpServerTest, StatsEndpointIsASnapshotOfTheEngine) {
  Start();
  auto r =
      Post("/v1/completions", {{"prompt", {3, 4, 5}}, {"max_tokens", 3}, {"ignore_eos", true}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  // The engine publishes its counters after the step: poll until it has.
  json stats;
  for (int i = 0; i < 1000; ++i) {
    r = client_->Get("/v1/stats");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200);
    EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
    EXPECT_EQ(r->get_header_value("Cache-Control"), "no-store");
    stats = json::parse(r->body);
    if (stats["totals"]["generation_tokens"] == 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(stats["object"], "kvserve.stats");
  EXPECT_EQ(stats["model"], "tiny");
  EXPECT_GE(stats["uptime_seconds"].get<double>(), 0.0);
  EXPECT_GT(stats["timestamp"].get<double>(), 1.6e9);
  EXPECT_EQ(stats["kv_cache"]["capacity_bytes"], engine_->Stats().kv_bytes_total);
  EXPECT_EQ(stats["totals"]["generation_tokens"], 3);
  EXPECT_EQ(stats["totals"]["prompt_tokens"], 3);
  EXPECT_EQ(stats["totals"]["requests_finished"], 1);
  EXPECT_EQ(stats["tenants"], json::array());
}

// The page as served: no absolute URL (it must work offline), and the
// charts' script either from this server or absent with a note.
void ExpectOfflinePage(const httplib::Result& r) {
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/html; charset=utf-8");
  EXPECT_THAT(r->body, HasSubstr("/v1/stats"));
  EXPECT_EQ(r->body.find("http://"), std::string::npos);
  EXPECT_EQ(r->body.find("https://"), std::string::npos);
  EXPECT_EQ(r->body.find('@'), std::string::npos) << "a placeholder was left in the page";
}

TEST_F(HttpServerTest, DashboardServesChartJsFromTheConfiguredFile) {
  chart_js_path_ = ::testing::TempDir() + "http_server_test_chart.js";
  const std::string source = "window.Chart = function () {};\n";
  std::ofstream(chart_js_path_) << source;
  Start();
  auto page = client_->Get("/dashboard");
  ExpectOfflinePage(page);
  const size_t at = page->body.find("<script src=\"/dashboard/chart.js?v=");
  ASSERT_NE(at, std::string::npos) << page->body;
  EXPECT_THAT(page->body, ::testing::Not(HasSubstr("<body class=\"nocharts\">")));
  const size_t begin = page->body.find('/', at);
  const std::string src = page->body.substr(begin, page->body.find('"', begin) - begin);
  auto js = client_->Get(src.c_str());
  ASSERT_TRUE(js);
  EXPECT_EQ(js->status, 200);
  EXPECT_EQ(js->body, source);
  EXPECT_EQ(js->get_header_value("Content-Type"), "text/javascript; charset=utf-8");
  EXPECT_THAT(js->get_header_value("Cache-Control"), HasSubstr("max-age=31536000"));
  std::remove(chart_js_path_.c_str());
}

TEST_F(HttpServerTest, DashboardWithoutChartJsShowsTablesAndANote) {
  chart_js_path_ = ::testing::TempDir() + "http_server_test_no_such_chart.js";
  std::remove(chart_js_path_.c_str());
  Start();
  auto page = client_->Get("/dashboard");
  ExpectOfflinePage(page);
  EXPECT_THAT(page->body, HasSubstr("<body class=\"nocharts\">"));
  EXPECT_THAT(page->body, HasSubstr("Charts need Chart.js"));
  EXPECT_THAT(page->body, HasSubstr("libjs-chart.js"));
  EXPECT_THAT(page->body, ::testing::Not(HasSubstr("<script src=")));
  auto js = client_->Get("/dashboard/chart.js");
  ASSERT_TRUE(js);
  EXPECT_EQ(js->status, 404);
  EXPECT_THAT(ErrorOf(js)["message"].get<std::string>(), HasSubstr("libjs-chart.js"));
  // Read-only routes: POST is 405.
  auto post = Post("/v1/stats", json::object());
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 405);
}

// Opens a connection, sends `body` to /v1/completions, and returns the
// socket (the caller reads and closes it).
int SendRaw(int port, const std::string& body) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  const std::string req =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
      "application/json\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  if (send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return -1;
  }
  return fd;
}

TEST_F(HttpServerTest, NonStreamingClientThatLeavesIsCancelled) {
  Start();
  const int fd = SendRaw(server_->port(), LongRequest(false).dump());
  ASSERT_GE(fd, 0);
  // Wait until the engine works on it, then hang up.
  bool running = false;
  for (int i = 0; i < 2000 && !running; ++i) {
    running = engine_->Stats().kv_blocks_used > 0;
    if (!running) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_TRUE(running);
  close(fd);
  EXPECT_TRUE(EngineDrains());
  // It ended as an abort, not by running to max_tokens.
  const std::string m = metrics_->Render(engine_->Stats());
  EXPECT_THAT(m, HasSubstr("kvserve_requests_total{finish_reason=\"abort\"} 1"));
  EXPECT_THAT(m, HasSubstr("kvserve_requests_total{finish_reason=\"length\"} 0"));
}

TEST_F(HttpServerTest, StreamingClientThatLeavesIsCancelled) {
  Start();
  const int fd = SendRaw(server_->port(), LongRequest(true).dump());
  ASSERT_GE(fd, 0);
  // Read until the first event: the request is then running.
  std::string got;
  char buf[512];
  while (got.find("data: ") == std::string::npos) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    ASSERT_GT(n, 0) << got;
    got.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  EXPECT_TRUE(EngineDrains());
  const std::string m = metrics_->Render(engine_->Stats());
  EXPECT_THAT(m, HasSubstr("kvserve_requests_total{finish_reason=\"abort\"} 1"));
}

TEST_F(HttpServerTest, FullQueueIs429WithRetryAfter) {
  engine::EngineConfig c;
  c.max_running = 1;
  c.max_waiting = 1;
  Start(c);
  // Long streams hold the single running slot and the single queue slot;
  // among several at once, some must be turned away.
  std::vector<int> fds;
  for (int i = 0; i < 4; ++i) fds.push_back(SendRaw(server_->port(), LongRequest(true).dump()));
  int rejected = 0;
  for (int fd : fds) {
    ASSERT_GE(fd, 0);
    // The status line and headers, then (for errors) the whole body.
    std::string head;
    char buf[2048];
    size_t need = std::string::npos;
    while (head.size() < need) {
      const ssize_t n = recv(fd, buf, sizeof(buf), 0);
      ASSERT_GT(n, 0) << head;
      head.append(buf, static_cast<size_t>(n));
      const size_t end = head.find("\r\n\r\n");
      if (end == std::string::npos) continue;
      if (head.rfind("HTTP/1.1 200", 0) == 0) break;
      const size_t cl = head.find("Content-Length: ");
      ASSERT_NE(cl, std::string::npos) << head;
      need = end + 4 + std::stoul(head.substr(cl + 16));
    }
    if (head.rfind("HTTP/1.1 429", 0) == 0) {
      ++rejected;
      EXPECT_THAT(head, HasSubstr("Retry-After: 1"));
      EXPECT_THAT(head, HasSubstr("rate_limit_error"));
    } else {
      EXPECT_EQ(head.rfind("HTTP/1.1 200", 0), 0u) << head;
    }
  }
  EXPECT_GE(rejected, 2);
  for (int fd : fds) close(fd);
  EXPECT_TRUE(EngineDrains());
}

TEST_F(HttpServerTest, AfterEngineShutdownRequestsAre503) {
  Start();
  engine_->Shutdown();
  auto r = Post("/v1/completions", {{"prompt", {3}}, {"max_tokens", 1}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->get_header_value("Retry-After"), "5");
  EXPECT_EQ(ErrorOf(r)["type"], "server_error");
}

TEST_F(HttpServerTest, ShutdownEndsRequestsInFlight) {
  Start();
  auto pending = std::async(std::launch::async, [&] {
    httplib::Client c("127.0.0.1", server_->port());
    c.set_read_timeout(60, 0);
    return c.Post("/v1/completions", LongRequest(false).dump(), "application/json");
  });
  for (int i = 0; i < 2000 && engine_->Stats().kv_blocks_used == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  server_->Stop();
  engine_->Shutdown();
  auto r = pending.get();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503) << r->body;
  server_->Shutdown();
}

}  // namespace
}  // namespace kvserve::server
