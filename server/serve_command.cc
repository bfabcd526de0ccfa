// kvserve serve: loads the model and serves HTTP. This first version answers
// the liveness probe; the OpenAI API, gRPC and metrics join it with the
// serving work (issue #3).
#include <csignal>
#include <cstdio>

#include "httplib.h"
#include "spdlog/spdlog.h"
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
  auto threads = cli.GetInt("threads", 0, 1024);
  auto port = cli.GetInt("port", 1, 65535);
  for (const absl::Status& s : {threads.status(), port.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "kvserve serve: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  const auto level = spdlog::level::from_str(cli.Get("log-level"));
  if (level == spdlog::level::off && cli.Get("log-level") != "off") {
    std::fprintf(stderr, "kvserve serve: unknown --log-level '%s'\n", cli.Get("log-level").c_str());
    return 2;
  }
  spdlog::set_level(level);
  spdlog::info("loading {}", cli.Get("model"));
  auto loaded = LoadModel(cli.Get("model"), static_cast<int>(*threads));
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
  if (!http.bind_to_port(cli.Get("host"), static_cast<int>(*port))) {
    spdlog::error("cannot listen on {}:{}", cli.Get("host"), *port);
    return 1;
  }
  spdlog::info("listening on http://{}:{}", cli.Get("host"), *port);
  http.listen_after_bind();
  g_server = nullptr;
  spdlog::info("stopped");
  return 0;
}

}  // namespace kvserve::server
