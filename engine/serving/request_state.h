// The engine's record of one submitted request, which is also the front
// end's RequestHandle: the engine thread produces its events, a front-end
// thread consumes them and may cancel it.
//
// Thread-safety: Next, Done and Cancel from any thread; Push from the engine
// thread only; the const members are immutable after construction.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>

#include "absl/time/time.h"
#include "engine/serving/engine.h"
#include "engine/serving/request.h"

namespace kvserve::engine {

// Shared between the engine thread (producer of events) and the front end
// (consumer, canceller).
class RequestState : public RequestHandle {
 public:
  RequestState(GenerationRequest req, uint64_t arrival, std::function<void()> wake)
      : request(std::move(req)),
        arrival(arrival),
        submitted(std::chrono::steady_clock::now()),
        wake_(std::move(wake)),
        open_choices_(request.n) {}

  std::optional<StreamEvent> Next(absl::Duration timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                 [&] { return !events_.empty() || open_choices_ == 0; });
    if (events_.empty()) return std::nullopt;
    StreamEvent e = std::move(events_.front());
    events_.pop_front();
    return e;
  }

  bool Done() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return open_choices_ == 0 && events_.empty();
  }

  void Cancel() override {
    cancelled.store(true);
    wake_();
  }

  // Engine thread.
  void Push(StreamEvent e) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (e.finish != FinishReason::kNone) --open_choices_;
      events_.push_back(std::move(e));
    }
    cv_.notify_all();
  }

  const GenerationRequest request;
  const uint64_t arrival;
  const std::chrono::steady_clock::time_point submitted;
  std::atomic<bool> cancelled{false};

 private:
  std::function<void()> wake_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StreamEvent> events_;  // guarded by mu_
  int open_choices_;                // guarded by mu_
};

}  // namespace kvserve::engine
