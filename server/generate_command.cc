// kvserve generate: one prompt, one continuation, printed as it is decoded.
#include <chrono>
#include <cstdio>

#include "absl/strings/str_format.h"
#include "engine/model/sampler.h"
#include "engine/tokenizer/chat_template.h"
#include "kvcache/contiguous_kv_cache.h"
#include "server/cli_common.h"
#include "server/commands.h"

namespace kvserve::server {
namespace {

using Clock = std::chrono::steady_clock;

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "kvserve generate: %s\n", std::string(s.message()).c_str());
  return 1;
}

}  // namespace

int RunGenerate(const std::vector<std::string>& args) {
  CliArgs cli("generate",
              "Generates a continuation of --prompt and prints it, then a summary line "
              "(on stderr) with token counts and speeds.");
  AddModelFlags(&cli);
  cli.Flag("prompt", "TEXT", "", "the prompt", /*required=*/true);
  cli.Bool("chat", "wrap the prompt as a user message in the model's chat template");
  cli.Flag("system", "TEXT", "", "system message for --chat (default: the template's own)");
  cli.Flag("max-tokens", "N", "256", "maximum tokens to generate");
  cli.Flag("temperature", "T", "0.8", "sampling temperature; 0 = greedy");
  cli.Flag("top-k", "K", "40", "keep the K most likely tokens (0 = off)");
  cli.Flag("top-p", "P", "0.95", "nucleus sampling threshold (1 = off)");
  cli.Flag("min-p", "P", "0.05", "drop tokens below P times the top probability (0 = off)");
  cli.Flag("seed", "S", "0", "random seed; the same seed reproduces the same output");
  int code = 0;
  if (!ParseOrExit(&cli, args, &code)) return code;

  auto threads = cli.GetInt("threads", 0, 1024);
  auto max_tokens = cli.GetInt("max-tokens", 1, 1 << 20);
  auto temperature = cli.GetDouble("temperature", 0, 100);
  auto top_k = cli.GetInt("top-k", 0, 1 << 30);
  auto top_p = cli.GetDouble("top-p", 0, 1);
  auto min_p = cli.GetDouble("min-p", 0, 1);
  auto seed = cli.GetInt("seed", 0, INT64_MAX);
  if (!AllFlagsValid("generate", {threads.status(), max_tokens.status(), temperature.status(),
                                  top_k.status(), top_p.status(), min_p.status(), seed.status()}))
    return 2;

  auto loaded = LoadModel(cli.Get("model"), static_cast<int>(*threads), cli.Get("device"));
  if (!loaded.ok()) return Fail(loaded.status());
  model::LlamaModel& m = *loaded->model;
  const tokenizer::Tokenizer& tok = *loaded->tokenizer;
  const model::ModelConfig& c = m.config();

  std::vector<int32_t> prompt;
  if (cli.GetBool("chat")) {
    std::vector<tokenizer::ChatMessage> msgs;
    if (cli.Has("system")) msgs.push_back({"system", cli.Get("system")});
    msgs.push_back({"user", cli.Get("prompt")});
    auto text = tokenizer::ApplyChatTemplate(
        tok.chat_template(), msgs,
        /*add_generation_prompt=*/true, tok.TokenText(tok.bos_id()), tok.TokenText(tok.eos_id()));
    if (!text.ok()) return Fail(text.status());
    prompt = tok.Encode(*text, tok.add_bos(), /*parse_special=*/true);
  } else {
    prompt = tok.Encode(cli.Get("prompt"), tok.add_bos(), /*parse_special=*/false);
  }
  if (prompt.empty()) return Fail(absl::InvalidArgumentError("the prompt encodes to no tokens"));
  const int64_t total = static_cast<int64_t>(prompt.size()) + *max_tokens;
  if (total > c.n_ctx_train) {
    return Fail(absl::InvalidArgumentError(absl::StrFormat(
        "prompt (%d tokens) + max-tokens (%d) exceeds the model's context of %d tokens",
        prompt.size(), *max_tokens, c.n_ctx_train)));
  }

  kvcache::ContiguousKvCache kv({c.n_layers, c.n_kv_head, c.head_dim});
  if (auto s = kv.AddSequence(0, static_cast<int>(total)); !s.ok()) return Fail(s);
  model::Sampler sampler({static_cast<float>(*temperature), static_cast<int>(*top_k),
                          static_cast<float>(*top_p), static_cast<float>(*min_p),
                          static_cast<uint64_t>(*seed)});
  tokenizer::StreamingDecoder out(&tok);
  model::Batch batch;
  std::vector<float> logits;

  const auto t0 = Clock::now();
  constexpr int kPrefillChunk = 512;
  for (size_t start = 0; start < prompt.size(); start += kPrefillChunk) {
    const size_t end = std::min(prompt.size(), start + kPrefillChunk);
    batch.Clear();
    for (size_t i = start; i < end; ++i) {
      batch.Add(prompt[i], static_cast<int32_t>(i), 0, i + 1 == prompt.size());
    }
    if (auto s = m.Forward(batch, &kv, &logits); !s.ok()) return Fail(s);
  }
  const auto t1 = Clock::now();
  int generated = 0;
  int32_t pos = static_cast<int32_t>(prompt.size());
  while (generated < *max_tokens) {
    const int32_t next = sampler.Sample(logits.data(), c.n_vocab);
    ++generated;
    if (tok.IsEog(next)) break;
    const std::string piece = out.Push(next);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    if (generated == *max_tokens) break;
    batch.Clear();
    batch.Add(next, pos++, 0, true);
    if (auto s = m.Forward(batch, &kv, &logits); !s.ok()) return Fail(s);
  }
  const std::string rest = out.Flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  const auto t2 = Clock::now();
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  // The first generated token comes from the prefill's logits, so decode
  // speed counts the forward passes after it.
  const int decode_steps = std::max(0, generated - 1);
  std::fprintf(stderr,
               "[kvserve] prompt tokens: %zu, generated tokens: %d, prefill: %.1f tok/s, "
               "decode: %.1f tok/s, threads: %d\n",
               prompt.size(), generated, prompt.size() / std::max(prefill_s, 1e-9),
               decode_steps / std::max(decode_s, 1e-9), m.n_threads());
  return 0;
}

}  // namespace kvserve::server
