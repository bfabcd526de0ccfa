// kvserve serve: loads the model, starts the engine and serves the OpenAI
// HTTP API (with /metrics) and, unless --grpc-port 0, the gRPC API. SIGINT
// or SIGTERM drains the server: /ready and gRPC health turn unready, new
// requests get 503 / UNAVAILABLE, and the requests in flight get up to
// --drain-timeout seconds to finish. Then the gRPC server and the engine
// stop (what is left ends with an error), then the HTTP server, and the
// process exits 0; a second signal exits at once with 1.
//
// With a tenants file (--tenants or "tenants" in the config) every route but
// /health and every gRPC Inference method need an API key, and SIGHUP
// reloads the file: a valid new file replaces the keys and limits at once,
// an invalid one is logged and the old table stays; requests in flight are
// not disturbed either way. Without a tenants file SIGHUP is logged and
// ignored (rather than ending the process, its default).
#include <pthread.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "config/server_config.h"
#include "engine/serving/engine.h"
#include "server/cli_common.h"
#include "server/commands.h"
#include "server/grpc_server.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/tenant_registry.h"
#include "spdlog/spdlog.h"

namespace kvserve::server {
namespace {

constexpr char kSummary[] =
    "Serves the model over an OpenAI-compatible HTTP API (POST /v1/completions,\n"
    "POST /v1/chat/completions, GET /v1/models, GET /health, GET /ready, GET /metrics,\n"
    "GET /v1/stats, GET /dashboard) and the gRPC API kvserve.v1.Inference.\n"
    "\n"
    "Options come from --config FILE, a JSON object whose keys are the flag names\n"
    "below (with '-' or '_'), e.g. {\"model\": \"m.gguf\", \"kv_cache_bytes\": \"2GiB\"};\n"
    "flags given on the command line override the file. Invalid settings stop the\n"
    "server at start-up with exit code 2. SIGINT/SIGTERM drain the server (see\n"
    "--drain-timeout) and exit 0; a second signal exits at once with code 1.\n"
    "\n"
    "--tenants FILE turns on API keys: every route but /health, and every gRPC\n"
    "Inference method, then needs 'Authorization: Bearer KEY' of a tenant in the\n"
    "file (kvserve hash-key makes the hashes it stores). SIGHUP reloads the file;\n"
    "an invalid file is logged and the previous tenants stay.";

int UsageError(const std::string& message) {
  std::fprintf(stderr, "kvserve serve: %s\n", message.c_str());
  return 2;
}

std::string HostPort(const std::string& host, int port) {
  const bool v6 = host.find(':') != std::string::npos;
  return v6 ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
}

}  // namespace

int RunServe(const std::vector<std::string>& args) {
  CliArgs cli("serve", kSummary);
  cli.Flag("config", "FILE", "", "JSON file of options; command-line flags override it");
  for (const config::ConfigOption& o : config::ServerConfigOptions()) {
    cli.Flag(o.name, o.placeholder, o.default_text, o.help);
  }
  int code = 0;
  if (!ParseOrExit(&cli, args, &code)) return code;

  config::ServerConfigBuilder builder;
  if (cli.Has("config")) {
    if (absl::Status s = builder.ApplyFile(cli.Get("config")); !s.ok()) {
      return UsageError(absl::StrCat("invalid configuration: ", s.message()));
    }
  }
  for (const config::ConfigOption& o : config::ServerConfigOptions()) {
    if (!cli.Has(o.name)) continue;
    if (absl::Status s = builder.Set(o.name, cli.Get(o.name)); !s.ok()) {
      return UsageError(absl::StrCat("invalid configuration: ", s.message()));
    }
  }
  auto built = builder.Build();
  if (!built.ok()) {
    return UsageError(absl::StrCat("invalid configuration: ", built.status().message()));
  }
  const config::ServerConfig& cfg = *built;
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  // Checked before the model loads, so that a bad file fails fast.
  std::optional<config::TenantsConfig> tenants_file;
  if (!cfg.tenants_path.empty()) {
    auto parsed = config::TenantsConfig::Load(cfg.tenants_path);
    if (!parsed.ok()) {
      return UsageError(absl::StrCat("invalid configuration: ", parsed.status().message()));
    }
    tenants_file = *std::move(parsed);
  }

  // Only the waiting thread below takes SIGINT/SIGTERM: block them before
  // any thread (model pool, engine, servers) exists so that all inherit the
  // mask. Writes to closed sockets must be errors, not SIGPIPE.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // SIGHUP likewise, for the reload thread alone.
  sigset_t reload_signals;
  sigemptyset(&reload_signals);
  sigaddset(&reload_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &reload_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  spdlog::info("loading {}", cfg.model_path);
  auto loaded = LoadModel(cfg.model_path, cfg.threads, cfg.device);
  if (!loaded.ok()) {
    spdlog::error("{}", std::string(loaded.status().message()));
    return 1;
  }
  const model::ModelConfig& mc = loaded->model->config();
  spdlog::info("model '{}' ({} layers, {} heads / {} KV heads, context {}), {} threads", mc.name,
               mc.n_layers, mc.n_head, mc.n_kv_head, mc.n_ctx_train, loaded->model->n_threads());
  spdlog::info("weight matmuls on {}, {} MiB of device memory",
               loaded->model->backend().Describe(), loaded->model->backend().device_bytes() >> 20);
  if (cfg.engine.max_context > mc.n_ctx_train) {
    return UsageError(absl::StrCat("invalid configuration: max-context: ", cfg.engine.max_context,
                                   " exceeds the model's training context of ", mc.n_ctx_train,
                                   " tokens"));
  }
  const int max_context = cfg.engine.max_context > 0 ? cfg.engine.max_context : mc.n_ctx_train;

  Metrics metrics(cfg.model_name, loaded->model->backend().device());
  auto engine =
      engine::Engine::Create(cfg.engine, loaded->model.get(), loaded->tokenizer.get(), &metrics);
  if (!engine.ok()) {
    spdlog::error("cannot start the engine: {}", std::string(engine.status().message()));
    return 1;
  }
  spdlog::info(
      "engine: KV cache {:.0f} MiB in blocks of {} tokens, max-running {}, max-waiting {}, "
      "max-batch-tokens {}, max-context {}, max-n {}, max-logprobs {}, scheduler {}",
      static_cast<double>(cfg.engine.kv_cache_bytes) / (1 << 20), cfg.engine.block_tokens,
      cfg.engine.max_running, cfg.engine.max_waiting, cfg.engine.max_batch_tokens, max_context,
      cfg.engine.max_n, cfg.engine.max_logprobs, cfg.engine.scheduler);
  spdlog::info(
      "KV compression: default policy {} at ratio {}, sink blocks {}, recent tokens {}, "
      "alpha {}, beta {}",
      cfg.engine.kv_compression.policy, cfg.engine.kv_compression.ratio,
      cfg.engine.kv_compressor.policy.sink_blocks, cfg.engine.kv_compressor.policy.recent_tokens,
      cfg.engine.kv_compressor.policy.alpha, cfg.engine.kv_compressor.beta);

  // Declared before the servers, which hold it, so that it outlives them.
  std::unique_ptr<TenantRegistry> tenants;
  if (tenants_file.has_value()) {
    auto created =
        TenantRegistry::Create(cfg.tenants_path, *std::move(tenants_file), engine->get());
    if (!created.ok()) {
      spdlog::error("{}", std::string(created.status().message()));
      (*engine)->Shutdown();
      return 1;
    }
    tenants = std::move(*created);
  }

  HttpServerOptions http_options;
  http_options.tenants = tenants.get();
  http_options.host = cfg.host;
  http_options.port = cfg.port;
  http_options.model_name = cfg.model_name;
  http_options.device = &loaded->model->backend();
  http_options.max_context = max_context;
  auto http = HttpServer::Start(http_options, engine->get(), loaded->tokenizer.get(), &metrics);
  if (!http.ok()) {
    spdlog::error("{}", std::string(http.status().message()));
    (*engine)->Shutdown();
    return 1;
  }
  std::unique_ptr<GrpcServer> grpc;
  if (cfg.grpc_port != 0) {
    GrpcServerOptions grpc_options;
    grpc_options.address = HostPort(cfg.host, cfg.grpc_port);
    grpc_options.model_name = cfg.model_name;
    grpc_options.max_context = max_context;
    grpc_options.tenants = tenants.get();
    auto started = GrpcServer::Start(grpc_options, engine->get(), loaded->tokenizer.get());
    if (!started.ok()) {
      spdlog::error("cannot start the gRPC server on {}: {}", grpc_options.address,
                    std::string(started.status().message()));
      (*http)->Stop();
      (*engine)->Shutdown();
      (*http)->Shutdown();
      return 1;
    }
    grpc = std::move(*started);
  }
  spdlog::info("serving '{}' on http://{}{}", cfg.model_name, HostPort(cfg.host, (*http)->port()),
               tenants ? " (API keys required)" : "");

  // SIGHUP reloads the tenants file. sigwait rather than a handler, as for
  // SIGTERM: the reload (file I/O, locks, logging) runs on an ordinary
  // thread. Requests in flight keep the tenant they authenticated as.
  std::atomic<bool> stop_reloader{false};
  std::thread reloader([&stop_reloader, &reload_signals, registry = tenants.get()] {
    for (;;) {
      int hup = 0;
      sigwait(&reload_signals, &hup);
      if (stop_reloader.load()) return;
      if (registry == nullptr) {
        spdlog::info("SIGHUP: no tenants file (single-tenant mode), nothing to reload");
        continue;
      }
      spdlog::info("SIGHUP: reloading tenants from {}", registry->path());
      (void)registry->Reload();  // logs the outcome; a failure keeps the old table
    }
  });

  int sig = 0;
  sigwait(&stop_signals, &sig);
  // A second signal means "now": do not wait for the orderly shutdown.
  std::thread([stop_signals] {
    int again = 0;
    sigwait(&stop_signals, &again);
    std::_Exit(1);
  }).detach();
  // Draining turns /ready (and so the load balancer) away from this server
  // and answers new requests with 503 while those in flight finish.
  (*engine)->Drain();
  spdlog::info("{}: draining {} request(s) in flight for up to {} s",
               sig == SIGINT ? "SIGINT" : "SIGTERM", (*engine)->InFlight(), cfg.drain_timeout_s);
  if ((*engine)->WaitIdle(absl::Seconds(cfg.drain_timeout_s))) {
    spdlog::info("drained; shutting down");
  } else {
    spdlog::warn("drain timeout of {} s reached with {} request(s) still in flight; aborting them",
                 cfg.drain_timeout_s, (*engine)->InFlight());
  }
  // Ending the engine makes every request still in flight end with an
  // error its client can read (503, or an SSE error event and [DONE]).
  // Stopping the HTTP server cuts streamed responses short, so it waits
  // first until every response has been written out (bounded: a client
  // that stopped reading must not hold the exit).
  if (grpc) grpc->Shutdown();
  (*engine)->Shutdown();
  if (!(*http)->WaitResponsesWritten(absl::Seconds(5))) {
    spdlog::warn("some HTTP responses were still being written after 5 s; closing them");
  }
  (*http)->Shutdown();
  stop_reloader.store(true);
  pthread_kill(reloader.native_handle(), SIGHUP);  // ends its sigwait
  reloader.join();
  spdlog::info("stopped");
  return 0;
}

}  // namespace kvserve::server
