// The OpenAI-compatible HTTP front end (cpp-httplib):
//
//   POST /v1/completions         text completion, optionally streamed (SSE)
//   POST /v1/chat/completions    chat completion via the GGUF chat template
//   GET  /v1/models              the one served model
//   GET  /v1/models/{name}       that model, or 404
//   GET  /health                 200 {"status":"ok"} while the process runs
//   GET  /ready                  200 once the engine is ready, else 503
//   GET  /metrics                Prometheus text format (metrics.h)
//   GET  /v1/stats               a JSON snapshot of the engine (stats_json.h)
//   GET  /dashboard              the built-in dashboard page (dashboard_page.h)
//   GET  /dashboard/chart.js     the Chart.js file the page uses, 404 without it
//
// With a tenant registry (a tenants file), every route but /health needs an
// API key (tenant_registry.h: "Authorization: Bearer KEY", or Basic with
// the key as password so that browsers can open /dashboard): without a
// valid one the answer is 401, an OpenAI error body with code
// "invalid_api_key" and a WWW-Authenticate header (Bearer; the /dashboard
// pages also offer Basic, which makes browsers ask for the key). CORS
// preflights (OPTIONS) stay open: browsers send them without credentials.
// The tenant is charged for the request (GenerationRequest::tenant) and
// its default compression fills what the request leaves open.
//
// Every error is an OpenAI error body (status_mapping.h); unknown paths are
// 404 and known paths with the wrong method 405, both as JSON. A request
// whose client goes away is cancelled in the engine: streaming ones when a
// write fails or the socket reports end-of-file, non-streaming ones by
// polling the connection while they wait (cpp-httplib 0.11 does not expose
// the socket, so it is found by matching the request's addresses against
// the process's sockets; as with other servers, a client that shuts down
// its sending side counts as gone). One log line per request (id, route,
// status, token counts, latency), never the prompt.
//
// Thread-safety: Start/Stop/Shutdown from one thread; the handlers run on
// cpp-httplib's worker threads and use only the engine's thread-safe API.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/kernels/matmul_backend.h"
#include "engine/serving/engine.h"
#include "engine/tokenizer/tokenizer.h"
#include "server/metrics.h"
#include "server/tenant_registry.h"

namespace kvserve::server {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;         // 0 picks a free port (see HttpServer::port())
  std::string model_name;  // what /v1/models lists and requests must name
  // Where the weight matmuls run, for /v1/stats. Not owned; outlives the
  // server; null: not reported.
  const kernels::MatMulBackend* device = nullptr;
  // Prompt + completion limit in tokens: EngineConfig::max_context, or the
  // model's training context when that is 0.
  int max_context = 0;
  // cpp-httplib worker threads; each in-flight request holds one. 0 derives
  // max_running + max_waiting + 16 from the engine (at most 1024).
  int worker_threads = 0;
  size_t max_body_bytes = 32u << 20;  // larger bodies get 413
  // Chart.js for /dashboard, read once at Start. Empty: the first of
  // DefaultChartJsPaths() (Debian's libjs-chart.js) that exists. When none
  // is found the server logs a warning and the page shows tables only.
  std::string chart_js_path;
  // The tenants whose keys are accepted; null = single-tenant, no keys.
  // Non-owning; must outlive the server.
  const TenantRegistry* tenants = nullptr;
};

class HttpServer {
 public:
  // Binds and starts serving on a background thread. `engine`, `tokenizer`
  // and `metrics` must outlive the server (non-owning). Fails when the
  // address cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options,
                                                           engine::Engine* engine,
                                                           const tokenizer::Tokenizer* tokenizer,
                                                           Metrics* metrics);
  ~HttpServer();  // Shutdown()

  // The bound port (useful with port 0).
  int port() const;
  // Stops accepting connections; returns at once. Requests in flight go on
  // (shut the engine down to end them).
  void Stop();
  // Stop(), then waits for the requests in flight and the listener thread.
  // Idempotent. Stopping cuts streamed responses short, so after the engine
  // has ended every request, call WaitResponsesWritten first: their final
  // events (an error event and [DONE]) then reach the clients.
  void Shutdown();
  // Waits until every request routed so far has written its whole response
  // (true), or the timeout passes (false).
  bool WaitResponsesWritten(absl::Duration timeout);

  class Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvserve::server
