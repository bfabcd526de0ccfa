#include "config/server_config.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/model/device.h"
#include "nlohmann/json.hpp"

namespace kvserve::config {
namespace {

constexpr uint64_t kGiB = 1ull << 30;

// Option names are matched in flag spelling ("max-n"); errors name the
// field in C++ spelling ("max_n"), as the engine's validator does.
std::string Canonical(std::string_view name) {
  return absl::StrReplaceAll(std::string(name), {{"_", "-"}});
}
std::string FieldName(std::string_view name) {
  return absl::StrReplaceAll(std::string(name), {{"-", "_"}});
}

absl::Status Bad(std::string_view name, std::string message) {
  return absl::InvalidArgumentError(absl::StrCat(FieldName(name), ": ", message));
}

absl::StatusOr<int> ParseInt(std::string_view name, std::string_view text) {
  int64_t v;
  if (!absl::SimpleAtoi(std::string(text), &v)) {
    return Bad(name, absl::StrCat("expected an integer, got '", std::string(text), "'"));
  }
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) {
    return Bad(name, absl::StrCat("value ", v, " is out of range"));
  }
  return static_cast<int>(v);
}

using Setter = std::function<absl::Status(ServerConfig*, std::string_view name, std::string_view)>;

Setter IntField(int ServerConfig::*field) {
  return [field](ServerConfig* c, std::string_view name, std::string_view v) -> absl::Status {
    auto i = ParseInt(name, v);
    if (!i.ok()) return i.status();
    c->*field = *i;
    return absl::OkStatus();
  };
}

Setter EngineIntField(int engine::EngineConfig::*field) {
  return [field](ServerConfig* c, std::string_view name, std::string_view v) -> absl::Status {
    auto i = ParseInt(name, v);
    if (!i.ok()) return i.status();
    c->engine.*field = *i;
    return absl::OkStatus();
  };
}

std::string FormatDouble(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// A numeric setting somewhere inside the config, reached by `at`.
template <typename T>
Setter NumberAt(T* (*at)(ServerConfig*)) {
  return [at](ServerConfig* c, std::string_view name, std::string_view v) -> absl::Status {
    double d = 0;
    if (!absl::SimpleAtod(std::string(v), &d) || !std::isfinite(d)) {
      return Bad(name, absl::StrCat("expected a number, got '", std::string(v), "'"));
    }
    if constexpr (std::is_integral_v<T>) {
      if (d != std::floor(d) || std::abs(d) > 1e9) {
        return Bad(name, absl::StrCat("expected an integer, got '", std::string(v), "'"));
      }
    }
    *at(c) = static_cast<T>(d);
    return absl::OkStatus();
  };
}

Setter StringField(std::string ServerConfig::*field) {
  return [field](ServerConfig* c, std::string_view, std::string_view v) -> absl::Status {
    c->*field = std::string(v);
    return absl::OkStatus();
  };
}

struct OptionSpec {
  ConfigOption option;
  Setter set;
};

const std::vector<OptionSpec>& Specs() {
  static const std::vector<OptionSpec> specs = [] {
    const engine::EngineConfig e;
    std::vector<OptionSpec> s;
    s.push_back({{"model", "PATH", "", "GGUF model file (Llama-family); required"},
                 StringField(&ServerConfig::model_path)});
    s.push_back({{"model-name", "NAME", "the GGUF file name without .gguf",
                  "model name served by /v1/models; requests must name it"},
                 StringField(&ServerConfig::model_name)});
    s.push_back({{"host", "ADDR", "127.0.0.1", "address the HTTP and gRPC servers listen on"},
                 StringField(&ServerConfig::host)});
    s.push_back({{"port", "PORT", "8080", "HTTP port"}, IntField(&ServerConfig::port)});
    s.push_back({{"grpc-port", "PORT", "50051", "gRPC port; 0 disables the gRPC server"},
                 IntField(&ServerConfig::grpc_port)});
    s.push_back({{"threads", "N", "0", "CPU threads for the forward pass (0 = all cores)"},
                 IntField(&ServerConfig::threads)});
    s.push_back({{"device", "NAME", "cpu",
                  "where the weight matmuls run: cpu, cuda (GPU 0) or cuda:N; attention and the "
                  "KV cache stay on the CPU"},
                 StringField(&ServerConfig::device)});
    s.push_back({{"log-level", "LEVEL", "info", "trace, debug, info, warn, error, critical, off"},
                 StringField(&ServerConfig::log_level)});
    s.push_back({{"drain-timeout", "SECONDS", "30",
                  "on SIGTERM/SIGINT, /ready and new requests get 503 while running and queued "
                  "requests get this long to finish; the rest then end with an error and the "
                  "server exits 0 (0 = do not wait)"},
                 NumberAt<double>([](ServerConfig* c) { return &c->drain_timeout_s; })});
    s.push_back({{"tenants", "FILE", "",
                  "tenants file (JSON): tenant ids, API key hashes, KV budgets, limits, weights "
                  "and default compression; every route but /health then needs "
                  "'Authorization: Bearer KEY'; SIGHUP reloads it (none = single-tenant, no keys)"},
                 StringField(&ServerConfig::tenants_path)});
    s.push_back({{"kv-cache-bytes", "SIZE", "min(25% of memory, 2GiB)",
                  "paged KV cache size: bytes or with a unit (512MiB, 2GiB, 1.5G, 4GB)"},
                 [](ServerConfig* c, std::string_view name, std::string_view v) -> absl::Status {
                   auto bytes = ParseByteSize(v);
                   if (!bytes.ok()) return Bad(name, std::string(bytes.status().message()));
                   c->engine.kv_cache_bytes = static_cast<size_t>(*bytes);
                   return absl::OkStatus();
                 }});
    s.push_back({{"max-running", "N", std::to_string(e.max_running),
                  "most sequences decoded together in one batch"},
                 EngineIntField(&engine::EngineConfig::max_running)});
    s.push_back({{"max-waiting", "N", std::to_string(e.max_waiting),
                  "most queued requests; beyond it requests get 429"},
                 EngineIntField(&engine::EngineConfig::max_waiting)});
    s.push_back({{"max-batch-tokens", "N", std::to_string(e.max_batch_tokens),
                  "token budget of one forward pass (long prompts are prefilled in chunks)"},
                 EngineIntField(&engine::EngineConfig::max_batch_tokens)});
    s.push_back({{"max-context", "N", "0",
                  "prompt + completion limit in tokens (0 = the model's training context)"},
                 EngineIntField(&engine::EngineConfig::max_context)});
    s.push_back({{"max-n", "N", std::to_string(e.max_n), "largest n (choices per request)"},
                 EngineIntField(&engine::EngineConfig::max_n)});
    s.push_back({{"max-logprobs", "N", std::to_string(e.max_logprobs),
                  "largest logprobs / top_logprobs a request may ask for"},
                 EngineIntField(&engine::EngineConfig::max_logprobs)});
    s.push_back({{"block-tokens", "N", std::to_string(e.block_tokens),
                  "tokens per KV cache block (a multiple of 16)"},
                 EngineIntField(&engine::EngineConfig::block_tokens)});
    s.push_back({{"prefix-cache", "BOOL", e.prefix_cache ? "true" : "false",
                  "reuse the KV of a prompt prefix already computed for the same tenant and "
                  "compression spec (true/false); cached prompts stay f16 until memory pressure"},
                 [](ServerConfig* c, std::string_view key, std::string_view v) -> absl::Status {
                   if (v == "true" || v == "on" || v == "1") {
                     c->engine.prefix_cache = true;
                   } else if (v == "false" || v == "off" || v == "0") {
                     c->engine.prefix_cache = false;
                   } else {
                     return absl::InvalidArgumentError(absl::StrCat(
                         std::string(key), ": expected true or false, got '", std::string(v), "'"));
                   }
                   return absl::OkStatus();
                 }});
    s.push_back(
        {{"scheduler", "POLICY", e.scheduler, "scheduling policy: fair (by tenant weight) or fcfs"},
         [](ServerConfig* c, std::string_view, std::string_view v) -> absl::Status {
           c->engine.scheduler = std::string(v);
           return absl::OkStatus();
         }});
    const kvcache::KvCompressorOptions& k = e.kv_compressor;
    s.push_back({{"kv-policy", "NAME", e.kv_compression.policy,
                  "default KV compression policy of requests that give none: none, streaming, "
                  "h2o, snapkv, quant-uniform, attention-guided"},
                 [](ServerConfig* c, std::string_view, std::string_view v) -> absl::Status {
                   c->engine.kv_compression.policy = std::string(v);
                   return absl::OkStatus();
                 }});
    s.push_back(
        {{"kv-ratio", "R", FormatDouble(e.kv_compression.ratio),
          "default target KV size as a fraction of the uncompressed size, in (0, 1]"},
         NumberAt<double>([](ServerConfig* c) { return &c->engine.kv_compression.ratio; })});
    s.push_back({{"kv-sink-blocks", "N", std::to_string(k.policy.sink_blocks),
                  "first KV blocks of a sequence never compressed (attention sinks)"},
                 NumberAt<int>(
                     [](ServerConfig* c) { return &c->engine.kv_compressor.policy.sink_blocks; })});
    s.push_back({{"kv-recent-tokens", "N", std::to_string(k.policy.recent_tokens),
                  "most recent positions of a sequence never compressed"},
                 NumberAt<int>([](ServerConfig* c) {
                   return &c->engine.kv_compressor.policy.recent_tokens;
                 })});
    s.push_back(
        {{"kv-alpha", "A", FormatDouble(k.policy.alpha),
          "block score weight of attention history vs the latest step, in [0, 1]"},
         NumberAt<float>([](ServerConfig* c) { return &c->engine.kv_compressor.policy.alpha; })});
    s.push_back(
        {{"kv-ema-decay", "D", FormatDouble(k.ema_decay),
          "weight of the old value in the attention moving average, in [0, 1)"},
         NumberAt<float>([](ServerConfig* c) { return &c->engine.kv_compressor.ema_decay; })});
    s.push_back({{"kv-observation-window", "N", std::to_string(k.observation_window),
                  "last rows of each prefill chunk whose attention scores the blocks"},
                 NumberAt<int>(
                     [](ServerConfig* c) { return &c->engine.kv_compressor.observation_window; })});
    s.push_back({{"kv-beta", "B", FormatDouble(k.beta),
                  "memory pressure: each round multiplies compressing sequences' target ratio by "
                  "(1 - B) before anyone is preempted, in (0, 1)"},
                 NumberAt<float>([](ServerConfig* c) { return &c->engine.kv_compressor.beta; })});
    s.push_back(
        {{"kv-min-ratio", "R", FormatDouble(k.min_ratio),
          "lowest target ratio memory pressure may impose, in (0, 1]"},
         NumberAt<double>([](ServerConfig* c) { return &c->engine.kv_compressor.min_ratio; })});
    s.push_back({{"debug-check-invariants", "BOOL", "false",
                  "verify the KV cache's block accounting after every engine step and abort on a "
                  "violation (for tests; costs time per step)"},
                 [](ServerConfig* c, std::string_view name, std::string_view v) -> absl::Status {
                   if (v == "true" || v == "1") {
                     c->engine.check_invariants = true;
                   } else if (v == "false" || v == "0") {
                     c->engine.check_invariants = false;
                   } else {
                     return Bad(name, "must be true or false, got '" + std::string(v) + "'");
                   }
                   return absl::OkStatus();
                 }});
    return s;
  }();
  return specs;
}

// Bytes of memory this process may use: physical memory, or the cgroup v2
// (or v1) limit when one is set and lower.
uint64_t AvailableMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  uint64_t mem = pages > 0 && page_size > 0
                     ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size)
                     : 8 * kGiB;
  for (const char* path :
       {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream f(path);
    std::string text;
    uint64_t limit;
    if (f >> text && absl::SimpleAtoi(text, &limit) && limit > 0) mem = std::min(mem, limit);
  }
  return mem;
}

}  // namespace

const std::vector<ConfigOption>& ServerConfigOptions() {
  static const std::vector<ConfigOption> options = [] {
    std::vector<ConfigOption> o;
    for (const OptionSpec& s : Specs()) o.push_back(s.option);
    return o;
  }();
  return options;
}

absl::StatusOr<uint64_t> ParseByteSize(std::string_view text) {
  const std::string s(absl::StripAsciiWhitespace(std::string(text)));
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  const std::string number = s.substr(0, i);
  const std::string unit = absl::AsciiStrToLower(absl::StripAsciiWhitespace(s.substr(i)));
  const std::string what = absl::StrCat("'", std::string(text),
                                        "' is not a size (use e.g. "
                                        "1073741824, 512MiB, 2GiB, 4GB)");
  if (number.empty() || number == ".") return absl::InvalidArgumentError(what);
  struct Unit {
    const char* name;
    double factor;
  };
  static constexpr Unit kUnits[] = {
      {"", 1.0},
      {"b", 1.0},
      {"k", 1024.0},
      {"ki", 1024.0},
      {"kib", 1024.0},
      {"kb", 1e3},
      {"m", 1048576.0},
      {"mi", 1048576.0},
      {"mib", 1048576.0},
      {"mb", 1e6},
      {"g", 1073741824.0},
      {"gi", 1073741824.0},
      {"gib", 1073741824.0},
      {"gb", 1e9},
      {"t", 1099511627776.0},
      {"ti", 1099511627776.0},
      {"tib", 1099511627776.0},
      {"tb", 1e12},
  };
  const Unit* u = nullptr;
  for (const Unit& k : kUnits) {
    if (unit == k.name) u = &k;
  }
  if (u == nullptr) return absl::InvalidArgumentError(what);
  if (number.find('.') == std::string::npos && u->factor == 1.0) {
    uint64_t v;
    if (!absl::SimpleAtoi(number, &v) || v > (1ull << 63)) return absl::InvalidArgumentError(what);
    return v;
  }
  double v;
  if (!absl::SimpleAtod(number, &v) || !std::isfinite(v)) return absl::InvalidArgumentError(what);
  const double bytes = std::floor(v * u->factor);
  if (bytes > 9.2233720368547758e18) {
    return absl::InvalidArgumentError(absl::StrCat("'", std::string(text), "' is too large"));
  }
  return static_cast<uint64_t>(bytes);
}

uint64_t DefaultKvCacheBytes() { return std::min<uint64_t>(AvailableMemoryBytes() / 4, 2 * kGiB); }

absl::Status ServerConfigBuilder::Set(std::string_view name, std::string_view value) {
  const std::string canonical = Canonical(name);
  for (const OptionSpec& s : Specs()) {
    if (s.option.name != canonical) continue;
    absl::Status st = s.set(&config_, canonical, value);
    if (st.ok() && canonical == "kv-cache-bytes") kv_cache_bytes_set_ = true;
    return st;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(std::string(name), ": unknown option (see kvserve serve --help)"));
}

absl::Status ServerConfigBuilder::ApplyJson(std::string_view json_text, std::string_view origin) {
  using nlohmann::json;
  const std::string where(origin);
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", where, " is not valid JSON"));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: ", where, " must hold a JSON object of option: value"));
  }
  std::map<std::string, std::string> seen;  // canonical -> key as written
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const std::string canonical = Canonical(key);
    if (auto dup = seen.find(canonical); dup != seen.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, ": set twice in ", where, " (also as '", dup->second, "')"));
    }
    seen[canonical] = key;
    const json& v = it.value();
    std::string text;
    if (v.is_string()) {
      text = v.get<std::string>();
    } else if (v.is_number_integer()) {
      text = v.dump();
    } else if (v.is_number_float() && std::isfinite(v.get<double>()) &&
               v.get<double>() == std::floor(v.get<double>()) &&
               std::fabs(v.get<double>()) < 9e18) {
      text = std::to_string(static_cast<int64_t>(v.get<double>()));
    } else if (v.is_number_float() && std::isfinite(v.get<double>())) {
      text = v.dump();  // shortest round-trip form, e.g. 0.25; integer options reject it
    } else if (v.is_boolean()) {
      text = v.get<bool>() ? "true" : "false";
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          key, ": expected a string, a number or a boolean in ", where, ", got ", v.dump()));
    }
    absl::Status s = Set(key, text);
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(s.message(), " (in ", where, ")"));
  }
  return absl::OkStatus();
}

absl::Status ServerConfigBuilder::ApplyFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::InvalidArgumentError(absl::StrCat("config: cannot read '", path, "'"));
  std::stringstream ss;
  ss << f.rdbuf();
  return ApplyJson(ss.str(), path);
}

absl::StatusOr<ServerConfig> ServerConfigBuilder::Build() const {
  ServerConfig c = config_;
  if (!kv_cache_bytes_set_) c.engine.kv_cache_bytes = DefaultKvCacheBytes();
  if (c.model_name.empty() && !c.model_path.empty()) {
    std::string stem = c.model_path.substr(c.model_path.find_last_of('/') + 1);
    if (stem.size() > 5 && absl::EndsWith(absl::AsciiStrToLower(stem), ".gguf")) {
      stem.resize(stem.size() - 5);
    }
    c.model_name = stem;
  }
  return ValidateServerConfig(std::move(c));
}

absl::StatusOr<ServerConfig> ValidateServerConfig(ServerConfig c) {
  if (c.model_path.empty()) {
    return absl::InvalidArgumentError(
        "model: a GGUF path is required (--model or the config file)");
  }
  if (access(c.model_path.c_str(), R_OK) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model: cannot read '", c.model_path, "'"));
  }
  if (c.model_name.empty()) return absl::InvalidArgumentError("model_name: must not be empty");
  if (c.host.empty()) return absl::InvalidArgumentError("host: must not be empty");
  if (c.port < 1 || c.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("port: must be in 1..65535, got ", c.port));
  }
  if (c.grpc_port < 0 || c.grpc_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("grpc_port: must be in 0..65535 (0 = off), got ", c.grpc_port));
  }
  if (c.grpc_port != 0 && c.grpc_port == c.port) {
    return absl::InvalidArgumentError(
        absl::StrCat("grpc_port: must differ from port (both are ", c.port, ")"));
  }
  if (c.threads < 0 || c.threads > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("threads: must be in 0..1024, got ", c.threads));
  }
  if (auto d = model::ParseDevice(c.device); !d.ok()) return d.status();
  static constexpr std::array<const char*, 7> kLevels = {"trace", "debug",    "info", "warn",
                                                         "error", "critical", "off"};
  if (std::find_if(kLevels.begin(), kLevels.end(),
                   [&](const char* l) { return c.log_level == l; }) == kLevels.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("log_level: '", c.log_level,
                     "' is not one of trace, debug, info, warn, error, critical, off"));
  }
  if (c.drain_timeout_s < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("drain_timeout: must be >= 0 seconds, got ", c.drain_timeout_s));
  }
  auto engine = engine::ValidateEngineConfig(c.engine);
  if (!engine.ok()) return engine.status();
  c.engine = *engine;
  return c;
}

}  // namespace kvserve::config
