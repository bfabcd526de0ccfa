#include "server/cli_common.h"

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

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
  cli->Flag("device", "NAME", "cpu",
            "where the weight matmuls run: cpu, cuda (GPU 0) or cuda:N; attention and the KV "
            "cache stay on the CPU");
}

absl::StatusOr<LoadedModel> LoadModel(const std::string& path, int n_threads,
                                      const std::string& device) {
  LoadedModel m;
  auto model = model::LlamaModel::Load(path, n_threads, device);
  if (!model.ok()) return model.status();
  m.model = std::move(*model);
  auto tok = tokenizer::Tokenizer::FromGguf(m.model->file());
  if (!tok.ok()) return tok.status();
  m.tokenizer = std::move(*tok);
  return m;
}

void AddKvCompressionFlags(CliArgs* cli) {
  const kvcache::KvCompressorOptions d;
  cli->Flag("kv-policy", "NAME", "",
            "compress the KV cache with this policy between forward passes (none, streaming, h2o, "
            "snapkv, quant-uniform, attention-guided); empty: no compression machinery");
  cli->Flag("kv-ratio", "R", "1", "target KV size as a fraction of the uncompressed size, (0, 1]");
  cli->Flag("kv-sink-blocks", "N", std::to_string(d.policy.sink_blocks),
            "first blocks never compressed (attention sinks)");
  cli->Flag("kv-recent-tokens", "N", std::to_string(d.policy.recent_tokens),
            "most recent positions never compressed");
  cli->Flag("kv-alpha", "A", absl::StrCat(d.policy.alpha),
            "attention-guided score: weight of the moving average vs the latest step");
  cli->Flag("kv-ema-decay", "D", absl::StrCat(d.ema_decay),
            "weight of history in the moving average");
  cli->Flag("kv-observation-window", "N", std::to_string(d.observation_window),
            "last rows of each prefill micro-batch that score the blocks");
  cli->Flag("kv-score-floor", "F", absl::StrCat(d.policy.score_floor),
            "attention-guided: scores are raised by F times the layer's mean score");
  cli->Flag("kv-distortion", "LIST",
            absl::StrCat(d.policy.distortion[1], ",", d.policy.distortion[2], ",",
                         d.policy.distortion[3]),
            "attention-guided: value lost at int8,int4,int2 (f16 0, evicted 1)");
}

absl::StatusOr<KvCompressionFlags> ParseKvCompressionFlags(const CliArgs& cli) {
  KvCompressionFlags f;
  auto ratio = cli.GetDouble("kv-ratio", 0, 1);
  auto sinks = cli.GetInt("kv-sink-blocks", 0, 1 << 20);
  auto recent = cli.GetInt("kv-recent-tokens", 0, 1 << 24);
  auto alpha = cli.GetDouble("kv-alpha", 0, 1);
  auto decay = cli.GetDouble("kv-ema-decay", 0, 1);
  auto window = cli.GetInt("kv-observation-window", 1, 1 << 20);
  auto floor = cli.GetDouble("kv-score-floor", 0, 1e9);
  for (const absl::Status& st : {ratio.status(), sinks.status(), recent.status(), alpha.status(),
                                 decay.status(), window.status(), floor.status()}) {
    if (!st.ok()) return st;
  }
  f.options.policy.sink_blocks = static_cast<int>(*sinks);
  f.options.policy.recent_tokens = static_cast<int>(*recent);
  f.options.policy.alpha = static_cast<float>(*alpha);
  f.options.ema_decay = static_cast<float>(*decay);
  f.options.observation_window = static_cast<int>(*window);
  f.options.policy.score_floor = static_cast<float>(*floor);
  const std::vector<std::string> parts = absl::StrSplit(cli.Get("kv-distortion"), ',');
  if (parts.size() != 3) {
    return absl::InvalidArgumentError("--kv-distortion: expected three numbers (int8,int4,int2)");
  }
  for (int i = 0; i < 3; ++i) {
    double v = 0;
    if (!absl::SimpleAtod(parts[i], &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--kv-distortion: '", parts[i], "' is not a number"));
    }
    f.options.policy.distortion[i + 1] = static_cast<float>(v);
  }
  if (absl::Status st = kvcache::ValidateCompressorOptions(f.options); !st.ok()) return st;
  if (!cli.Get("kv-policy").empty()) {
    f.spec = kvcache::KvCompressionSpec{cli.Get("kv-policy"), *ratio};
    if (absl::Status st = kvcache::ValidateCompressionSpec(*f.spec); !st.ok()) return st;
  }
  return f;
}

}  // namespace kvserve::server
