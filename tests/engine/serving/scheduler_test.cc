// The scheduling policies on hand-made sequences over a real paged KV cache:
// the token budget, admission order, preemption, and every tenant limit
// (max_concurrent, KV budget, fair share by weight).
#include "engine/serving/scheduler.h"

#include <array>
#include <memory>

#include "gtest/gtest.h"
#include "kvcache/paged_kv_cache.h"

namespace kvserve::engine {
namespace {

ScheduleLimits Limits(int max_batch_tokens, int max_running) {
  ScheduleLimits l;
  l.max_batch_tokens = max_batch_tokens;
  l.max_running = max_running;
  return l;
}

constexpr int kBlockTokens = 16;

class SchedulerTest : public ::testing::Test {
 protected:
  // Starts over: no sequences and an empty cache of n_blocks.
  void MakeCache(int n_blocks) {
    seqs_.clear(), running_.clear(), waiting_.clear();
    // One layer, one head of 16 dims: a block is 16 tokens x 16 dims x 2 (K,
    // V) x 2 bytes.
    const kvcache::KvShape shape{1, 1, 16};
    const size_t block_bytes = size_t{kBlockTokens} * 16 * 2 * 2;
    auto kv = kvcache::PagedKvCache::Create(shape, block_bytes * n_blocks, kBlockTokens);
    ASSERT_TRUE(kv.ok()) << kv.status();
    kv_ = std::move(*kv);
    ASSERT_EQ(kv_->pool().n_blocks(), n_blocks);
  }

  // A waiting sequence of `prompt` tokens for tenant t. Its request is a
  // distinct fake address: the scheduler only compares request pointers.
  Sequence* Waiting(int prompt, int tenant = 0, uint64_t arrival = 0) {
    auto s = std::make_unique<Sequence>();
    s->id = static_cast<int>(seqs_.size());
    s->request = reinterpret_cast<RequestState*>(&fake_requests_[seqs_.size()]);
    s->tenant = tenant;
    s->arrival = arrival == 0 ? seqs_.size() : arrival;
    s->tokens.assign(prompt, 1);
    s->prompt_len = prompt;
    waiting_.push_back(s.get());
    seqs_.push_back(std::move(s));
    return seqs_.back().get();
  }

  // A running sequence that has computed its prompt and awaits one decode.
  Sequence* Decoding(int prompt, int tenant = 0) {
    Sequence* s = Waiting(prompt, tenant);
    waiting_.pop_back();
    s->tokens.push_back(1);
    s->num_computed = prompt;
    s->running = true;
    EXPECT_TRUE(kv_->Reserve(s->id, prompt));
    running_.push_back(s);
    return s;
  }

  // A running sequence `computed` tokens into a prompt of `prompt`, at most
  // `chunk` tokens a step.
  Sequence* Prefilling(int prompt, int computed, int chunk) {
    Sequence* s = Waiting(prompt);
    waiting_.pop_back();
    s->num_computed = computed;
    s->prefill_chunk_tokens = chunk;
    s->running = true;
    EXPECT_TRUE(kv_->Reserve(s->id, computed));
    running_.push_back(s);
    return s;
  }

  SchedulerDecision Run(const std::string& policy, const ScheduleLimits& limits) {
    auto sched = MakeScheduler(policy);
    EXPECT_TRUE(sched.ok()) << sched.status();
    return (*sched)->Schedule(running_, waiting_, *kv_, limits);
  }

  static int TokensOf(const SchedulerDecision& d, const Sequence* s) {
    for (const ScheduledChunk& c : d.chunks) {
      if (c.seq == s) return c.n_tokens;
    }
    return 0;
  }

  std::unique_ptr<kvcache::PagedKvCache> kv_;
  std::vector<std::unique_ptr<Sequence>> seqs_;
  std::vector<Sequence*> running_, waiting_;
  std::array<char, 64> fake_requests_{};
};

TEST_F(SchedulerTest, UnknownPolicyIsAnErrorNamingTheChoices) {
  auto s = MakeScheduler("lottery");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("fcfs, fair"), std::string::npos) << s.status();
}

TEST_F(SchedulerTest, DecodesFirstThenAdmissionsInOrderWithinTheTokenBudget) {
  for (const std::string policy : {"fcfs", "fair"}) {
    SCOPED_TRACE(policy);
    MakeCache(64);
    Sequence* d = Decoding(32);
    Sequence* a = Waiting(100);
    Sequence* b = Waiting(100);
    SchedulerDecision dec = Run(policy, Limits(150, 8));
    EXPECT_EQ(TokensOf(dec, d), 1);
    EXPECT_EQ(TokensOf(dec, a), 100);
    EXPECT_EQ(TokensOf(dec, b), 49);  // the rest of the budget: a chunk
    EXPECT_EQ(dec.admitted, (std::vector<Sequence*>{a, b}));
    EXPECT_TRUE(dec.preempted.empty());
  }
}

TEST_F(SchedulerTest, PoolShortageStopsAdmissionsWithoutJumpingTheQueue) {
  MakeCache(8);
  Sequence* big = Waiting(200);   // 13 blocks: never fits now
  Sequence* small = Waiting(16);  // would fit, but must not overtake
  SchedulerDecision d = Run("fcfs", Limits(512, 8));
  EXPECT_TRUE(d.empty());
  EXPECT_EQ(TokensOf(d, big) + TokensOf(d, small), 0);
}

TEST_F(SchedulerTest, AdmissionsLeaveRunningPromptsTheBlocksTheyStillNeed) {
  for (const int n_blocks : {9, 10}) {
    SCOPED_TRACE(n_blocks);
    MakeCache(n_blocks);
    // a: 6 blocks of prompt, 1 computed, 1 more this step, 4 still owed.
    Sequence* a = Prefilling(96, 16, 16);
    Sequence* b = Waiting(64);  // 4 blocks, one chunk
    SchedulerDecision d = Run("fcfs", Limits(512, 8));
    EXPECT_EQ(TokensOf(d, a), 16);
    if (n_blocks == 9) {
      // 7 free after a's chunk; b's 4 and a's 4 owed do not both fit:
      // admitting b would have a preempt it (or itself) within a few steps.
      EXPECT_TRUE(d.admitted.empty());
    } else {
      EXPECT_EQ(d.admitted, (std::vector<Sequence*>{b}));
      EXPECT_EQ(TokensOf(d, b), 64);
    }
    EXPECT_TRUE(d.preempted.empty());
  }
}

TEST_F(SchedulerTest, ACompressedPromptIsAdmittedOnItsFirstChunk) {
  MakeCache(9);
  Sequence* a = Prefilling(96, 16, 16);
  // Compressed between chunks, b never holds its whole prompt in f16: only
  // its chunk (and a's owed blocks) must fit.
  Sequence* b = Waiting(64);
  b->kv_spec = {"attention-guided", 0.25};
  b->prefill_chunk_tokens = 16;
  SchedulerDecision d = Run("fcfs", Limits(512, 8));
  EXPECT_EQ(d.admitted, (std::vector<Sequence*>{b}));
  EXPECT_EQ(TokensOf(d, b), 16);
  EXPECT_EQ(TokensOf(d, a), 16);  // a's prefill goes on beside it
  EXPECT_TRUE(d.preempted.empty());
}

TEST_F(SchedulerTest, APromptAloneIsAdmittedEvenIfNotAllOfItFits) {
  MakeCache(4);
  Sequence* s = Waiting(128);  // 8 blocks; its 2-block chunk fits
  s->prefill_chunk_tokens = 32;
  SchedulerDecision d = Run("fcfs", Limits(512, 8));
  EXPECT_EQ(d.admitted, (std::vector<Sequence*>{s}));
  EXPECT_EQ(TokensOf(d, s), 32);
}

TEST_F(SchedulerTest, MaxConcurrentCapsOnlyItsOwnTenant) {
  for (const std::string policy : {"fcfs", "fair"}) {
    SCOPED_TRACE(policy);
    MakeCache(64);
    ScheduleLimits limits = Limits(512, 16);
    limits.tenants.resize(3);
    limits.tenants[1].max_concurrent = 2;
    Decoding(16, 1);
    Sequence* a1 = Waiting(16, 1);
    Sequence* a2 = Waiting(16, 1);
    Sequence* b1 = Waiting(16, 2);
    SchedulerDecision d = Run(policy, limits);
    EXPECT_EQ(TokensOf(d, a1), 16);  // the second of tenant 1's two
    EXPECT_EQ(TokensOf(d, a2), 0);   // over its cap
    EXPECT_EQ(TokensOf(d, b1), 16);  // not held back by tenant 1's cap
  }
}

TEST_F(SchedulerTest, KvBudgetHoldsAdmissionsAndPreemptsOnlyTheTenantsOwn) {
  MakeCache(64);
  ScheduleLimits limits = Limits(512, 16);
  limits.tenants.resize(3);
  // Tenant 1 may add 1 more block; its two running sequences each need a
  // new block for their next token (both are at a block boundary).
  limits.tenants[1].budget_blocks = 1;
  Sequence* a_old = Decoding(32, 1);
  Sequence* b = Decoding(32, 2);  // tenant 2, latest arrival among the first three
  Sequence* a_new = Decoding(32, 1);
  Sequence* a_wait = Waiting(16, 1);
  Sequence* b_wait = Waiting(16, 2);
  SchedulerDecision d = Run("fair", limits);
  EXPECT_EQ(TokensOf(d, a_old), 1);
  EXPECT_EQ(TokensOf(d, b), 1);
  // Tenant 1's latest running sequence makes room, not tenant 2's.
  EXPECT_EQ(d.preempted, (std::vector<Sequence*>{a_new}));
  EXPECT_EQ(d.over_budget, (std::vector<int>{1}));
  // A step that preempts admits no one.
  EXPECT_EQ(TokensOf(d, a_wait) + TokensOf(d, b_wait), 0);

  // Without preemption pressure, the budget gates only tenant 1's admissions.
  MakeCache(64);
  limits.tenants[1].budget_blocks = 0;
  Sequence* held = Waiting(16, 1);
  Sequence* free_one = Waiting(16, 2);
  d = Run("fcfs", limits);
  EXPECT_EQ(TokensOf(d, held), 0);
  EXPECT_EQ(TokensOf(d, free_one), 16);
  EXPECT_TRUE(d.over_budget.empty());
}

TEST_F(SchedulerTest, FairGivesTheBudgetToTheTenantWithLessServiceFirst) {
  MakeCache(256);
  ScheduleLimits limits = Limits(512, 16);
  limits.tenants.resize(3);
  limits.tenants[1].vtime = 10000;  // has been served a lot (a flood)
  limits.tenants[2].vtime = 0;      // a light tenant
  Sequence* flood1 = Waiting(400, 1);
  Sequence* flood2 = Waiting(400, 1);
  Sequence* light = Waiting(400, 2);  // arrived last
  SchedulerDecision fair = Run("fair", limits);
  EXPECT_EQ(TokensOf(fair, light), 400);
  // Light's prompt completes in this step and light is far behind: the step
  // is kept short for its first token rather than filled with the flood's
  // prefill.
  EXPECT_EQ(TokensOf(fair, flood1), 0);
  EXPECT_EQ(TokensOf(fair, flood2), 0);

  // Not behind (equal service): the rest of the budget goes to the others.
  limits.tenants[1].vtime = 0;
  running_.clear();
  waiting_ = {flood1, flood2, light};
  SchedulerDecision even = Run("fair", limits);
  EXPECT_EQ(TokensOf(even, flood1) + TokensOf(even, light) + TokensOf(even, flood2), 512);

  // fcfs serves by arrival whatever the service so far.
  running_.clear();
  waiting_ = {flood1, flood2, light};
  SchedulerDecision fcfs = Run("fcfs", limits);
  EXPECT_EQ(TokensOf(fcfs, flood1), 400);
  EXPECT_EQ(TokensOf(fcfs, flood2), 112);
  EXPECT_EQ(TokensOf(fcfs, light), 0);
}

TEST_F(SchedulerTest, APoolBlockedTenantDoesNotHoldBackOthersRunningPrefills) {
  // Tenant 1 has been served least and waits for room that only tenant 2's
  // running prefill will free (once it finishes and is compressed, or ends);
  // tenant 2's prefill must still get the step, under both policies.
  for (const std::string policy : {"fair", "fcfs"}) {
    SCOPED_TRACE(policy);
    MakeCache(16);
    ScheduleLimits limits = Limits(128, 16);
    limits.tenants.resize(3);
    limits.tenants[1].vtime = 0;
    limits.tenants[2].vtime = 5000;
    Sequence* prefilling = Waiting(100, 2);  // 36 tokens still to prefill
    waiting_.pop_back();
    prefilling->running = true;
    prefilling->num_computed = 64;
    ASSERT_TRUE(kv_->Reserve(prefilling->id, 64));  // 4 of 16 blocks
    running_.push_back(prefilling);
    Sequence* filler = Waiting(16 * 8, 0);
    waiting_.pop_back();
    ASSERT_TRUE(kv_->Reserve(filler->id, 16 * 8));  // 8 more: 4 blocks free
    Sequence* blocked = Waiting(400, 1);            // a 128-token chunk needs 8 blocks
    SchedulerDecision d = Run(policy, limits);
    EXPECT_EQ(TokensOf(d, prefilling), 36);  // 3 blocks: fits the 4 free
    EXPECT_EQ(TokensOf(d, blocked), 0);
  }
}

TEST_F(SchedulerTest, FairAlternatesByWeightWithinAStep) {
  MakeCache(256);
  ScheduleLimits limits = Limits(96, 16);
  limits.tenants.resize(3);
  limits.tenants[1].weight = 1;
  limits.tenants[2].weight = 3;
  // Chunks of 16 tokens make the hand-out visible: after each chunk the
  // tenant's virtual time grows by 16 / weight.
  std::vector<Sequence*> one, two;
  for (int i = 0; i < 6; ++i) {
    one.push_back(Waiting(16, 1));
    two.push_back(Waiting(16, 2));
  }
  SchedulerDecision d = Run("fair", limits);
  int t1 = 0, t2 = 0;
  for (const ScheduledChunk& c : d.chunks) (c.seq->tenant == 1 ? t1 : t2) += c.n_tokens;
  // 96 tokens split about 1:3.
  EXPECT_EQ(t1 + t2, 96);
  EXPECT_EQ(t1, 32);
  EXPECT_EQ(t2, 64);
}

}  // namespace
}  // namespace kvserve::engine
