// kvserve serve: loads the model and serves HTTP. This first version answers
// the liveness probe; the OpenAI API, gRPC and metrics join it with the
// serving work (issue #3).
#include <climits>
#include <csignal>
#include <cstdio>

#include "httplib.h"
#include "spdlog/spdlog.h"
#include "config/serve_config.h"
#include "server/cli_common.h"
#include "server/commands.h"

namespace kvserve::server {
namespace {

httplib::Server* g_server = nullptr;  // not owned; set while Listen runs

void OnSignal(int) {
  if (g_server != nullptr) g_server->stop();
}

}  // namespace

int RunServe(const std::vector<std::string>& args) {
  CliArgs cli("serve", "Loads the model and serves HTTP: GET /health answers once it is loaded.");
  AddModelFlags(&cli);
  cli.Flag("host", "ADDR", "127.0.0.1", "address to listen on");
  cli.Flag("port", "PORT", "8080", "HTTP port");
  cli.Flag("log-level", "LEVEL", "info", "trace, debug, info, warn, error");
  int code = 0;
  if (!ParseOrExit(&cli, args, &code)) return code;
  auto threads = cli.GetInt("threads", INT32_MIN, INT32_MAX);
  auto port = cli.GetInt("port", INT32_MIN, INT32_MAX);
  for (const absl::Status& s : {threads.status(), port.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "kvserve serve: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  auto config = config::ValidateServeConfig({cli.Get("model"), cli.Get("host"),
                                             static_cast<int>(*port), static_cast<int>(*threads),
                                             cli.Get("log-level")});
  if (!config.ok()) {
    std::fprintf(stderr, "kvserve serve: invalid configuration: %s\n",
                 std::string(config.status().message()).c_str());
    return 2;
  }
  const config::ServeConfig& cfg = *config;
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  spdlog::info("loading {}", cfg.model_path);
  auto loaded = LoadModel(cfg.model_path, cfg.threads);
  if (!loaded.ok()) {
    spdlog::error("{}", std::string(loaded.status().message()));
    return 1;
  }
  const model::ModelConfig& c = loaded->model->config();
  spdlog::info("model '{}' ({} layers, {} heads / {} KV heads, context {}), {} threads", c.name,
               c.n_layers, c.n_head, c.n_kv_head, c.n_ctx_train, loaded->model->n_threads());

  httplib::Server http;
  http.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("{\"status\":\"ok\"}", "application/json");
  });
  g_server = &http;
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  if (!http.bind_to_port(cfg.host, cfg.port)) {
    spdlog::error("cannot listen on {}:{}", cfg.host, cfg.port);
    return 1;
  }
  spdlog::info("listening on http://{}:{}", cfg.host, cfg.port);
  http.listen_after_bind();
  g_server = nullptr;
  spdlog::info("stopped");
  return 0;
}

}  // namespace kvserve::server
