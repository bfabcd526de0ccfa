// The tenants the server currently accepts, for both front ends: turns an
// Authorization header (HTTP) or metadata entry (gRPC) into a tenant, and
// swaps in a new tenants file on reload (SIGHUP) without disturbing
// requests in flight: each request keeps the tenant it authenticated as,
// and the engine applies new limits from its next step.
//
// Without a tenants file the server runs single-tenant and makes no
// registry; the front ends then take no keys (their registry pointer is
// null).
//
// Credentials: "Bearer KEY" (what the OpenAI clients send), or "Basic
// base64(USER:KEY)" so that a browser's own login prompt opens /dashboard
// and `curl -u :KEY` works (the user part is ignored; with an empty
// password the user part is taken as the key, as `curl -u KEY:` sends it).
// The scheme is case-insensitive. Error messages never contain the key.
//
// Thread-safety: every method may be called from any thread. Authenticate
// takes a shared lock only to copy a pointer; Reload calls are serialised.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "config/tenants.h"
#include "engine/serving/engine.h"
#include "engine/serving/request.h"

namespace kvserve::server {

class TenantRegistry {
 public:
  // Loads the tenants file at `path` and gives its limits to `engine`
  // (non-owning, must outlive the registry; null in tests that need no
  // engine). InvalidArgument naming the file and field when it is invalid.
  static absl::StatusOr<std::unique_ptr<TenantRegistry>> Load(std::string path,
                                                              engine::Engine* engine);
  // The same with the file already parsed (`kvserve serve` checks it before
  // it loads the model); Reload reads `path` again.
  static absl::StatusOr<std::unique_ptr<TenantRegistry>> Create(std::string path,
                                                                config::TenantsConfig initial,
                                                                engine::Engine* engine);

  // The tenant whose key the header value `authorization` carries.
  // Unauthenticated when it is empty ("no API key"), not a Bearer or Basic
  // credential, or names no key of the current table ("invalid API key").
  // The returned tenant stays valid after a reload.
  absl::StatusOr<std::shared_ptr<const config::Tenant>> Authenticate(
      std::string_view authorization) const;

  // Re-reads the file given to Load. On success the new table replaces the
  // old one (after the engine has taken its limits) and the result is OK;
  // otherwise the old table stays in force, the error is logged and
  // returned.
  absl::Status Reload();

  // The table in force.
  std::shared_ptr<const config::TenantsConfig> current() const;
  const std::string& path() const { return path_; }

 private:
  TenantRegistry(std::string path, engine::Engine* engine)
      : path_(std::move(path)), engine_(engine) {}
  // Installs `table` (the engine's limits first); the old table stays on
  // failure.
  absl::Status Install(config::TenantsConfig table) ABSL_EXCLUSIVE_LOCKS_REQUIRED(reload_mu_);

  const std::string path_;
  engine::Engine* const engine_;  // not owned; may be null
  absl::Mutex reload_mu_;         // one reload at a time
  mutable absl::Mutex mu_;
  std::shared_ptr<const config::TenantsConfig> current_ ABSL_GUARDED_BY(mu_);
};

// Charges `request` to `tenant` and fills in the tenant's default
// compression where the request leaves it open: no kv_compression at all,
// or an empty policy / a ratio of 0 (what the engine's own default would
// otherwise fill).
void ApplyTenant(const config::Tenant& tenant, engine::GenerationRequest* request);

}  // namespace kvserve::server
