// A fixed pool of worker threads for data-parallel loops on the engine thread.
//
// Thread-safety: ParallelFor must be called from one thread at a time (the
// engine thread); the pool is not reentrant. Work items run concurrently and
// must write disjoint outputs.
#pragma once

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
  // thread 0) and returns when all have finished. Each call splits its own
  // work by thread_index, so the split is a deterministic function of
  // n_threads alone.
  void Run(const std::function<void(int, int)>& fn);

  // Splits [0, n) into contiguous ranges of multiples of `grain` and calls
  // fn(begin, end) for each range; deterministic for a given n and pool size.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop(int index);

  const int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  const std::function<void(int, int)>* job_ = nullptr;  // not owned; valid during Run
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

}  // namespace kvserve
