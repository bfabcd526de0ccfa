#include "server/http_server.h"

#include <dirent.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/tokenizer/chat_template.h"
#include "httplib.h"
#include "server/dashboard_page.h"
#include "server/openai_protocol.h"
#include "server/stats_json.h"
#include "server/status_mapping.h"
#include "spdlog/spdlog.h"

namespace kvserve::server {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr char kJson[] = "application/json";
// How long a waiting handler sleeps on the engine before it looks at its
// connection again: bounds how long a gone client keeps its sequences.
constexpr absl::Duration kPollInterval = absl::Milliseconds(50);

// Per-request facts the access log and metrics need; filled by the handler
// and read by the logger, both of which run on the same worker thread
// (cpp-httplib calls the logger after writing the response, a streamed
// body included).
struct RequestInfo {
  std::string id;
  int prompt_tokens = -1;
  int completion_tokens = -1;
  int status_override = 0;  // 499 when the client went away
  std::string note;         // why a request failed, for the log
  Clock::time_point start = Clock::now();
  // The tenant the request authenticated as (null in single-tenant mode).
  std::shared_ptr<const config::Tenant> tenant;
};
thread_local RequestInfo t_info;

// Routes by path: label for metrics and the methods each accepts.
struct Route {
  const char* label;
  const char* methods;  // "GET" or "POST" (HEAD goes with GET)
};

const Route* FindRoute(const std::string& path) {
  static const Route kRoutes[] = {
      {"/v1/completions", "POST"}, {"/v1/chat/completions", "POST"},
      {"/v1/models", "GET"},       {"/health", "GET"},
      {"/ready", "GET"},           {"/metrics", "GET"},
      {"/v1/stats", "GET"},        {"/dashboard", "GET"},
      {kChartJsRoute, "GET"},
  };
  static const Route kModel = {"/v1/models/{model}", "GET"};
  for (const Route& r : kRoutes) {
    if (path == r.label) return &r;
  }
  if (absl::StartsWith(path, "/v1/models/") && path.size() > 11) return &kModel;
  return nullptr;
}

std::string MethodLabel(const std::string& m) {
  for (const char* known : {"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"}) {
    if (m == known) return m;
  }
  return "other";
}

// A message for the errors cpp-httplib reports on its own.
absl::Status StatusForHttpError(int http_status) {
  switch (http_status) {
    case 400:
      return absl::InvalidArgumentError("malformed HTTP request");
    case 413:
      return absl::InvalidArgumentError("the request body is too large");
    case 414:
      return absl::InvalidArgumentError("the request URI is too long");
    case 416:
      return absl::InvalidArgumentError("the requested range is not satisfiable");
    default:
      return http_status >= 500
                 ? absl::InternalError("internal server error")
                 : absl::InvalidArgumentError(absl::StrCat("HTTP error ", http_status));
  }
}

void SetJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(DumpJson(body), kJson);
}

void SetError(httplib::Response& res, const absl::Status& status,
              std::optional<std::string> code = std::nullopt) {
  SetJson(res, HttpStatusFor(status), OpenAiErrorBody(status, std::nullopt, std::move(code)));
  if (std::optional<int> s = RetryAfterSecondsFor(status)) {
    res.set_header("Retry-After", std::to_string(*s));
  }
  t_info.note = std::string(status.message());
}

std::string NumericHost(const sockaddr_storage& addr, socklen_t len, int* port) {
  char host[NI_MAXHOST];
  char serv[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host, sizeof(host), serv,
                  sizeof(serv), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "";
  }
  *port = std::atoi(serv);
  return host;
}

// The socket of this request's connection, found by its two endpoints among
// the process's descriptors; -1 if not found. The descriptor stays valid
// while the handler (or its content provider) runs: cpp-httplib closes it
// only after the response is done.
int FindConnectionFd(const httplib::Request& req) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (dirent* e = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == dirfd(dir)) continue;
    struct stat st;
    if (fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
    if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &local_len) != 0 ||
        getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) {
      continue;
    }
    int local_port = -1, peer_port = -1;
    const std::string local_host = NumericHost(local, local_len, &local_port);
    const std::string peer_host = NumericHost(peer, peer_len, &peer_port);
    if (local_port == req.local_port && peer_port == req.remote_port &&
        peer_host == req.remote_addr && local_host == req.local_addr) {
      found = static_cast<int>(fd);
      break;
    }
  }
  closedir(dir);
  return found;
}

// True once the peer has closed its side (end-of-file or a socket error).
// Bytes waiting to be read (a pipelined request) do not count as closed.
bool PeerClosed(int fd) {
  if (fd < 0) return false;
  char c;
  const ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (r == 0) return true;
  return r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

// cpp-httplib 0.11 listens with a backlog of 5: when dozens of clients
// connect at once the accept queue overflows and connections are reset.
// Linux lets listen() be called again on a listening socket to raise it.
class BacklogServer : public httplib::Server {
 public:
  bool RaiseBacklog(int backlog) {
    const socket_t sock = svr_sock_;
    return sock != INVALID_SOCKET && ::listen(sock, backlog) == 0;
  }
};

// State of one streamed response, shared by the content provider and the
// resource releaser (both copies of std::function).
struct StreamState {
  std::shared_ptr<engine::RequestHandle> handle;
  StreamFormatter formatter;
  int fd = -1;
  bool finished = false;
  int completion_tokens = 0;
};

}  // namespace

class HttpServer::Impl {
 public:
  Impl(const HttpServerOptions& options, engine::Engine* engine,
       const tokenizer::Tokenizer* tokenizer, Metrics* metrics)
      : options_(options),
        engine_(engine),
        tok_(tokenizer),
        metrics_(metrics),
        created_(static_cast<int64_t>(std::time(nullptr))),
        started_(Clock::now()) {
    limits_.max_n = engine_->config().max_n;
    limits_.max_logprobs = engine_->config().max_logprobs;
    auto tmpl = tokenizer::ParseChatTemplate(tok_->chat_template());
    if (tmpl.ok()) {
      chat_template_ = *tmpl;
    } else {
      chat_template_error_ = absl::FailedPreconditionError(
          absl::StrCat("this model has no usable chat template (",
                       std::string(tmpl.status().message()), "); use /v1/completions"));
    }
  }

  absl::Status Bind() {
    LoadDashboard();
    const engine::EngineConfig& ec = engine_->config();
    int threads = options_.worker_threads;
    if (threads <= 0) threads = std::min(1024, ec.max_running + ec.max_waiting + 16);
    http_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    http_.set_payload_max_length(options_.max_body_bytes);
    // Clients with connection pools (the openai client) reuse connections
    // for many requests; cpp-httplib's default closes them after 5.
    http_.set_keep_alive_max_count(1000);
    http_.set_default_headers({{"Access-Control-Allow-Origin", "*"}});
    http_.set_pre_routing_handler(
        [this](const httplib::Request& req, httplib::Response& res) { return PreRoute(req, res); });
    http_.set_error_handler(
        httplib::Server::HandlerWithResponse([](const httplib::Request&, httplib::Response& res) {
          // Errors cpp-httplib produces itself (malformed request, 413, ...)
          // get a JSON body; responses that already have one are left alone.
          if (!res.body.empty() || res.content_provider_) {
            return httplib::Server::HandlerResponse::Unhandled;
          }
          SetJson(res, res.status, OpenAiErrorBody(StatusForHttpError(res.status)));
          return httplib::Server::HandlerResponse::Handled;
        }));
    http_.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
          std::string what = "unknown exception";
          try {
            if (ep) std::rethrow_exception(ep);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          spdlog::error("request handler threw: {}", what);
          SetError(res, absl::InternalError("internal server error"));
        });
    http_.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      LogRequest(req, res);
    });

    http_.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      SetJson(res, 200, {{"status", "ok"}});
    });
    http_.Get("/ready", [this](const httplib::Request&, httplib::Response& res) {
      const bool ready = engine_->Ready();
      SetJson(res, ready ? 200 : 503, {{"status", ready ? "ready" : "not_ready"}});
      if (!ready) res.set_header("Retry-After", "1");
    });
    http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_->Render(engine_->Stats()), Metrics::kContentType);
    });
    http_.Get("/v1/stats", [this](const httplib::Request&, httplib::Response& res) {
      StatsContext context;
      context.model_name = options_.model_name;
      if (options_.device != nullptr) {
        context.device = options_.device->device();
        context.device_description = options_.device->Describe();
        context.device_memory_bytes = options_.device->device_bytes();
      }
      context.timestamp_s = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
      context.uptime_s = std::chrono::duration<double>(Clock::now() - started_).count();
      SetJson(res, 200, StatsJson(engine_->Stats(), context));
      res.set_header("Cache-Control", "no-store");
    });
    http_.Get("/dashboard", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(dashboard_html_, "text/html; charset=utf-8");
      res.set_header("Cache-Control", "no-cache");
    });
    http_.Get(kChartJsRoute, [this](const httplib::Request&, httplib::Response& res) {
      if (chart_js_.empty()) {
        SetError(res,
                 absl::NotFoundError(
                     "Chart.js is not installed on the server (Debian package libjs-chart.js)"));
        return;
      }
      res.set_content(chart_js_, "text/javascript; charset=utf-8");
      // The page asks for it with ?v=<content tag>, so a year-long cache is
      // safe: a different file gets a different URL.
      res.set_header("Cache-Control", "public, max-age=31536000, immutable");
    });
    http_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      SetJson(res, 200, {{"object", "list"}, {"data", json::array({ModelJson()})}});
    });
    http_.Get("/v1/models/(.+)", [this](const httplib::Request& req, httplib::Response& res) {
      const std::string name = req.matches[1];
      if (name != options_.model_name) {
        SetError(res, ModelNotFound(name), "model_not_found");
        return;
      }
      SetJson(res, 200, ModelJson());
    });
    http_.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      Generate(req, res, /*chat=*/false);
    });
    http_.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      Generate(req, res, /*chat=*/true);
    });

    if (options_.port == 0) {
      const int port = http_.bind_to_any_port(options_.host);
      if (port <= 0) {
        return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.host));
      }
      port_ = port;
    } else {
      if (!http_.bind_to_port(options_.host, options_.port)) {
        return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.host, ":",
                                                   options_.port,
                                                   " (address in use or not available)"));
      }
      port_ = options_.port;
    }
    if (!http_.RaiseBacklog(SOMAXCONN)) {
      spdlog::warn("could not raise the HTTP listen backlog: {}", std::strerror(errno));
    }
    listener_ = std::thread([this] { http_.listen_after_bind(); });
    return absl::OkStatus();
  }

  int port() const { return port_; }

  // Reads Chart.js and builds the dashboard page once; a missing Chart.js
  // is logged here, once, and the page then shows tables only.
  void LoadDashboard() {
    const std::vector<std::string> paths = options_.chart_js_path.empty()
                                               ? DefaultChartJsPaths()
                                               : std::vector<std::string>{options_.chart_js_path};
    absl::StatusOr<ChartJsFile> file = LoadChartJs(paths);
    if (file.ok()) {
      spdlog::debug("dashboard: Chart.js from {}", file->path);
      chart_js_ = std::move(file->source);
      dashboard_html_ = DashboardHtml(absl::StrCat(kChartJsRoute, "?v=", ContentTag(chart_js_)));
    } else {
      spdlog::warn("/dashboard will show tables without charts: {}",
                   std::string(file.status().message()));
      dashboard_html_ = DashboardHtml("");
    }
  }

  void Stop() { http_.stop(); }

  bool WaitResponsesWritten(absl::Duration timeout) {
    const auto deadline = Clock::now() + absl::ToChronoNanoseconds(timeout);
    while (in_flight_.load() > 0) {
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
  }

  void Shutdown() {
    http_.stop();
    if (listener_.joinable()) listener_.join();
  }

 private:
  httplib::Server::HandlerResponse PreRoute(const httplib::Request& req, httplib::Response& res) {
    in_flight_.fetch_add(1);  // until the access log runs, when the response is done
    t_info = RequestInfo{};
    const Route* route = FindRoute(req.path);
    if (route == nullptr) {
      SetError(res, absl::NotFoundError(absl::StrCat("no route for ", req.method, " ", req.path)));
      return httplib::Server::HandlerResponse::Handled;
    }
    const bool is_get = req.method == "GET" || req.method == "HEAD";
    if (req.method == "OPTIONS") {
      // CORS preflight, so that browser clients can call the API.
      res.status = 204;
      res.set_header("Allow", absl::StrCat(route->methods, ", OPTIONS"));
      res.set_header("Access-Control-Allow-Methods", absl::StrCat(route->methods, ", OPTIONS"));
      res.set_header("Access-Control-Allow-Headers", "*");
      return httplib::Server::HandlerResponse::Handled;
    }
    const bool allowed = std::string(route->methods) == "GET" ? is_get : req.method == "POST";
    if (!allowed) {
      res.set_header("Allow", route->methods);
      SetJson(
          res, 405,
          OpenAiErrorBody(absl::InvalidArgumentError(absl::StrCat(
              "method ", req.method, " is not allowed for ", req.path, "; use ", route->methods))));
      return httplib::Server::HandlerResponse::Handled;
    }
    // POST requests are authenticated by their handler: cpp-httplib reads
    // the body only after this, and an answer given here would leave the
    // body in a kept-alive connection, to be read as the next request.
    if (options_.tenants != nullptr && req.method != "POST" &&
        std::string_view(route->label) != "/health" && !Authenticate(req, res, *route)) {
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  }

  // Finds the request's tenant (into t_info, for the handler on this
  // thread), or answers 401.
  bool Authenticate(const httplib::Request& req, httplib::Response& res, const Route& route) {
    absl::StatusOr<std::shared_ptr<const config::Tenant>> tenant =
        req.get_header_value_count("Authorization") > 1
            ? absl::UnauthenticatedError("more than one Authorization header")
            : options_.tenants->Authenticate(req.get_header_value("Authorization"));
    if (tenant.ok()) {
      t_info.tenant = *std::move(tenant);
      return true;
    }
    SetError(res, tenant.status(), "invalid_api_key");
    res.set_header("WWW-Authenticate", "Bearer realm=\"kvserve\"");
    // Browsers cannot send a Bearer key by themselves, but they ask for a
    // Basic login when challenged and then send it with the page's own
    // requests (/v1/stats, the chart script): the key goes in as password.
    if (absl::StartsWith(route.label, "/dashboard")) {
      res.set_header("WWW-Authenticate", "Basic realm=\"kvserve\", charset=\"UTF-8\"");
    }
    return false;
  }

  void LogRequest(const httplib::Request& req, const httplib::Response& res) {
    in_flight_.fetch_sub(1);
    RequestInfo info = std::move(t_info);
    t_info = RequestInfo{};
    const int status = info.status_override != 0 ? info.status_override : res.status;
    const Route* route = FindRoute(req.path);
    metrics_->RecordHttpRequest(route != nullptr ? route->label : "other", MethodLabel(req.method),
                                status);
    const double latency = std::chrono::duration<double>(Clock::now() - info.start).count();
    // Probes, scrapes and the dashboard's polling would flood the log.
    const bool probe = route != nullptr && (!absl::StartsWith(route->label, "/v1/") ||
                                            std::string_view(route->label) == "/v1/stats");
    const auto level = probe && status < 400 ? spdlog::level::debug : spdlog::level::info;
    std::string line =
        absl::StrCat(info.id.empty() ? "-" : info.id, " ", req.method, " ",
                     route != nullptr ? route->label : "(unknown route)", " ", status);
    if (info.tenant != nullptr) absl::StrAppend(&line, " tenant=", info.tenant->id());
    if (info.prompt_tokens >= 0) absl::StrAppend(&line, " prompt_tokens=", info.prompt_tokens);
    if (info.completion_tokens >= 0) {
      absl::StrAppend(&line, " completion_tokens=", info.completion_tokens);
    }
    absl::StrAppend(&line, " latency=", absl::StrFormat("%.3fs", latency));
    if (!info.note.empty()) absl::StrAppend(&line, " error=\"", info.note, "\"");
    spdlog::log(level, "{}", line);
  }

  json ModelJson() const {
    return {{"id", options_.model_name},
            {"object", "model"},
            {"created", created_},
            {"owned_by", "kvserve"},
            {"root", options_.model_name},
            {"parent", nullptr},
            {"max_model_len", options_.max_context}};
  }

  static absl::Status ModelNotFound(const std::string& name) {
    return WithParam(absl::NotFoundError(absl::StrCat("The model `", name, "` does not exist.")),
                     "model");
  }

  // Tokens the KV pool can hold for one request: the engine refuses more.
  int KvTokenCapacity() const {
    const int64_t cap =
        static_cast<int64_t>(engine_->Stats().kv_blocks_total) * engine_->config().block_tokens;
    return cap > 0 ? static_cast<int>(std::min<int64_t>(cap, INT32_MAX)) : INT32_MAX;
  }

  static absl::Status ContextError(std::string message, std::string_view param) {
    return WithParam(absl::InvalidArgumentError(std::move(message)), param);
  }

  void Generate(const httplib::Request& req, httplib::Response& res, bool chat) {
    if (options_.tenants != nullptr && !Authenticate(req, res, *FindRoute(req.path))) return;
    t_info.id = RandomId(chat ? "chatcmpl-" : "cmpl-");
    const std::string& id = t_info.id;

    CommonParams common;
    std::vector<int32_t> prompt;
    ResponseOptions ro;
    int logprobs = -1;
    bool prompt_logprobs = false;
    const char* prompt_param = chat ? "messages" : "prompt";
    if (chat) {
      auto parsed = ParseChatRequest(req.body, limits_);
      if (!parsed.ok()) return SetError(res, parsed.status());
      common = parsed->common;
      if (auto s = CheckModel(common); !s.ok()) return SetError(res, s, "model_not_found");
      if (!chat_template_error_.ok()) return SetError(res, chat_template_error_);
      auto text = tokenizer::ApplyChatTemplate(
          chat_template_, parsed->messages, parsed->add_generation_prompt,
          tok_->TokenText(tok_->bos_id()), tok_->TokenText(tok_->eos_id()));
      if (!text.ok()) {
        return SetError(res,
                        WithParam(absl::InvalidArgumentError(text.status().message()), "messages"));
      }
      const std::string& bos = tok_->TokenText(tok_->bos_id());
      const bool add_bos = tok_->add_bos() && !(!bos.empty() && absl::StartsWith(*text, bos));
      prompt = tok_->Encode(*text, add_bos, /*parse_special=*/true);
      ro.logprobs = parsed->logprobs;
      if (parsed->logprobs) logprobs = parsed->top_logprobs;
    } else {
      auto parsed = ParseCompletionRequest(req.body, limits_);
      if (!parsed.ok()) return SetError(res, parsed.status());
      common = parsed->common;
      if (auto s = CheckModel(common); !s.ok()) return SetError(res, s, "model_not_found");
      if (parsed->prompt_text.has_value()) {
        prompt = tok_->Encode(*parsed->prompt_text, tok_->add_bos(), /*parse_special=*/false);
        ro.echo_text = *parsed->prompt_text;
      } else {
        for (size_t i = 0; i < parsed->prompt_tokens.size(); ++i) {
          if (!tok_->IsValid(parsed->prompt_tokens[i])) {
            return SetError(
                res, WithParam(absl::InvalidArgumentError(absl::StrCat(
                                   "prompt token id ", parsed->prompt_tokens[i], " (element ", i,
                                   ") is outside the vocabulary [0, ", tok_->n_vocab(), ")")),
                               "prompt"));
          }
        }
        prompt = parsed->prompt_tokens;
        if (parsed->echo) ro.echo_text = tok_->Decode(prompt, /*skip_special=*/false);
      }
      ro.echo = parsed->echo;
      ro.logprobs = parsed->logprobs >= 0;
      logprobs = parsed->logprobs;
      prompt_logprobs = parsed->echo && parsed->logprobs >= 0;
    }
    if (prompt.empty()) {
      return SetError(res, WithParam(absl::InvalidArgumentError("the prompt encodes to no tokens"),
                                     prompt_param));
    }
    const int n_prompt = static_cast<int>(prompt.size());
    t_info.prompt_tokens = n_prompt;

    // The context limit is checked here to answer with OpenAI's error code;
    // whether the KV pool can ever hold the request is the engine's check.
    const int limit = options_.max_context;
    if (n_prompt >= limit) {
      return SetError(
          res,
          ContextError(
              absl::StrCat("This model's maximum context length is ", limit, " tokens, but the ",
                           chat ? "messages" : "prompt", " take ", n_prompt,
                           " tokens, leaving no room for the completion. Shorten the ",
                           chat ? "messages." : "prompt."),
              prompt_param),
          "context_length_exceeded");
    }
    int max_tokens;
    if (common.max_tokens.has_value()) {
      max_tokens = *common.max_tokens;
      if (static_cast<int64_t>(n_prompt) + max_tokens > limit) {
        return SetError(
            res,
            ContextError(
                absl::StrCat("This model's maximum context length is ", limit, " tokens, but ",
                             static_cast<int64_t>(n_prompt) + max_tokens, " were requested (",
                             n_prompt, " in the ", chat ? "messages" : "prompt", ", ", max_tokens,
                             " for the completion). Shorten the ", chat ? "messages" : "prompt",
                             " or lower max_tokens."),
                "max_tokens"),
            "context_length_exceeded");
      }
    } else {
      // Chat: up to the end of the context (OpenAI's default), or of what
      // the KV pool can hold. Completions: the legacy default of 16,
      // clipped the same way.
      const int room = std::max(1, std::min(limit, KvTokenCapacity()) - n_prompt);
      max_tokens = chat ? room : std::min(16, room);
    }

    ro.prompt = prompt;
    ro.prompt_tokens = n_prompt;
    ro.include_usage = common.include_usage;
    const int n = common.n;
    const bool stream = common.stream;
    engine::GenerationRequest request =
        ToGenerationRequest(common, id, std::move(prompt), max_tokens, logprobs, prompt_logprobs);
    if (t_info.tenant != nullptr) ApplyTenant(*t_info.tenant, &request);
    auto submitted = engine_->Submit(std::move(request));
    if (!submitted.ok()) return SetError(res, submitted.status());
    std::shared_ptr<engine::RequestHandle> handle = *submitted;

    const ResponseMeta meta{id, static_cast<int64_t>(std::time(nullptr)), options_.model_name};
    TokenPieceFn piece = [tok = tok_](int32_t t) { return tok->TokenToPiece(t); };
    const int fd = FindConnectionFd(req);
    res.set_header("X-Request-Id", id);

    if (stream) {
      auto state = std::make_shared<StreamState>(StreamState{
          handle,
          StreamFormatter(chat ? StreamFormatter::Kind::kChat : StreamFormatter::Kind::kCompletion,
                          meta, n, ro, piece),
          fd});
      res.set_header("Cache-Control", "no-cache");
      res.set_header("X-Accel-Buffering", "no");
      res.set_chunked_content_provider(
          "text/event-stream",
          [state](size_t, httplib::DataSink& sink) { return Pump(state.get(), sink); },
          [state](bool) {
            // Runs however the response ended (after the access log): a
            // client that left mid-stream must not keep generating.
            if (!state->finished) state->handle->Cancel();
          });
      return;
    }

    ResponseCollector collector(n);
    absl::Status failure;
    while (!handle->Done()) {
      if (PeerClosed(fd)) {
        handle->Cancel();
        t_info.status_override = 499;
        t_info.note = "client disconnected";
        SetError(res, absl::CancelledError("the client closed the connection"));
        return;
      }
      std::optional<engine::StreamEvent> e = handle->Next(kPollInterval);
      if (!e.has_value()) continue;
      absl::Status s = collector.Add(std::move(*e));
      if (!s.ok() && failure.ok()) {
        failure = s;
        handle->Cancel();
      }
    }
    t_info.completion_tokens = collector.completion_tokens();
    if (!failure.ok()) return SetError(res, failure);
    SetJson(res, 200,
            chat ? ChatResponseJson(meta, collector, ro, piece)
                 : CompletionResponseJson(meta, collector, ro, piece));
  }

  // Notes a vanished client for the access log (which runs next, on this
  // thread) and tells cpp-httplib to abort; the releaser cancels.
  static bool ClientGone() {
    t_info.status_override = 499;
    t_info.note = "client disconnected";
    return false;
  }

  // One turn of a streamed response: waits briefly for events, writes
  // them, and ends the stream after the last one. False tells cpp-httplib
  // to abort (the client is gone).
  static bool Pump(StreamState* st, httplib::DataSink& sink) {
    if (st->finished) return true;
    if (PeerClosed(st->fd)) return ClientGone();
    std::string out;
    absl::Status failure;
    std::optional<engine::StreamEvent> e = st->handle->Next(kPollInterval);
    while (e.has_value()) {
      if (e->finish != engine::FinishReason::kNone) st->completion_tokens += e->completion_tokens;
      auto text = st->formatter.OnEvent(*e);
      if (!text.ok()) {
        failure = text.status();
        break;
      }
      out += *text;
      e = st->handle->Next(absl::ZeroDuration());  // batch what is already there
    }
    bool end = false;
    if (!failure.ok()) {
      st->handle->Cancel();
      out += StreamFormatter::ErrorEvent(failure);
      out += kSseDone;
      t_info.note = std::string(failure.message());
      end = true;
    } else if (st->handle->Done()) {
      out += st->formatter.Finish();
      end = true;
    }
    t_info.completion_tokens = st->completion_tokens;
    if (!out.empty() && !sink.write(out.data(), out.size())) return ClientGone();
    if (end) {
      st->finished = true;
      sink.done();
    }
    return true;
  }

  absl::Status CheckModel(const CommonParams& p) const {
    if (p.model.has_value() && *p.model != options_.model_name) return ModelNotFound(*p.model);
    return absl::OkStatus();
  }

  const HttpServerOptions options_;
  engine::Engine* const engine_;           // not owned
  const tokenizer::Tokenizer* const tok_;  // not owned
  Metrics* const metrics_;                 // not owned
  const int64_t created_;
  const Clock::time_point started_;  // for /v1/stats uptime
  std::string chart_js_;             // Chart.js source; empty when not found
  std::string dashboard_html_;       // GET /dashboard, built once in Bind()
  ProtocolLimits limits_;
  tokenizer::ChatTemplateInfo chat_template_;
  absl::Status chat_template_error_;
  BacklogServer http_;
  int port_ = 0;
  std::thread listener_;
  std::atomic<int> in_flight_{0};  // requests routed whose response is not yet done
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options,
                                                              engine::Engine* engine,
                                                              const tokenizer::Tokenizer* tokenizer,
                                                              Metrics* metrics) {
  if (options.max_context < 1) {
    return absl::InvalidArgumentError("HttpServerOptions::max_context must be >= 1");
  }
  auto impl = std::make_unique<Impl>(options, engine, tokenizer, metrics);
  if (absl::Status s = impl->Bind(); !s.ok()) return s;
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() { Shutdown(); }
int HttpServer::port() const { return impl_->port(); }
void HttpServer::Stop() { impl_->Stop(); }
bool HttpServer::WaitResponsesWritten(absl::Duration timeout) {
  return impl_->WaitResponsesWritten(timeout);
}
void HttpServer::Shutdown() { impl_->Shutdown(); }

}  // namespace kvserve::server
