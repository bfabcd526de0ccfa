// A fixed pool of worker threads for data-parallel loops on the engine thread.
//
// Workers spin briefly between jobs before sleeping: a forward pass issues a
// few hundred small parallel jobs per token, and waking threads through a
// condition variable each time would cost more than the jobs themselves.
//
// Thread-safety: Run/ParallelFor must be called from one thread at a time
// (the engine thread); the pool is not reentrant. Work items run
// concurrently and must write disjoint outputs.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kvserve {

class ThreadPool {
 public:
  // n_threads counts the calling thread, so 1 means "run inline".
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(thread_index, n_threads) once on every thread (the caller is
  // thread 0) and returns when all have finished. Callers split their work
  // by thread_index, so the split depends on n_threads alone.
  void Run(const std::function<void(int, int)>& fn);

  // Splits [0, n) into contiguous ranges made of whole `grain`s and calls
  // fn(begin, end) for each; deterministic for a given n and pool size.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop(int index);

  const int n_threads_;
  std::vector<std::thread> workers_;
  // A job is published by bumping generation_; workers count down pending_.
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  const std::function<void(int, int)>* job_ = nullptr;  // not owned; valid during Run
  std::mutex mu_;                // guards sleeping workers only
  std::condition_variable wake_cv_;
  int sleepers_ = 0;             // guarded by mu_
};

}  // namespace kvserve
