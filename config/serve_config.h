// The validated, immutable configuration of `kvserve serve`.
//
// Built once at start-up from command-line flags (a config file joins with
// the serving work); every field is checked in one place so that the server
// never starts with a value it cannot honour.
//
// Thread-safety: an immutable value once built.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace kvserve::config {

struct ServeConfig {
  std::string model_path;
  std::string host = "127.0.0.1";
  int port = 8080;
  int threads = 0;  // 0 = all cores
  std::string log_level = "info";
};

// Checks a candidate config: the model file exists and is readable, the
// port is in 1..65535, threads in 0..1024, the log level is one of trace,
// debug, info, warn, error, critical, off. InvalidArgument names the field.
absl::StatusOr<ServeConfig> ValidateServeConfig(ServeConfig candidate);

}  // namespace kvserve::config
