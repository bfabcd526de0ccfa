#include "common/thread_pool.h"

#include <algorithm>
#include <chrono>

#include "common/check.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KVSERVE_CPU_RELAX() _mm_pause()
#else
#define KVSERVE_CPU_RELAX() ((void)0)
#endif

namespace kvserve {
namespace {
// How long an idle worker spins before it sleeps. Long enough to bridge the
// gap between the kernels of one forward pass, short enough that an idle
// server does not burn a core.
constexpr auto kSpinFor = std::chrono::microseconds(2000);
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
  }
  wake_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    // Spin, then sleep, until a new generation or stop.
    auto spin_start = std::chrono::steady_clock::now();
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen && !stop_.load()) {
      KVSERVE_CPU_RELAX();
      // Yield now and then so that an oversubscribed machine (more pool
      // threads than free cores) still makes progress.
      if (++spins % 64 == 0) std::this_thread::yield();
      if (spins % 1024 == 0 && std::chrono::steady_clock::now() - spin_start > kSpinFor) {
        std::unique_lock<std::mutex> lock(mu_);
        ++sleepers_;
        wake_cv_.wait(lock, [&] {
          return stop_.load() || generation_.load(std::memory_order_acquire) != seen;
        });
        --sleepers_;
        spin_start = std::chrono::steady_clock::now();
      }
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    (*job_)(index, n_threads_);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::Run(const std::function<void(int, int)>& fn) {
  if (n_threads_ == 1) {
    fn(0, 1);
    return;
  }
  KV_CHECK_EQ(pending_.load(), 0);
  job_ = &fn;
  pending_.store(n_threads_ - 1, std::memory_order_release);
  {
    // Publishing under the lock means a worker about to sleep either sees
    // the new generation in its wait predicate or gets the notification.
    std::lock_guard<std::mutex> lock(mu_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    if (sleepers_ > 0) wake_cv_.notify_all();
  }
  fn(0, n_threads_);
  for (int spins = 1; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    KVSERVE_CPU_RELAX();
    if (spins % 64 == 0) std::this_thread::yield();
  }
  job_ = nullptr;
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t units = (n + grain - 1) / grain;
  const int workers = static_cast<int>(std::min<int64_t>(units, n_threads_));
  if (workers <= 1) {
    fn(0, n);
    return;
  }
  Run([&](int t, int) {
    if (t >= workers) return;
    const int64_t u0 = units * t / workers;
    const int64_t u1 = units * (t + 1) / workers;
    const int64_t b = u0 * grain;
    const int64_t e = std::min(n, u1 * grain);
    if (b < e) fn(b, e);
  });
}

}  // namespace kvserve
