// The validated, immutable configuration of `kvserve serve`.
//
// Settings come from an optional JSON config file (an object whose keys are
// the option names, spelled with '-' or '_') and then from command-line
// flags, which override the file. Every option is declared once, in
// ServerConfigOptions(), which both the flag parser and `--help` use, so a
// file key, a flag and its help text cannot drift apart. Unknown keys,
// unparsable values and out-of-range values are InvalidArgument errors whose
// message starts with the field name in C++ spelling ("max_n: ...", as the
// engine's validator writes it).
//
// Thread-safety: ServerConfig is an immutable value once built;
// ServerConfigBuilder is single-threaded.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/serving/engine_config.h"

namespace kvserve::config {

struct ServerConfig {
  std::string model_path;
  std::string model_name;  // served name; defaults to the GGUF file name without extension
  std::string host = "127.0.0.1";
  int port = 8080;        // HTTP
  int grpc_port = 50051;  // 0 disables the gRPC server
  int threads = 0;        // forward-pass threads; 0 = all cores
  // Where the weight matmuls run: "cpu", "cuda" or "cuda:N"
  // (engine/model/device.h). Option device.
  std::string device = "cpu";
  std::string log_level = "info";
  // On SIGTERM/SIGINT, how long requests in flight may take to finish
  // before they are aborted; 0 aborts them at once. Option drain-timeout.
  double drain_timeout_s = 30;
  // The tenants file (config/tenants.h); empty = single-tenant mode, no API
  // keys. A relative path is relative to the working directory, as `model`
  // is. Read by `kvserve serve`, not by Build(), so that SIGHUP can reload
  // it. Option tenants.
  std::string tenants_path;
  engine::EngineConfig engine;
};

// One option: its name (flag spelling, e.g. "kv-cache-bytes"), value
// placeholder and default as --help shows them, and what it does.
struct ConfigOption {
  std::string name;
  std::string placeholder;
  std::string default_text;
  std::string help;
};

// Every option in --help order.
const std::vector<ConfigOption>& ServerConfigOptions();

// "4096", "512MiB", "2GiB", "1.5G", "2 GB": bytes. Binary units K/Ki/KiB,
// M/Mi/MiB, G/Gi/GiB, T/Ti/TiB (powers of 1024) and decimal KB, MB, GB, TB
// (powers of 1000), case-insensitive. InvalidArgument for anything else,
// negative values and sizes beyond 2^63.
absl::StatusOr<uint64_t> ParseByteSize(std::string_view text);

// The KV cache size used when none is configured: a quarter of the memory
// available to the process (physical memory, or the cgroup limit when
// lower), capped at 2 GiB.
uint64_t DefaultKvCacheBytes();

// Collects settings from the sources, then validates them once.
class ServerConfigBuilder {
 public:
  ServerConfigBuilder() = default;

  // Sets option `name` ('-' or '_' spelling) from its text form. The value
  // is parsed here (InvalidArgument "name: ..."); ranges are checked by
  // Build().
  absl::Status Set(std::string_view name, std::string_view value);

  // Applies a JSON object: keys are option names, values strings or numbers.
  // `origin` names the source in errors (the file path).
  absl::Status ApplyJson(std::string_view json_text, std::string_view origin);
  // Reads the file at `path` and applies it.
  absl::Status ApplyFile(const std::string& path);

  // Fills the derived defaults (model name, KV cache size) and validates.
  absl::StatusOr<ServerConfig> Build() const;

 private:
  ServerConfig config_;
  bool kv_cache_bytes_set_ = false;
};

// Checks a complete candidate: the model file is readable, port in
// 1..65535, grpc_port in 0..65535 and different, threads in 0..1024, a device name
// model::ParseDevice accepts (not whether it is usable), a known log level, a non-empty
// model name, drain_timeout >= 0, and the engine part via engine::ValidateEngineConfig.
absl::StatusOr<ServerConfig> ValidateServerConfig(ServerConfig candidate);

}  // namespace kvserve::config
