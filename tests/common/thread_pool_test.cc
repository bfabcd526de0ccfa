#include "common/thread_pool.h"

#include <atomic>
#include <vector>

#include "gtest/gtest.h"

namespace kvserve {
namespace {

TEST(ThreadPoolTest, RunCallsEveryThreadOnce) {
  ThreadPool pool(3);
  for (int round = 0; round < 200; ++round) {
    std::vector<std::atomic<int>> hits(3);
    pool.Run([&](int t, int n) {
      EXPECT_EQ(n, 3);
      hits[t]++;
    });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1);
  }
}

TEST(ThreadPoolTest, ParallelForCoversRangeExactlyOnceInGrains) {
  ThreadPool pool(2);
  for (int64_t n : {0, 1, 5, 64, 1001}) {
    std::vector<std::atomic<int>> seen(n);
    pool.ParallelFor(n, 8, [&](int64_t b, int64_t e) {
      EXPECT_EQ(b % 8, 0);
      for (int64_t i = b; i < e; ++i) seen[i]++;
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(seen[i].load(), 1) << "n=" << n << " i=" << i;
  }
}

TEST(ThreadPoolTest, SingleThreadRunsInline) {
  ThreadPool pool(1);
  int calls = 0;
  pool.Run([&](int t, int n) {
    EXPECT_EQ(t, 0);
    EXPECT_EQ(n, 1);
    ++calls;
  });
  EXPECT_EQ(calls, 1);
}

TEST(ThreadPoolTest, WakesAfterWorkersFellAsleep) {
  ThreadPool pool(2);
  std::atomic<int> sum{0};
  pool.Run([&](int t, int) { sum += t + 1; });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // workers now sleep
  pool.Run([&](int t, int) { sum += t + 1; });
  EXPECT_EQ(sum.load(), 6);
}

}  // namespace
}  // namespace kvserve
