// The serving engine on a tiny random model: results through the engine
// equal a plain greedy loop, whatever the batching, preemption or
// cancellation around them, and every KV block comes back.
#include "engine/serving/engine.h"

#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "engine/model/llama_model.h"
#include "engine/model/sampler.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "kvcache/block_pool.h"
#include "kvcache/contiguous_kv_cache.h"
#include "tests/engine/model/tiny_model.h"
#include "tests/support/temp_dir.h"

namespace kvserve::engine {
namespace {

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::TinyLlamaSpec spec;
    spec.n_vocab = 64;
    spec.n_ctx = 512;
    spec.matrix_type = gguf::GgmlType::kQ8_0;
    testing::TinyLlamaWeights w;
    path_ = kvserve::testing::ProcessTempDir() + "/engine_tiny.gguf";
    ASSERT_TRUE(testing::WriteTinyLlama(path_, spec, &w).ok());
    auto m = model::LlamaModel::Load(path_, 2);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
    auto t = tokenizer::Tokenizer::FromGguf(model_->file());
    ASSERT_TRUE(t.ok()) << t.status();
    tok_ = std::move(*t);
  }

  // Bytes of one 16-token KV block of the tiny model (the engine's default
  // block size): pool sizes below are counted in blocks.
  int64_t BlockBytes() const {
    const auto& c = model_->config();
    return static_cast<int64_t>(
        kvcache::BlockPool::BytesPerBlock({c.n_layers, c.n_kv_head, c.head_dim}, 16));
  }

  std::unique_ptr<Engine> MakeEngine(EngineConfig c) {
    c.check_invariants = true;
    auto e = Engine::Create(c, model_.get(), tok_.get());
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }

  // Greedy continuation computed without the engine. The model is not
  // thread-safe: call only while no engine is running requests.
  std::vector<int32_t> Reference(const std::vector<int32_t>& prompt, int n) {
    const auto& c = model_->config();
    kvcache::ContiguousKvCache kv({c.n_layers, c.n_kv_head, c.head_dim});
    EXPECT_TRUE(kv.AddSequence(0, prompt.size() + n).ok());
    model::Batch b;
    for (size_t i = 0; i < prompt.size(); ++i) b.Add(prompt[i], i, 0, i + 1 == prompt.size());
    std::vector<float> logits;
    std::vector<int32_t> out;
    int pos = prompt.size();
    for (int i = 0; i < n; ++i) {
      EXPECT_TRUE(model_->Forward(b, &kv, &logits).ok());
      out.push_back(model::ArgMax(logits.data(), c.n_vocab));
      b.Clear();
      b.Add(out.back(), pos++, 0, true);
    }
    return out;
  }

  static std::vector<int32_t> Prompt(int len, int seed) {
    std::vector<int32_t> p;
    for (int i = 0; i < len; ++i) p.push_back(3 + (i * 7 + seed * 13) % 60);
    return p;
  }

  static GenerationRequest Greedy(std::vector<int32_t> prompt, int max_tokens) {
    GenerationRequest r;
    r.prompt = std::move(prompt);
    r.max_tokens = max_tokens;
    r.sampling.temperature = 0;
    r.ignore_eos = true;
    return r;
  }

  struct Collected {
    std::vector<std::vector<int32_t>> tokens;
    std::vector<FinishReason> finish;
    std::vector<std::string> text;
    std::vector<int64_t> kv_bytes, kv_bytes_uncompressed;  // from final events
  };

  static Collected Drain(RequestHandle& h, int n) {
    Collected c;
    c.tokens.resize(n);
    c.finish.assign(n, FinishReason::kNone);
    c.text.resize(n);
    c.kv_bytes.assign(n, -1);
    c.kv_bytes_uncompressed.assign(n, -1);
    while (!h.Done()) {
      auto e = h.Next(absl::Seconds(30));
      if (!e) continue;
      auto& toks = c.tokens[e->choice];
      toks.insert(toks.end(), e->tokens.begin(), e->tokens.end());
      c.text[e->choice] += e->text;
      if (e->finish != FinishReason::kNone) {
        c.finish[e->choice] = e->finish;
        c.kv_bytes[e->choice] = e->kv_bytes;
        c.kv_bytes_uncompressed[e->choice] = e->kv_bytes_uncompressed;
      }
    }
    return c;
  }

  static void WaitIdle(Engine& e) {
    for (int i = 0; i < 2000; ++i) {
      const EngineStats s = e.Stats();
      // Idle: only the prefix cache (if on) holds blocks.
      if (s.running == 0 && s.waiting == 0 && s.kv_blocks_used == s.prefix_cache_blocks) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    FAIL() << "engine did not go idle";
  }

  std::string path_;
  std::unique_ptr<model::LlamaModel> model_;
  std::unique_ptr<tokenizer::Tokenizer> tok_;
};

TEST_F(EngineTest, GreedyMatchesPlainLoop) {
  const auto want = Reference(Prompt(20, 1), 12);
  auto e = MakeEngine({});
  auto h = e->Submit(Greedy(Prompt(20, 1), 12));
  ASSERT_TRUE(h.ok()) << h.status();
  Collected c = Drain(**h, 1);
  EXPECT_EQ(c.tokens[0], want);
  EXPECT_EQ(c.finish[0], FinishReason::kLength);
  WaitIdle(*e);
}

TEST_F(EngineTest, ConcurrentRequestsEqualTheirSoloResults) {
  EngineConfig cfg;
  cfg.max_batch_tokens = 40;  // forces chunked prefill mixed with decodes
  std::vector<std::vector<int32_t>> want;
  for (int i = 0; i < 12; ++i) want.push_back(Reference(Prompt(10 + 9 * i, i), 8 + i % 5));
  auto e = MakeEngine(cfg);
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (int i = 0; i < 12; ++i) {
    auto h = e->Submit(Greedy(Prompt(10 + 9 * i, i), 8 + i % 5));
    ASSERT_TRUE(h.ok());
    hs.push_back(*h);
  }
  for (int i = 0; i < 12; ++i) {
    Collected c = Drain(*hs[i], 1);
    EXPECT_EQ(c.tokens[0], want[i]) << "request " << i;
  }
  WaitIdle(*e);
  EXPECT_EQ(e->Stats().requests_finished, 12);
}

TEST_F(EngineTest, PreemptionUnderPressureKeepsResultsAndFreesBlocks) {
  EngineConfig cfg;
  // Room for 12 blocks of 16 tokens: two or three of these requests at once.
  cfg.kv_cache_bytes = BlockBytes() * 12;
  cfg.max_batch_tokens = 64;
  std::vector<std::vector<int32_t>> want;
  for (int i = 0; i < 6; ++i) want.push_back(Reference(Prompt(50, i), 30));
  auto e = MakeEngine(cfg);
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (int i = 0; i < 6; ++i) {
    auto h = e->Submit(Greedy(Prompt(50, i), 30));
    ASSERT_TRUE(h.ok()) << h.status();
    hs.push_back(*h);
  }
  for (int i = 0; i < 6; ++i) {
    Collected c = Drain(*hs[i], 1);
    EXPECT_EQ(c.tokens[0], want[i]) << "request " << i;
  }
  WaitIdle(*e);
  EXPECT_GT(e->Stats().preemptions, 0);
  EXPECT_EQ(e->Stats().kv_blocks_free, e->Stats().kv_blocks_total);
}

const TenantStats* FindTenant(const EngineStats& st, const std::string& id) {
  for (const TenantStats& t : st.tenants) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

// Polls a tenant's KV bytes from another thread until Stop(), which
// returns the highest value seen.
class PeakTenantBytes {
 public:
  PeakTenantBytes(const Engine& e, std::string id)
      : thread_([this, &e, id = std::move(id)] {
          while (!done_.load()) {
            const EngineStats st = e.Stats();
            if (const TenantStats* t = FindTenant(st, id); t != nullptr) {
              peak_ = std::max(peak_, t->kv_bytes);
            }
            std::this_thread::sleep_for(std::chrono::microseconds(200));
          }
        }) {}
  ~PeakTenantBytes() { Stop(); }
  int64_t Stop() {
    done_.store(true);
    if (thread_.joinable()) thread_.join();
    return peak_;
  }

 private:
  std::atomic<bool> done_{false};
  int64_t peak_ = 0;  // written by thread_ until it is joined
  std::thread thread_;
};

TEST_F(EngineTest, SetTenantsValidates) {
  auto e = MakeEngine({});
  EXPECT_EQ(e->SetTenants({{""}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(e->SetTenants({{"a"}, {"a"}}).code(), absl::StatusCode::kInvalidArgument);
  TenantLimits zero_weight{"a"};
  zero_weight.weight = 0;
  EXPECT_EQ(e->SetTenants({zero_weight}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(e->SetTenants({{"a"}, {"b"}}).ok());
}

TEST_F(EngineTest, IdleEngineReportsNewTenantsAndRejectionsAtOnce) {
  auto e = MakeEngine({});
  TenantLimits a{"a"};
  a.max_queued = 1;
  a.kv_budget_bytes = 1;  // nothing fits: every request is refused up front
  ASSERT_TRUE(e->SetTenants({a}).ok());
  // The table shows up without any request waking the engine.
  bool listed = false;
  for (int i = 0; i < 2000 && !listed; ++i) {
    listed = FindTenant(e->Stats(), "a") != nullptr;
    if (!listed) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(listed);
  GenerationRequest r = Greedy(Prompt(20, 0), 4);
  r.tenant = "a";
  EXPECT_FALSE(e->Submit(r).ok());
  // Read right away, with the engine idle: no step has run since.
  const EngineStats st = e->Stats();
  EXPECT_EQ(st.requests_rejected, 1);
  EXPECT_EQ(FindTenant(st, "a")->requests_rejected, 1);
}

TEST_F(EngineTest, TenantBudgetHoldsUnderLoadAndTouchesNoOtherTenant) {
  const int64_t block_bytes = BlockBytes();
  EngineConfig cfg;
  cfg.kv_cache_bytes = block_bytes * 64;
  cfg.max_batch_tokens = 64;
  auto e = MakeEngine(cfg);
  // Each request takes 5 blocks (50 + 30 tokens); tenant a may hold 12, so
  // two at a time and never a third.
  TenantLimits a{"a"};
  a.kv_budget_bytes = 12 * block_bytes;
  ASSERT_TRUE(e->SetTenants({a, {"b"}}).ok());

  // A request that can never fit the budget is refused up front.
  GenerationRequest too_big = Greedy(Prompt(250, 0), 10);
  too_big.tenant = "a";
  EXPECT_EQ(e->Submit(too_big).status().code(), absl::StatusCode::kInvalidArgument);

  std::vector<std::vector<int32_t>> want;
  for (int i = 0; i < 6; ++i) want.push_back(Reference(Prompt(50, i), 30));
  PeakTenantBytes peak_a(*e, "a");
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (int i = 0; i < 6; ++i) {
    GenerationRequest r = Greedy(Prompt(50, i), 30);
    r.tenant = i < 4 ? "a" : "b";
    auto h = e->Submit(r);
    ASSERT_TRUE(h.ok()) << h.status();
    hs.push_back(*h);
  }
  for (int i = 0; i < 6; ++i) {
    Collected c = Drain(*hs[i], 1);
    EXPECT_EQ(c.tokens[0], want[i]) << "request " << i;
  }
  WaitIdle(*e);
  const int64_t max_a = peak_a.Stop();
  const EngineStats st = e->Stats();
  EXPECT_GT(max_a, 0);
  EXPECT_LE(max_a, a.kv_budget_bytes);
  const TenantStats* ta = FindTenant(st, "a");
  const TenantStats* tb = FindTenant(st, "b");
  ASSERT_NE(ta, nullptr);
  ASSERT_NE(tb, nullptr);
  EXPECT_EQ(ta->requests_finished, 4);
  EXPECT_EQ(tb->requests_finished, 2);
  EXPECT_EQ(ta->requests_rejected, 1);
  EXPECT_EQ(ta->prompt_tokens % 50, 0);
  EXPECT_GE(ta->prompt_tokens, 4 * 50);
  EXPECT_EQ(tb->generation_tokens, 2 * 30);
  EXPECT_EQ(tb->preemptions, 0);
  EXPECT_EQ(ta->kv_bytes, 0);
  EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total);
}

TEST_F(EngineTest, TenantQueueCapRejectsWithResourceExhausted) {
  auto e = MakeEngine({});
  TenantLimits a{"a"};
  a.max_concurrent = 3;
  a.max_queued = 2;
  ASSERT_TRUE(e->SetTenants({a}).ok());
  std::vector<std::shared_ptr<RequestHandle>> hs;
  std::vector<int> rejected;
  absl::Status last;
  for (int i = 0; i < 7; ++i) {
    GenerationRequest r = Greedy(Prompt(30, i), 400);
    r.tenant = "a";
    auto h = e->Submit(r);
    if (h.ok()) {
      hs.push_back(*h);
    } else {
      rejected.push_back(i);
      last = h.status();
    }
  }
  // Three run and two wait; whether the engine thread stepped between the
  // submissions or not, the three that start at once are not counted as
  // queued, so the sixth is the first refused.
  EXPECT_EQ(rejected, (std::vector<int>{5, 6}));
  EXPECT_EQ(last.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(last.message().find("tenant 'a'"), std::string::npos) << last;
  // Another tenant (here the default one) is not affected.
  auto other = e->Submit(Greedy(Prompt(30, 9), 2));
  EXPECT_TRUE(other.ok()) << other.status();
  for (auto& h : hs) h->Cancel();
  for (auto& h : hs) Drain(*h, 1);
  Drain(**other, 1);
  WaitIdle(*e);
  EXPECT_EQ(e->Stats().kv_blocks_free, e->Stats().kv_blocks_total);
}

TEST_F(EngineTest, PrefixCacheSharesWithinATenantAndSpecOnly) {
  EngineConfig cfg;
  cfg.prefix_cache = true;
  auto e = MakeEngine(cfg);
  ASSERT_TRUE(e->SetTenants({{"a"}, {"b"}}).ok());
  const std::vector<int32_t> want = Reference(Prompt(200, 3), 6);
  auto run = [&](const std::string& tenant, std::optional<kvcache::KvCompressionSpec> spec) {
    GenerationRequest r = Greedy(Prompt(200, 3), 6);
    r.tenant = tenant;
    r.kv_compression = spec;
    auto h = e->Submit(r);
    EXPECT_TRUE(h.ok()) << h.status();
    int cached = -1;
    std::vector<int32_t> tokens;
    while (!(*h)->Done()) {
      auto ev = (*h)->Next(absl::Seconds(30));
      if (!ev) continue;
      tokens.insert(tokens.end(), ev->tokens.begin(), ev->tokens.end());
      if (ev->finish != FinishReason::kNone) cached = ev->cached_tokens;
    }
    EXPECT_EQ(tokens, want) << tenant;
    return cached;
  };
  EXPECT_EQ(run("a", std::nullopt), 0);  // first: computes everything
  // Every full block but the one holding the last prompt token: 192 of 200.
  EXPECT_EQ(run("a", std::nullopt), 192);
  EXPECT_EQ(run("b", std::nullopt), 0);  // another tenant never sees a's blocks
  EXPECT_EQ(run("b", std::nullopt), 192);
  EXPECT_EQ(run("a", kvcache::KvCompressionSpec{"h2o", 0.5}), 0);  // another spec
  WaitIdle(*e);
  const EngineStats st = e->Stats();
  EXPECT_EQ(st.prefix_cache_hit_tokens, 2 * 192);
  EXPECT_EQ(FindTenant(st, "a")->cached_prompt_tokens, 192);
  EXPECT_EQ(FindTenant(st, "b")->cached_prompt_tokens, 192);
  // Idle: only the cache holds blocks.
  EXPECT_GT(st.prefix_cache_blocks, 0);
  EXPECT_EQ(st.kv_blocks_used, st.prefix_cache_blocks);
}

TEST_F(EngineTest, PrefixCacheUnderPressureWithAbortsKeepsResultsAndAccounts) {
  EngineConfig cfg;
  cfg.prefix_cache = true;
  // 24 blocks: a 96-token document shared by questions of 20-40 tokens plus
  // 30 outputs; five at once do not fit, so there are preemptions and
  // evictions of cached blocks too.
  cfg.kv_cache_bytes = BlockBytes() * 24;
  cfg.max_batch_tokens = 64;
  std::vector<int32_t> doc = Prompt(96, 5);
  std::vector<std::vector<int32_t>> prompts, want;
  for (int i = 0; i < 10; ++i) {
    std::vector<int32_t> p = i % 3 == 2 ? Prompt(96, 11 + i) : doc;  // some other documents
    std::vector<int32_t> q = Prompt(20 + 2 * i, 20 + i);
    p.insert(p.end(), q.begin(), q.end());
    prompts.push_back(p);
    want.push_back(Reference(p, 30));
  }
  auto e = MakeEngine(cfg);
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (int i = 0; i < 10; ++i) {
    auto h = e->Submit(Greedy(prompts[i], 30));
    ASSERT_TRUE(h.ok()) << h.status();
    hs.push_back(*h);
  }
  hs[4]->Cancel();
  hs[7]->Cancel();
  for (int i = 0; i < 10; ++i) {
    Collected c = Drain(*hs[i], 1);
    if (i == 4 || i == 7) continue;
    EXPECT_EQ(c.tokens[0], want[i]) << "request " << i;
  }
  WaitIdle(*e);
  const EngineStats st = e->Stats();
  EXPECT_GT(st.prefix_cache_hit_tokens, 0);
  EXPECT_GT(st.preemptions, 0);
  EXPECT_EQ(st.kv_blocks_used, st.prefix_cache_blocks);
  EXPECT_EQ(st.kv_bytes_used, st.prefix_cache_blocks * BlockBytes());
}

TEST_F(EngineTest, WaitingRequestsDoNotPinACacheThatFillsThePool) {
  EngineConfig cfg;
  cfg.prefix_cache = true;
  // 20 blocks; four documents of 80 tokens (5 blocks each) fill it with
  // cached blocks once they have run.
  cfg.kv_cache_bytes = BlockBytes() * 20;
  cfg.max_batch_tokens = 64;
  auto e = MakeEngine(cfg);
  std::vector<std::vector<int32_t>> docs;
  for (int d = 0; d < 4; ++d) {
    docs.push_back(Prompt(81, 40 + d));
    Drain(**e->Submit(Greedy(docs.back(), 1)), 1);
  }
  WaitIdle(*e);
  // Every question over a cached document: each would pin a document while
  // it waits; all must finish.
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (int i = 0; i < 8; ++i) {
    std::vector<int32_t> p = docs[i % 4];
    std::vector<int32_t> q = Prompt(24, 60 + i);
    p.insert(p.end(), q.begin(), q.end());
    auto h = e->Submit(Greedy(p, 20));
    ASSERT_TRUE(h.ok()) << h.status();
    hs.push_back(*h);
  }
  for (auto& h : hs) EXPECT_EQ(Drain(*h, 1).finish[0], FinishReason::kLength);
  WaitIdle(*e);
  EXPECT_GT(e->Stats().prefix_cache_hit_tokens, 0);
}

TEST_F(EngineTest, TenantOverBudgetCompressesItsOwnSequencesFirst) {
  const int64_t block_bytes = BlockBytes();
  EngineConfig cfg;
  cfg.kv_cache_bytes = block_bytes * 96;
  cfg.max_batch_tokens = 64;
  cfg.kv_compressor.policy.recent_tokens = 16;
  auto e = MakeEngine(cfg);
  // Three requests of 19 blocks (150 + 150 tokens) in f16 would need 57;
  // tenant a may hold 30 blocks' bytes, and compresses to fit.
  TenantLimits a{"a"};
  a.kv_budget_bytes = 30 * block_bytes;
  ASSERT_TRUE(e->SetTenants({a, {"b"}}).ok());
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (int i = 0; i < 4; ++i) {
    GenerationRequest r = Greedy(Prompt(150, 30 + i), 150);
    r.tenant = i < 3 ? "a" : "b";
    // Ratio 1: nothing is compressed until the budget asks for it.
    r.kv_compression = kvcache::KvCompressionSpec{"h2o", 1.0};
    auto h = e->Submit(r);
    ASSERT_TRUE(h.ok()) << h.status();
    hs.push_back(*h);
  }
  PeakTenantBytes peak_a(*e, "a");
  for (int i = 0; i < 4; ++i) {
    Collected c = Drain(*hs[i], 1);
    EXPECT_EQ(c.finish[0], FinishReason::kLength) << i;
  }
  WaitIdle(*e);
  const int64_t max_a = peak_a.Stop();
  const EngineStats st = e->Stats();
  EXPECT_LE(max_a, a.kv_budget_bytes);
  EXPECT_GT(FindTenant(st, "a")->budget_reclaims, 0) << "peak bytes of a: " << max_a;
  EXPECT_EQ(FindTenant(st, "b")->preemptions, 0);
  EXPECT_EQ(FindTenant(st, "b")->budget_reclaims, 0);
  EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total);
}

TEST_F(EngineTest, CancelFreesBlocksWithinAStep) {
  auto e = MakeEngine({});
  auto h = e->Submit(Greedy(Prompt(30, 2), 400));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->Next(absl::Seconds(30)).has_value());
  (*h)->Cancel();
  Collected c = Drain(**h, 1);
  EXPECT_EQ(c.finish[0], FinishReason::kAbort);
  WaitIdle(*e);
}

TEST_F(EngineTest, StopStringsEndTheChoiceAndAreNotReturned) {
  auto e = MakeEngine({});
  // Learn the greedy text, then stop on a piece of it spanning two tokens.
  auto h = e->Submit(Greedy(Prompt(12, 3), 10));
  ASSERT_TRUE(h.ok());
  const std::string full = Drain(**h, 1).text[0];
  ASSERT_GE(full.size(), 6u);
  GenerationRequest r = Greedy(Prompt(12, 3), 10);
  r.stop = {full.substr(3, 2)};
  auto h2 = e->Submit(r);
  ASSERT_TRUE(h2.ok());
  Collected c = Drain(**h2, 1);
  EXPECT_EQ(c.finish[0], FinishReason::kStop);
  EXPECT_EQ(c.text[0], full.substr(0, full.find(r.stop[0])));
  WaitIdle(*e);
}

TEST_F(EngineTest, SeedsReproduceAndChoicesDiffer) {
  auto e = MakeEngine({});
  GenerationRequest r;
  r.prompt = Prompt(8, 5);
  r.max_tokens = 16;
  r.sampling.temperature = 50.0f;  // the tiny random model is very peaked
  r.sampling.seed = 42;
  r.ignore_eos = true;
  r.n = 2;
  r.logprobs = 3;
  auto a = Drain(**e->Submit(r), 2);
  auto b = Drain(**e->Submit(r), 2);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_NE(a.tokens[0], a.tokens[1]);
  WaitIdle(*e);
}

TEST_F(EngineTest, RejectsWhatCanNeverRunAndAFullQueue) {
  EngineConfig cfg;
  cfg.max_n = 2;
  cfg.max_waiting = 1;
  auto e = MakeEngine(cfg);
  GenerationRequest r = Greedy(Prompt(8, 1), 4);
  r.n = 3;
  EXPECT_EQ(e->Submit(r).status().code(), absl::StatusCode::kInvalidArgument);
  r = Greedy({}, 4);
  EXPECT_EQ(e->Submit(r).status().code(), absl::StatusCode::kInvalidArgument);
  r = Greedy(Prompt(500, 1), 100);  // over the 512-token context
  auto too_long = e->Submit(r);
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_long.status().message().find("maximum context length is 512"), std::string::npos);
  r = Greedy({1, 999}, 4);
  EXPECT_EQ(e->Submit(r).status().code(), absl::StatusCode::kInvalidArgument);
  e->Shutdown();
  EXPECT_EQ(e->Submit(Greedy(Prompt(8, 1), 4)).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(EngineTest, KvCompressionPerRequestIsValidatedAppliedAndReported) {
  EngineConfig cfg;
  cfg.kv_compressor.policy.recent_tokens = 16;
  auto e = MakeEngine(cfg);
  GenerationRequest r = Greedy(Prompt(200, 1), 8);
  r.kv_compression = kvcache::KvCompressionSpec{"lru", 0.5};
  EXPECT_EQ(e->Submit(r).status().code(), absl::StatusCode::kInvalidArgument);
  r.kv_compression = kvcache::KvCompressionSpec{"h2o", 1.5};
  EXPECT_EQ(e->Submit(r).status().code(), absl::StatusCode::kInvalidArgument);

  // Uncompressed by default: stored bytes equal the f16 size.
  Collected plain = Drain(**e->Submit(Greedy(Prompt(200, 1), 8)), 1);
  EXPECT_GT(plain.kv_bytes[0], 0);
  EXPECT_EQ(plain.kv_bytes[0], plain.kv_bytes_uncompressed[0]);
  // Half the bytes asked, quantization only: the cache shrinks, the answer
  // stays complete.
  r.kv_compression = kvcache::KvCompressionSpec{"quant-uniform", 0.5};
  Collected q = Drain(**e->Submit(r), 1);
  EXPECT_EQ(q.finish[0], FinishReason::kLength);
  EXPECT_EQ(q.kv_bytes_uncompressed[0], plain.kv_bytes_uncompressed[0]);
  EXPECT_LT(q.kv_bytes[0], q.kv_bytes_uncompressed[0] * 6 / 10);
  // Only the policy given: the ratio is the server default's (1), so an
  // eviction policy has nothing to do.
  r.kv_compression = kvcache::KvCompressionSpec{"h2o", 0};
  Collected h = Drain(**e->Submit(r), 1);
  EXPECT_EQ(h.kv_bytes[0], h.kv_bytes_uncompressed[0]);
  WaitIdle(*e);
  const EngineStats st = e->Stats();
  EXPECT_GT(st.kv_moved_to[kvcache::TierIndex(kvcache::KvTier::kInt4)] +
                st.kv_moved_to[kvcache::TierIndex(kvcache::KvTier::kInt2)],
            0);
  EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total);
  for (int t = 0; t < kvcache::kNumKvTiers; ++t) EXPECT_EQ(st.kv_tier_units[t], 0);
}

TEST_F(EngineTest, PrefillChunkTokensCapsEachStepAndKeepsResults) {
  auto e = MakeEngine(EngineConfig{});
  GenerationRequest r = Greedy(Prompt(200, 2), 4);
  r.prefill_chunk_tokens = -1;
  EXPECT_EQ(e->Submit(r).status().code(), absl::StatusCode::kInvalidArgument);

  // 200 prompt tokens in chunks of 16 take 13 steps (the last samples the
  // first token), then 3 decode steps; unchunked the prompt takes one.
  // (Stats are read at idle: the last step is counted after its event.)
  r.prefill_chunk_tokens = 16;
  int64_t before = e->Stats().steps;
  Collected chunked = Drain(**e->Submit(r), 1);
  WaitIdle(*e);
  EXPECT_EQ(e->Stats().steps - before, 13 + 3);
  r.prefill_chunk_tokens = 0;
  before = e->Stats().steps;
  Collected whole = Drain(**e->Submit(r), 1);
  WaitIdle(*e);
  EXPECT_EQ(e->Stats().steps - before, 1 + 3);
  EXPECT_EQ(chunked.tokens, whole.tokens);
  WaitIdle(*e);
  EXPECT_EQ(chunked.tokens[0], Reference(Prompt(200, 2), 4));

  // Compression between chunks still ends with a complete answer.
  r.prefill_chunk_tokens = 16;
  r.kv_compression = kvcache::KvCompressionSpec{"streaming", 0.25};
  Collected s = Drain(**e->Submit(r), 1);
  EXPECT_EQ(s.finish[0], FinishReason::kLength);
  EXPECT_LT(s.kv_bytes[0], s.kv_bytes_uncompressed[0]);
  WaitIdle(*e);
  EXPECT_EQ(e->Stats().kv_blocks_free, e->Stats().kv_blocks_total);
}

TEST_F(EngineTest, UnderPressureCompressionComesBeforePreemption) {
  auto run = [&](const std::string& policy) {
    EngineConfig cfg;
    cfg.kv_cache_bytes = BlockBytes() * 16;
    cfg.max_batch_tokens = 64;
    // Ratio 1: nothing is compressed until memory runs short.
    cfg.kv_compression = {policy, 1.0};
    cfg.kv_compressor.policy.recent_tokens = 16;
    auto e = MakeEngine(cfg);
    std::vector<std::shared_ptr<RequestHandle>> hs;
    // Prompts of 3 blocks that grow to 7: the scheduler admits on the
    // prompts' room, so the pool runs short while the sequences decode.
    for (int i = 0; i < 6; ++i) hs.push_back(*e->Submit(Greedy(Prompt(40, i), 60)));
    for (auto& h : hs) {
      Collected c = Drain(*h, 1);
      EXPECT_EQ(c.finish[0], FinishReason::kLength);
      EXPECT_EQ(c.tokens[0].size(), 60u);
    }
    WaitIdle(*e);
    EXPECT_EQ(e->Stats().kv_blocks_free, e->Stats().kv_blocks_total);
    return e->Stats();
  };
  const EngineStats none = run("none");
  EXPECT_GT(none.preemptions, 0);
  EXPECT_EQ(none.kv_reclaim_rounds, 0);
  const EngineStats guided = run("attention-guided");
  EXPECT_GT(guided.kv_reclaim_rounds, 0);
  EXPECT_GT(guided.kv_moved_to[kvcache::TierIndex(kvcache::KvTier::kEvicted)], 0);
}

TEST_F(EngineTest, CompressionAdmitsMoreConcurrentSequences) {
  // Room for two of these sequences uncompressed (2 x 19 blocks).
  auto run = [&](std::optional<kvcache::KvCompressionSpec> spec) {
    EngineConfig cfg;
    cfg.kv_cache_bytes = BlockBytes() * 40;
    cfg.max_batch_tokens = 128;
    cfg.kv_compressor.policy.recent_tokens = 16;
    auto e = MakeEngine(cfg);
    std::vector<std::shared_ptr<RequestHandle>> hs;
    for (int i = 0; i < 6; ++i) {
      GenerationRequest r = Greedy(Prompt(240, i), 60);
      r.kv_compression = spec;
      hs.push_back(*e->Submit(r));
    }
    // Sample the running count while draining every request's events.
    int peak = 0;
    for (bool done = false; !done;) {
      peak = std::max(peak, e->Stats().running);
      done = true;
      for (auto& h : hs) {
        while (h->Next(absl::ZeroDuration())) {
        }
        done = done && h->Done();
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    WaitIdle(*e);
    return peak;
  };
  const int plain = run(std::nullopt);
  const int compressed = run(kvcache::KvCompressionSpec{"attention-guided", 0.125});
  EXPECT_GT(compressed, plain) << "peak running: " << plain << " uncompressed, " << compressed
                               << " at ratio 1/8";
}

// Holds the engine thread inside a step while closed, so that a request is
// certainly still running whatever the machine's speed.
class StepGate : public EngineObserver {
 public:
  void OnChoiceFinished(const RequestTimings&) override {}
  void OnStep(int, double) override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return open_; });
  }
  void Set(bool open) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = open;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
};

TEST_F(EngineTest, DrainFinishesWhatWasSubmittedAndRefusesTheRest) {
  const auto want_a = Reference(Prompt(20, 1), 24);
  const auto want_b = Reference(Prompt(30, 2), 16);
  StepGate gate;
  gate.Set(false);  // both requests are still in flight when Drain comes
  EngineConfig cfg;
  cfg.max_running = 1;  // b waits in the queue while a runs
  cfg.check_invariants = true;
  auto created = Engine::Create(cfg, model_.get(), tok_.get(), &gate);
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Engine> e = std::move(*created);
  // Opens the gate before `e` is destroyed, even after a failed assertion.
  absl::Cleanup open_gate = [&] { gate.Set(true); };
  auto a = e->Submit(Greedy(Prompt(20, 1), 24));
  auto b = e->Submit(Greedy(Prompt(30, 2), 16));
  ASSERT_TRUE(a.ok() && b.ok());
  e->Drain();
  e->Drain();  // idempotent
  EXPECT_FALSE(e->Ready());
  EXPECT_EQ(e->InFlight(), 2);
  auto late = e->Submit(Greedy(Prompt(8, 3), 4));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(late.status().message(), "the server is draining; retry on another replica");
  EXPECT_FALSE(e->WaitIdle(absl::Milliseconds(1)));
  gate.Set(true);
  ASSERT_TRUE(e->WaitIdle(absl::Seconds(60)));
  EXPECT_EQ(e->InFlight(), 0);
  Collected ca = Drain(**a, 1), cb = Drain(**b, 1);
  EXPECT_EQ(ca.tokens[0], want_a);
  EXPECT_EQ(ca.finish[0], FinishReason::kLength);
  EXPECT_EQ(cb.tokens[0], want_b);
  EXPECT_EQ(cb.finish[0], FinishReason::kLength);
  EXPECT_FALSE(e->Ready());  // draining stays until shutdown
  e->Shutdown();
  EXPECT_FALSE(e->Ready());
}

TEST_F(EngineTest, WaitIdleTimesOutOnALongRequestThatShutdownThenAborts) {
  StepGate gate;
  EngineConfig cfg;
  cfg.check_invariants = true;
  auto created = Engine::Create(cfg, model_.get(), tok_.get(), &gate);
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Engine> e = std::move(*created);
  // Opens the gate before `e` is destroyed, even after a failed assertion.
  absl::Cleanup open_gate = [&] { gate.Set(true); };
  EXPECT_TRUE(e->WaitIdle(absl::ZeroDuration()));  // nothing submitted yet
  auto h = e->Submit(Greedy(Prompt(30, 2), 400));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->Next(absl::Seconds(30)).has_value());
  gate.Set(false);  // the engine stops within a step, hundreds of tokens short
  e->Drain();
  EXPECT_FALSE(e->WaitIdle(absl::Milliseconds(20)));
  EXPECT_EQ(e->InFlight(), 1);
  // Shutdown joins the engine thread, so it runs beside the test; the gate
  // opens only once Submit shows that the shutdown has begun.
  std::thread stopper([&] { e->Shutdown(); });
  while (e->Submit(Greedy(Prompt(8, 3), 4)).status().message() != "the server is shutting down") {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  gate.Set(true);
  stopper.join();
  Collected c = Drain(**h, 1);
  EXPECT_EQ(c.finish[0], FinishReason::kAbort);
  EXPECT_LT(c.tokens[0].size(), 399u);
  EXPECT_TRUE(e->WaitIdle(absl::ZeroDuration()));
  EXPECT_EQ(e->InFlight(), 0);
}

}  // namespace
}  // namespace kvserve::engine
