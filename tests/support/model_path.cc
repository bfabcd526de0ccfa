#include "tests/support/model_path.h"

#include <sys/stat.h>

#include <cstdlib>
#include <vector>

namespace kvserve::testing {
namespace {

bool IsFile(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Candidate locations in search order; the env var, when set, is the only one.
std::vector<std::string> Candidates() {
  if (const char* env = std::getenv("KVSERVE_MODEL"); env != nullptr && env[0] != '\0') {
    return {env};
  }
  const char* home = std::getenv("HOME");
  const std::string base = std::string(home != nullptr ? home : "") + "/.cache/kvserve/";
  return {base + "models/" + kModelFileName, base + kModelFileName};
}

}  // namespace

std::string ModelPath() {
  for (const std::string& p : Candidates()) {
    if (IsFile(p)) return p;
  }
  return "";
}

std::string ModelMissingMessage() {
  std::string msg = "model file not found; tried:";
  for (const std::string& p : Candidates()) msg += " " + p;
  msg +=
      ". Set KVSERVE_MODEL to the path of SmolLM2-135M-Instruct.Q4_1.gguf, or run only "
      "unit tests (ctest -L unit).";
  return msg;
}

}  // namespace kvserve::testing
