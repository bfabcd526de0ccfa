#include "server/cli_common.h"

#include <cstdio>

namespace kvserve::server {

bool ParseOrExit(CliArgs* cli, const std::vector<std::string>& args, int* exit_code) {
  absl::Status s = cli->Parse(args);
  if (!s.ok()) {
    std::fprintf(stderr, "kvserve: %s\n", std::string(s.message()).c_str());
    *exit_code = 2;
    return false;
  }
  if (cli->help_requested()) {
    std::fputs(cli->Help().c_str(), stdout);
    *exit_code = 0;
    return false;
  }
  return true;
}

bool AllFlagsValid(const char* command, std::initializer_list<absl::Status> flag_statuses) {
  for (const absl::Status& s : flag_statuses) {
    if (!s.ok()) {
      std::fprintf(stderr, "kvserve %s: %s\n", command, std::string(s.message()).c_str());
      return false;
    }
  }
  return true;
}

void AddModelFlags(CliArgs* cli) {
  cli->Flag("model", "PATH", "", "GGUF model file (Llama-family)", /*required=*/true);
  cli->Flag("threads", "N", "0", "CPU threads for the forward pass (0 = all cores)");
}

absl::StatusOr<LoadedModel> LoadModel(const std::string& path, int n_threads) {
  LoadedModel m;
  auto model = model::LlamaModel::Load(path, n_threads);
  if (!model.ok()) return model.status();
  m.model = std::move(*model);
  auto tok = tokenizer::Tokenizer::FromGguf(m.model->file());
  if (!tok.ok()) return tok.status();
  m.tokenizer = std::move(*tok);
  return m;
}

}  // namespace kvserve::server
