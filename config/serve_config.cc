#include "config/serve_config.h"

#include <unistd.h>

#include <array>

#include "absl/strings/str_cat.h"

namespace kvserve::config {

absl::StatusOr<ServeConfig> ValidateServeConfig(ServeConfig c) {
  if (c.model_path.empty()) return absl::InvalidArgumentError("model: a GGUF path is required");
  if (access(c.model_path.c_str(), R_OK) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model: cannot read '", c.model_path, "'"));
  }
  if (c.host.empty()) return absl::InvalidArgumentError("host: must not be empty");
  if (c.port < 1 || c.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("port: must be in 1..65535, got ", c.port));
  }
  if (c.threads < 0 || c.threads > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("threads: must be in 0..1024, got ", c.threads));
  }
  static constexpr std::array<const char*, 7> kLevels = {"trace", "debug", "info", "warn",
                                                          "error", "critical", "off"};
  bool known = false;
  for (const char* l : kLevels) known |= c.log_level == l;
  if (!known) {
    return absl::InvalidArgumentError(absl::StrCat(
        "log_level: '", c.log_level, "' is not one of trace, debug, info, warn, error, critical, off"));
  }
  return c;
}

}  // namespace kvserve::config
