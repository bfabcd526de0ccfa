// The gRPC front end: service kvserve.v1.Inference (proto/kvserve/v1/
// inference.proto), the standard grpc.health.v1 health service and server
// reflection, all served on one port.
//
// With a tenant registry (a tenants file), every kvserve.v1.Inference method
// (Generate, Complete, ListModels) needs the metadata entry
// "authorization: Bearer KEY" (tenant_registry.h) and answers
// UNAUTHENTICATED without a valid one; the request is charged to the key's
// tenant. Health checks and reflection stay open: probes and tools such as
// grpcurl must work without a key, and neither reveals anything about
// tenants or their requests.
//
// Thread-safety: Start/Shutdown from one thread; gRPC's threads call into
// the engine through its thread-safe API only.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/serving/engine.h"
#include "engine/tokenizer/tokenizer.h"
#include "server/tenant_registry.h"

namespace kvserve::server {

struct GrpcServerOptions {
  std::string address = "127.0.0.1:50051";  // host:port; port 0 picks a free one
  std::string model_name;                   // what ListModels reports and requests must name
  // The request limit ListModels reports (prompt + output tokens); 0 reports
  // the engine's configured max_context.
  int max_context = 0;
  // The tenants whose keys are accepted; null = single-tenant, no keys.
  // Non-owning; must outlive the server.
  const TenantRegistry* tenants = nullptr;
};

class GrpcServer {
 public:
  // `engine` and `tokenizer` must outlive the server (non-owning).
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(const GrpcServerOptions& options,
                                                           engine::Engine* engine,
                                                           const tokenizer::Tokenizer* tokenizer);
  virtual ~GrpcServer() = default;
  // The bound port (useful with port 0).
  virtual int port() const = 0;
  // Marks health NOT_SERVING, cancels streams in flight, stops. Idempotent.
  virtual void Shutdown() = 0;
};

}  // namespace kvserve::server
