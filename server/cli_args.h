// Command-line flags of one kvserve subcommand: `--name value`,
// `--name=value` and boolean `--name`. Every flag is declared with its help
// text, so `--help` lists exactly what is accepted and unknown flags are an
// error rather than silently ignored.
//
// Thread-safety: single-threaded use at start-up.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvserve::server {

class CliArgs {
 public:
  CliArgs(std::string command, std::string summary)
      : command_(std::move(command)), summary_(std::move(summary)) {}

  // Declarations: name without dashes, value placeholder ("" for booleans),
  // default shown in help ("" = required unless boolean), help text.
  void Flag(const std::string& name, const std::string& placeholder, const std::string& def,
            const std::string& help, bool required = false);
  void Bool(const std::string& name, const std::string& help);

  // Parses argv (without the program and command names). InvalidArgument for
  // unknown flags, missing values and missing required flags. Sets
  // help_requested() on --help / -h instead of checking requirements.
  absl::Status Parse(const std::vector<std::string>& args);
  bool help_requested() const { return help_; }
  std::string Help() const;

  std::string Get(const std::string& name) const;
  bool Has(const std::string& name) const;
  bool GetBool(const std::string& name) const { return Has(name); }
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t min, int64_t max) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double min, double max) const;

 private:
  struct Spec {
    std::string placeholder, def, help;
    bool required = false;
    bool boolean = false;
  };
  std::string command_, summary_;
  std::vector<std::string> order_;
  std::map<std::string, Spec> specs_;
  std::map<std::string, std::string> values_;
  bool help_ = false;
};

}  // namespace kvserve::server
