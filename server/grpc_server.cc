// GrpcServer on gRPC's synchronous API: each call runs on a thread of
// gRPC's pool, submits to the engine and pulls the request's events with a
// short timeout, checking between pulls whether the client went away (a
// cancel, a disconnect or a passed deadline all show as IsCancelled), in
// which case the engine request is cancelled and its KV blocks freed within
// one engine step.
#include "server/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "kvserve/v1/inference.grpc.pb.h"
#include "server/grpc_messages.h"
#include "server/status_mapping.h"
#include "spdlog/spdlog.h"

namespace kvserve::server {
namespace {

// How long a call waits for an event before it looks at its context again:
// the bound on how late a cancellation is noticed while no output arrives.
constexpr absl::Duration kPollInterval = absl::Milliseconds(20);
// How long Shutdown lets cancelled calls finish before gRPC cuts them off.
constexpr auto kShutdownGrace = std::chrono::seconds(5);

grpc::Status ToGrpcStatus(const absl::Status& status) {
  return grpc::Status(GrpcCodeFor(status), std::string(status.message()));
}

// The calls in flight, so that Shutdown can cancel them. Thread-safe.
class ActiveRequests {
 public:
  // Adds `handle`; cancels it at once if Shutdown already began (it would
  // otherwise miss the cancel-all).
  void Add(const std::shared_ptr<engine::RequestHandle>& handle) {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) handle->Cancel();
    handles_.insert(handle.get());
  }
  void Remove(engine::RequestHandle* handle) {
    absl::MutexLock lock(&mu_);
    handles_.erase(handle);
  }
  void CancelAll() {
    absl::MutexLock lock(&mu_);
    shutting_down_ = true;
    for (engine::RequestHandle* h : handles_) h->Cancel();
  }
  bool shutting_down() const {
    absl::MutexLock lock(&mu_);
    return shutting_down_;
  }

 private:
  mutable absl::Mutex mu_;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  // Non-owning: each entry is removed by its call before the call drops the
  // handle.
  absl::flat_hash_set<engine::RequestHandle*> handles_ ABSL_GUARDED_BY(mu_);
};

class InferenceService final : public v1::Inference::Service {
 public:
  // All pointers non-owning; they must outlive the service.
  InferenceService(std::string model_name, int max_context, engine::Engine* engine,
                   const tokenizer::Tokenizer* tokenizer, const TenantRegistry* tenants)
      : model_name_(std::move(model_name)),
        max_context_(max_context),
        engine_(engine),
        tokenizer_(tokenizer),
        tenants_(tenants) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    std::string id = NextRequestId();
    return Run(context, *request, id, [&](const engine::StreamEvent& event) {
      return writer->Write(ToGenerateResponse(event, *tokenizer_, id)) ? absl::OkStatus()
                                                                       : absl::CancelledError();
    });
  }

  grpc::Status Complete(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        v1::CompleteResponse* response) override {
    std::string id = NextRequestId();
    CompleteAccumulator acc(tokenizer_, request->has_n() ? std::max(request->n(), 1) : 1,
                            model_name_, id);
    grpc::Status status = Run(context, *request, id,
                              [&](const engine::StreamEvent& event) { return acc.Add(event); });
    if (status.ok()) *response = acc.response();
    return status;
  }

  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* response) override {
    if (auto tenant = Authenticate(context); !tenant.ok()) return ToGrpcStatus(tenant.status());
    v1::ModelInfo* model = response->add_models();
    model->set_name(model_name_);
    model->set_max_context(max_context_ > 0 ? max_context_ : engine_->config().max_context);
    model->set_vocab_size(tokenizer_->n_vocab());
    return grpc::Status::OK;
  }

  void CancelAll() { active_.CancelAll(); }

 private:
  std::string NextRequestId() { return absl::StrCat("grpc-", next_id_.fetch_add(1) + 1); }

  // The caller's tenant from its "authorization" metadata; null without a
  // registry (single-tenant).
  absl::StatusOr<std::shared_ptr<const config::Tenant>> Authenticate(
      const grpc::ServerContext* context) const {
    if (tenants_ == nullptr) return nullptr;
    const auto& metadata = context->client_metadata();
    const auto [first, last] = metadata.equal_range("authorization");
    if (first == last) return tenants_->Authenticate("");
    if (std::next(first) != last) {
      return absl::UnauthenticatedError("more than one authorization metadata entry");
    }
    return tenants_->Authenticate(std::string_view(first->second.data(), first->second.size()));
  }

  // Submits `request` and hands each event to `on_event` until every
  // choice has finished. An error from `on_event` (the client is gone, or
  // an internal inconsistency) cancels the engine request.
  grpc::Status Run(grpc::ServerContext* context, const v1::GenerateRequest& request,
                   const std::string& id,
                   absl::FunctionRef<absl::Status(const engine::StreamEvent&)> on_event) {
    absl::StatusOr<std::shared_ptr<const config::Tenant>> tenant = Authenticate(context);
    if (!tenant.ok()) {
      spdlog::debug("gRPC {}: {}", id, std::string(tenant.status().message()));
      return ToGrpcStatus(tenant.status());
    }
    if (active_.shutting_down()) {
      return ToGrpcStatus(absl::UnavailableError("the server is shutting down"));
    }
    absl::StatusOr<engine::GenerationRequest> converted =
        ToGenerationRequest(request, model_name_, *tokenizer_, id);
    if (!converted.ok()) return ToGrpcStatus(converted.status());
    if (*tenant != nullptr) ApplyTenant(**tenant, &*converted);
    absl::StatusOr<std::shared_ptr<engine::RequestHandle>> submitted =
        engine_->Submit(*std::move(converted));
    if (!submitted.ok()) {
      spdlog::debug("gRPC {}: rejected: {}", id, std::string(submitted.status().message()));
      return ToGrpcStatus(submitted.status());
    }
    std::shared_ptr<engine::RequestHandle> handle = *std::move(submitted);
    active_.Add(handle);
    grpc::Status status = Drain(context, handle.get(), on_event);
    active_.Remove(handle.get());
    spdlog::debug("gRPC {}: {}", id, status.ok() ? "done" : status.error_message());
    return status;
  }

  grpc::Status Drain(grpc::ServerContext* context, engine::RequestHandle* handle,
                     absl::FunctionRef<absl::Status(const engine::StreamEvent&)> on_event) {
    while (!handle->Done()) {
      if (context->IsCancelled()) {
        handle->Cancel();
        // The client already has its status (CANCELLED or
        // DEADLINE_EXCEEDED); this one is never sent.
        return grpc::Status::CANCELLED;
      }
      std::optional<engine::StreamEvent> event = handle->Next(kPollInterval);
      if (!event.has_value()) continue;
      if (event->finish == engine::FinishReason::kError) {
        handle->Cancel();
        return ToGrpcStatus(event->error);
      }
      if (event->finish == engine::FinishReason::kAbort) {
        handle->Cancel();
        if (context->IsCancelled()) return grpc::Status::CANCELLED;
        // Nobody but the client and a shutdown aborts requests.
        return ToGrpcStatus(absl::UnavailableError("the server is shutting down"));
      }
      if (absl::Status s = on_event(*event); !s.ok()) {
        handle->Cancel();
        return ToGrpcStatus(s);
      }
    }
    return grpc::Status::OK;
  }

  const std::string model_name_;
  const int max_context_;
  engine::Engine* const engine_;                 // not owned
  const tokenizer::Tokenizer* const tokenizer_;  // not owned
  const TenantRegistry* const tenants_;          // not owned; null = single-tenant
  std::atomic<uint64_t> next_id_{0};
  ActiveRequests active_;
};

class GrpcServerImpl final : public GrpcServer {
 public:
  GrpcServerImpl(const GrpcServerOptions& options, engine::Engine* engine,
                 const tokenizer::Tokenizer* tokenizer)
      : engine_(engine),
        service_(options.model_name, options.max_context, engine, tokenizer, options.tenants) {}

  ~GrpcServerImpl() override { Shutdown(); }

  absl::Status Start(const GrpcServerOptions& options) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    builder.AddListeningPort(options.address, grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    // Each call holds one thread for its whole duration. Beyond what the
    // engine can run and queue, calls would only be rejected by Submit, so
    // gRPC may as well refuse them itself (RESOURCE_EXHAUSTED); the extra
    // threads serve health checks, reflection, ListModels and the pollers.
    const engine::EngineConfig& c = engine_->config();
    grpc::ResourceQuota quota("kvserve-grpc");
    quota.SetMaxThreads(std::min(c.max_running + c.max_waiting, 1024) + 16);
    builder.SetResourceQuota(quota);
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || port_ == 0) {
      server_.reset();
      return absl::UnavailableError(absl::StrCat("gRPC: cannot listen on ", options.address));
    }
    health_ = server_->GetHealthCheckService();
    SetHealth(false);
    // Health follows the engine's readiness without holding up Start: a
    // watcher flips it to SERVING once the engine is ready, and back to
    // NOT_SERVING when the engine drains on SIGTERM, as /ready does.
    ready_watcher_ = std::thread([this] {
      bool serving = false;
      do {
        if (const bool ready = engine_->Ready(); ready != serving) {
          SetHealth(ready);
          serving = ready;
        }
      } while (!stop_watcher_.WaitForNotificationWithTimeout(absl::Milliseconds(20)));
    });
    return absl::OkStatus();
  }

  int port() const override { return port_; }

  void Shutdown() override {
    {
      absl::MutexLock lock(&mu_);
      if (shut_down_ || server_ == nullptr) return;
      shut_down_ = true;
      stop_watcher_.Notify();
      // Health first, so that probes see NOT_SERVING while calls wind down;
      // the health service's own Shutdown pins every status to NOT_SERVING.
      health_->Shutdown();
    }
    ready_watcher_.join();
    service_.CancelAll();
    server_->Shutdown(std::chrono::system_clock::now() + kShutdownGrace);
    server_->Wait();
    spdlog::info("gRPC server stopped");
  }

 private:
  void SetHealth(bool serving) {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    health_->SetServingStatus(serving);
    health_->SetServingStatus(v1::Inference::service_full_name(), serving);
  }

  engine::Engine* const engine_;  // not owned
  InferenceService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  grpc::HealthCheckServiceInterface* health_ = nullptr;  // owned by server_
  absl::Notification stop_watcher_;
  std::thread ready_watcher_;
  absl::Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(
    const GrpcServerOptions& options, engine::Engine* engine,
    const tokenizer::Tokenizer* tokenizer) {
  auto server = std::make_unique<GrpcServerImpl>(options, engine, tokenizer);
  if (absl::Status s = server->Start(options); !s.ok()) return s;
  spdlog::info("gRPC listening on port {} (kvserve.v1.Inference, health, reflection)",
               server->port());
  return server;
}

}  // namespace kvserve::server
