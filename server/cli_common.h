// Helpers shared by the subcommands: parsing with uniform error output, and
// loading a model with its tokenizer.
#pragma once

#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/llama_model.h"
#include "engine/tokenizer/tokenizer.h"
#include "kvcache/kv_compressor.h"
#include "server/cli_args.h"

namespace kvserve::server {

// Parses; on --help prints help and returns 0 through *exit_code; on error
// prints it and returns 2. Returns true when the command should run.
bool ParseOrExit(CliArgs* cli, const std::vector<std::string>& args, int* exit_code);

struct LoadedModel {
  std::unique_ptr<model::LlamaModel> model;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
};

// device: "cpu", "cuda", "cuda:N" (engine/model/device.h).
absl::StatusOr<LoadedModel> LoadModel(const std::string& path, int n_threads,
                                      const std::string& device);

// Prints the first error among `flag_statuses` as "kvserve <command>: ..."
// and returns false; true when all are OK.
bool AllFlagsValid(const char* command, std::initializer_list<absl::Status> flag_statuses);

// Declares the flags every model-using command takes: --model, --threads,
// --device.
void AddModelFlags(CliArgs* cli);

// --kv-policy, --kv-ratio and the compressor's knobs (--kv-sink-blocks,
// --kv-recent-tokens, --kv-alpha, --kv-ema-decay, --kv-observation-window,
// --kv-distortion), for commands that run a compressed cache directly.
void AddKvCompressionFlags(CliArgs* cli);
// The spec (nullopt when --kv-policy is empty) and options from those
// flags; InvalidArgument naming the flag on a bad value.
struct KvCompressionFlags {
  std::optional<kvcache::KvCompressionSpec> spec;
  kvcache::KvCompressorOptions options;
};
absl::StatusOr<KvCompressionFlags> ParseKvCompressionFlags(const CliArgs& cli);

}  // namespace kvserve::server
