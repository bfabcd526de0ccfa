#include "server/cli_args.h"

#include <cerrno>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"

namespace kvserve::server {

void CliArgs::Flag(const std::string& name, const std::string& placeholder, const std::string& def,
                   const std::string& help, bool required) {
  order_.push_back(name);
  specs_[name] = Spec{placeholder, def, help, required, false};
}

void CliArgs::Bool(const std::string& name, const std::string& help) {
  order_.push_back(name);
  specs_[name] = Spec{"", "", help, false, true};
}

absl::Status CliArgs::Parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      help_ = true;
      return absl::OkStatus();
    }
    if (a.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "'"));
    }
    std::string name = a.substr(2), value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto it = specs_.find(name);
    if (it == specs_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " for '", command_, "' (see --help)"));
    }
    if (it->second.boolean) {
      if (has_value && value != "true" && value != "false") {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      }
      if (!has_value || value == "true") values_[name] = "true";
      continue;
    }
    if (!has_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
      value = args[++i];
    }
    values_[name] = value;
  }
  for (const auto& [name, spec] : specs_) {
    if (spec.required && !values_.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " is required (see --help)"));
    }
  }
  return absl::OkStatus();
}

std::string CliArgs::Help() const {
  std::string out = absl::StrCat("usage: kvserve ", command_, " [flags]\n\n", summary_, "\n\nflags:\n");
  for (const auto& name : order_) {
    const Spec& s = specs_.at(name);
    std::string left = absl::StrCat("  --", name, s.placeholder.empty() ? "" : " ", s.placeholder);
    if (left.size() < 28) left.resize(28, ' ');
    absl::StrAppend(&out, left, " ", s.help);
    if (s.required) absl::StrAppend(&out, " (required)");
    if (!s.def.empty()) absl::StrAppend(&out, " [default: ", s.def, "]");
    absl::StrAppend(&out, "\n");
  }
  absl::StrAppend(&out, "  --help                       show this help\n");
  return out;
}

bool CliArgs::Has(const std::string& name) const { return values_.count(name) != 0; }

std::string CliArgs::Get(const std::string& name) const {
  if (auto it = values_.find(name); it != values_.end()) return it->second;
  return specs_.at(name).def;
}

absl::StatusOr<int64_t> CliArgs::GetInt(const std::string& name, int64_t min, int64_t max) const {
  int64_t v;
  const std::string s = Get(name);
  if (!absl::SimpleAtoi(s, &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be an integer, got '", s, "'"));
  }
  if (v < min || v > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " must be in [", min, ", ", max, "], got ", v));
  }
  return v;
}

absl::StatusOr<double> CliArgs::GetDouble(const std::string& name, double min, double max) const {
  double v;
  const std::string s = Get(name);
  if (!absl::SimpleAtod(s, &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be a number, got '", s, "'"));
  }
  if (!(v >= min && v <= max)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " must be in [", min, ", ", max, "], got ", s));
  }
  return v;
}

}  // namespace kvserve::server
