// The serving engine: one thread that owns the scheduler, the paged KV cache
// and the model, and runs the loop
//   schedule() -> forward pass over the batch -> update(outputs)
// until shut down. Front ends talk to it only through Submit (a thread-safe
// queue into the engine) and the RequestHandle each request gets back (a
// thread-safe queue out of it).
//
// Thread-safety: every public method may be called from any thread, except
// that WaitIdle must not be called from the engine thread (an EngineObserver
// callback): it would wait on the thread it blocks.
//
// Lifecycle: running -> (Drain) draining -> (Shutdown) stopped. Draining
// refuses new requests but lets the ones already submitted, queued or
// running, finish normally; Shutdown aborts whatever is still in flight.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/serving/engine_config.h"
#include "engine/serving/engine_stats.h"
#include "engine/serving/request.h"
#include "engine/serving/tenant.h"

namespace kvserve::model {
class ModelRunner;
}
namespace kvserve::tokenizer {
class Tokenizer;
}

namespace kvserve::engine {

class EngineImpl;

// The front end's side of one request. Events arrive in order; each choice
// ends with exactly one event whose finish is set.
class RequestHandle {
 public:
  virtual ~RequestHandle() = default;
  // Waits up to `timeout` for the next event; nullopt on timeout or once
  // every choice has finished and every event was taken.
  virtual std::optional<StreamEvent> Next(absl::Duration timeout) = 0;
  // True once all choices have finished and all events were taken.
  virtual bool Done() const = 0;
  // Aborts the request (idempotent): its sequences leave the batch and free
  // their KV blocks within one engine step, and every unfinished choice ends
  // with FinishReason::kAbort.
  virtual void Cancel() = 0;
};

class Engine {
 public:
  // `runner` and `tokenizer` must outlive the engine (non-owning). Starts the
  // engine thread.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineConfig& config,
                                                        model::ModelRunner* runner,
                                                        const tokenizer::Tokenizer* tokenizer,
                                                        EngineObserver* observer = nullptr);
  ~Engine();  // Shutdown()

  // Queues a request. InvalidArgument when it can never run (empty prompt,
  // prompt + max_tokens beyond max_context, n or logprobs over the caps, a
  // token id outside the vocabulary); ResourceExhausted when max_waiting
  // requests are already queued; Unavailable after Drain ("the server is
  // draining; retry on another replica") or Shutdown.
  absl::StatusOr<std::shared_ptr<RequestHandle>> Submit(GenerationRequest request);

  // Replaces the tenant table (at startup and on every reload). Takes effect
  // at the next engine step; requests already submitted keep running and are
  // held to their tenant's new limits from then on. A request naming a tenant
  // that is not in the table is charged to the default tenant (no limits).
  // InvalidArgument for an empty or duplicate id or weight <= 0.
  absl::Status SetTenants(std::vector<TenantLimits> tenants);
  // A consistent snapshot of counters and gauges.
  EngineStats Stats() const;
  // True once the engine thread has completed a step or idles ready, and
  // until Drain or Shutdown.
  bool Ready() const;
  const EngineConfig& config() const;

  // Stops accepting requests (Submit returns Unavailable, Ready turns
  // false) while the requests in flight go on to finish as usual. Returns at
  // once; idempotent.
  void Drain();

  // Requests submitted and not yet finished (every choice's final event
  // pushed), queued ones included.
  int InFlight() const;

  // Blocks until InFlight() is 0 or `timeout` passes (a zero timeout only
  // polls; absl::InfiniteDuration() waits for good). True if idle. Only
  // meaningful after Drain: otherwise new requests may arrive at any time.
  bool WaitIdle(absl::Duration timeout) const;

  // Stops accepting requests, aborts the ones in flight and joins the
  // engine thread. Idempotent; may follow Drain.
  void Shutdown();

 private:
  explicit Engine(std::unique_ptr<EngineImpl> impl);
  std::unique_ptr<EngineImpl> impl_;
};

}  // namespace kvserve::engine
