// kvserve bench: times prefill and batched decode on random tokens, for the
// side-by-side comparison with llama.cpp in bench/bench_vs_llamacpp.py.
#include <chrono>
#include <cstdio>
#include <random>

#include "engine/model/sampler.h"
#include "kvcache/contiguous_kv_cache.h"
#include "server/cli_common.h"
#include "server/commands.h"

namespace kvserve::server {

int RunBench(const std::vector<std::string>& args) {
  CliArgs cli("bench",
              "Per repetition: prefills --batch sequences of --prompt-tokens random tokens, then "
              "decodes --gen-tokens steps of all sequences at once (greedy). Prints one line per "
              "repetition (JSON with --json).");
  AddModelFlags(&cli);
  cli.Flag("prompt-tokens", "P", "512", "prompt tokens per sequence");
  cli.Flag("gen-tokens", "G", "128", "decode steps (each step decodes one token per sequence)");
  cli.Flag("batch", "B", "1", "sequences decoded together");
  cli.Flag("repeat", "R", "5", "repetitions");
  cli.Flag("ubatch", "N", "512", "maximum tokens per forward pass during prefill");
  cli.Flag("seed", "S", "1", "seed of the random prompt tokens");
  cli.Bool("json", "print JSON lines");
  int code = 0;
  if (!ParseOrExit(&cli, args, &code)) return code;
  auto threads = cli.GetInt("threads", 0, 1024);
  auto P = cli.GetInt("prompt-tokens", 1, 1 << 20);
  auto G = cli.GetInt("gen-tokens", 0, 1 << 20);
  auto B = cli.GetInt("batch", 1, 4096);
  auto R = cli.GetInt("repeat", 1, 1000);
  auto U = cli.GetInt("ubatch", 1, 1 << 16);
  auto seed = cli.GetInt("seed", 0, INT64_MAX);
  if (!AllFlagsValid("bench", {threads.status(), P.status(), G.status(), B.status(), R.status(),
                               U.status(), seed.status()}))
    return 2;
  auto m = model::LlamaModel::Load(cli.Get("model"), static_cast<int>(*threads), cli.Get("device"));
  if (!m.ok()) {
    std::fprintf(stderr, "kvserve bench: %s\n", std::string(m.status().message()).c_str());
    return 1;
  }
  const model::ModelConfig& c = (*m)->config();
  if (*P + *G > c.n_ctx_train) {
    std::fprintf(stderr, "kvserve bench: prompt + gen tokens exceed the context of %d\n",
                 c.n_ctx_train);
    return 2;
  }
  std::mt19937 rng(static_cast<uint32_t>(*seed));
  std::uniform_int_distribution<int32_t> dist(0, c.n_vocab - 1);
  model::Batch batch;
  std::vector<float> logits;
  for (int rep = 0; rep < *R; ++rep) {
    kvcache::ContiguousKvCache kv({c.n_layers, c.n_kv_head, c.head_dim});
    for (int s = 0; s < *B; ++s) (void)kv.AddSequence(s, static_cast<int>(*P + *G));
    std::vector<int32_t> last(*B);
    const auto t0 = std::chrono::steady_clock::now();
    // Prefill: sequences one after another, each in micro-batches.
    for (int s = 0; s < *B; ++s) {
      for (int64_t start = 0; start < *P; start += *U) {
        const int64_t end = std::min(*P, start + *U);
        batch.Clear();
        for (int64_t i = start; i < end; ++i) batch.Add(dist(rng), i, s, i + 1 == *P);
        if (auto st = (*m)->Forward(batch, &kv, &logits); !st.ok()) {
          std::fprintf(stderr, "kvserve bench: %s\n", std::string(st.message()).c_str());
          return 1;
        }
      }
      last[s] = model::ArgMax(logits.data(), c.n_vocab);
    }
    const auto t1 = std::chrono::steady_clock::now();
    for (int64_t step = 0; step < *G; ++step) {
      batch.Clear();
      for (int s = 0; s < *B; ++s) batch.Add(last[s], static_cast<int32_t>(*P + step), s, true);
      if (auto st = (*m)->Forward(batch, &kv, &logits); !st.ok()) {
        std::fprintf(stderr, "kvserve bench: %s\n", std::string(st.message()).c_str());
        return 1;
      }
      for (int s = 0; s < *B; ++s) {
        last[s] = model::ArgMax(logits.data() + static_cast<size_t>(s) * c.n_vocab, c.n_vocab);
      }
    }
    const auto t2 = std::chrono::steady_clock::now();
    const double ps = std::chrono::duration<double>(t1 - t0).count();
    const double ds = std::chrono::duration<double>(t2 - t1).count();
    const double ptps = *B * *P / std::max(ps, 1e-9);
    const double dtps = *G > 0 ? *B * *G / std::max(ds, 1e-9) : 0.0;
    if (cli.GetBool("json")) {
      std::printf(
          "{\"rep\":%d,\"batch\":%ld,\"prompt_tokens\":%ld,\"gen_tokens\":%ld,\"threads\":%d,"
          "\"device\":\"%s\",\"prefill_s\":%.6f,\"prefill_tok_s\":%.3f,\"decode_s\":%.6f,"
          "\"decode_tok_s\":%.3f}\n",
          rep, static_cast<long>(*B), static_cast<long>(*P), static_cast<long>(*G),
          (*m)->n_threads(), (*m)->backend().device(), ps, ptps, ds, dtps);
    } else {
      std::printf(
          "rep %d: prefill %ld x %ld tokens %.3f s (%.1f tok/s), decode %ld x %ld tokens "
          "%.3f s (%.1f tok/s)\n",
          rep, static_cast<long>(*B), static_cast<long>(*P), ps, ptps, static_cast<long>(*B),
          static_cast<long>(*G), ds, dtps);
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace kvserve::server
