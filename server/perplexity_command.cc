// kvserve perplexity: perplexity of a text file (see engine/model/perplexity.h
// for the exact protocol).
#include <cstdio>
#include <fstream>
#include <sstream>

#include "engine/model/perplexity.h"
#include "server/cli_common.h"
#include "server/commands.h"

namespace kvserve::server {

int RunPerplexity(const std::vector<std::string>& args) {
  CliArgs cli("perplexity",
              "Tokenises --file, cuts it into chunks of --ctx tokens, evaluates each chunk from an "
              "empty cache and prints the perplexity of every position but each chunk's first.");
  AddModelFlags(&cli);
  cli.Flag("file", "F", "", "UTF-8 text file", /*required=*/true);
  cli.Flag("ctx", "N", "512", "tokens per chunk");
  cli.Flag("max-tokens", "N", "0", "use only the first N tokens of the file (0 = all)");
  cli.Flag("batch", "N", "512", "tokens per forward pass");
  AddKvCompressionFlags(&cli);
  cli.Flag("block-tokens", "N", "16",
           "positions per KV block of the compressed cache (a multiple of 16)");
  int code = 0;
  if (!ParseOrExit(&cli, args, &code)) return code;
  auto threads = cli.GetInt("threads", 0, 1024);
  auto ctx = cli.GetInt("ctx", 2, 1 << 20);
  auto max_tokens = cli.GetInt("max-tokens", 0, INT64_MAX);
  auto batch = cli.GetInt("batch", 1, 1 << 16);
  auto kv = ParseKvCompressionFlags(cli);
  auto block_tokens = cli.GetInt("block-tokens", 16, 1 << 12);
  if (!AllFlagsValid("perplexity", {threads.status(), ctx.status(), max_tokens.status(),
                                    batch.status(), kv.status(), block_tokens.status()}))
    return 2;
  const std::optional<kvcache::KvCompressionSpec>& spec = kv->spec;
  std::ifstream in(cli.Get("file"), std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "kvserve perplexity: cannot read %s\n", cli.Get("file").c_str());
    return 1;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  auto loaded = LoadModel(cli.Get("model"), static_cast<int>(*threads), cli.Get("device"));
  if (!loaded.ok()) {
    std::fprintf(stderr, "kvserve perplexity: %s\n",
                 std::string(loaded.status().message()).c_str());
    return 1;
  }
  if (*ctx > loaded->model->config().n_ctx_train) {
    std::fprintf(stderr, "kvserve perplexity: --ctx %ld exceeds the model's context of %d\n",
                 static_cast<long>(*ctx), loaded->model->config().n_ctx_train);
    return 2;
  }
  std::vector<int32_t> tokens =
      loaded->tokenizer->Encode(ss.str(), loaded->tokenizer->add_bos(), /*parse_special=*/false);
  if (*max_tokens > 0 && static_cast<int64_t>(tokens.size()) > *max_tokens)
    tokens.resize(*max_tokens);
  std::fprintf(stderr, "[kvserve] %zu tokens, ctx %ld\n", tokens.size(), static_cast<long>(*ctx));
  model::PerplexityOptions opt;
  opt.ctx = static_cast<int>(*ctx);
  opt.batch = static_cast<int>(*batch);
  opt.kv_compression = spec;
  opt.kv_compressor = kv->options;
  opt.block_tokens = static_cast<int>(*block_tokens);
  opt.progress = [](int done, int total, double ppl) {
    std::fprintf(stderr, "[kvserve] chunk %d/%d: running perplexity %.4f\n", done, total, ppl);
  };
  auto r = model::ComputePerplexity(loaded->model.get(), tokens, opt);
  if (!r.ok()) {
    std::fprintf(stderr, "kvserve perplexity: %s\n", std::string(r.status().message()).c_str());
    return 1;
  }
  std::printf("perplexity: %.4f (tokens scored: %ld, chunks: %d, ctx: %ld, %.1f s, %.1f tok/s)\n",
              r->perplexity, static_cast<long>(r->n_scored), r->n_chunks, static_cast<long>(*ctx),
              r->seconds, r->n_chunks * *ctx / std::max(r->seconds, 1e-9));
  if (spec) {
    std::printf(
        "kv: policy %s, target ratio %g, achieved ratio %.4f, bytes %ld of %ld, policy time %.3f "
        "s\n",
        spec->policy.c_str(), spec->ratio,
        static_cast<double>(r->kv_bytes) / std::max<int64_t>(1, r->kv_bytes_uncompressed),
        static_cast<long>(r->kv_bytes), static_cast<long>(r->kv_bytes_uncompressed),
        r->kv_policy_seconds);
    std::printf("kv tiers (layer blocks):");
    for (int t = 0; t < kvcache::kNumKvTiers; ++t) {
      std::printf(" %s %ld", std::string(kvcache::KvTierName(kvcache::TierFromIndex(t))).c_str(),
                  static_cast<long>(r->kv_tier_units[t]));
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace kvserve::server
