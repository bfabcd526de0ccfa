#include "server/tenant_registry.h"

#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "spdlog/spdlog.h"

namespace kvserve::server {
namespace {

constexpr char kNoKey[] =
    "no API key: this server serves tenants; send your key as 'Authorization: Bearer KEY'";

// The key in an Authorization value; Unauthenticated when there is none.
absl::StatusOr<std::string> KeyOf(absl::string_view authorization) {
  const absl::string_view value = absl::StripAsciiWhitespace(authorization);
  if (value.empty()) return absl::UnauthenticatedError(kNoKey);
  size_t space = value.find_first_of(" \t");
  const std::string scheme = absl::AsciiStrToLower(value.substr(0, space));
  const absl::string_view credentials = space == absl::string_view::npos
                                            ? absl::string_view()
                                            : absl::StripAsciiWhitespace(value.substr(space));
  if (scheme == "bearer") {
    if (credentials.empty()) return absl::UnauthenticatedError(kNoKey);
    return std::string(credentials);
  }
  if (scheme == "basic") {
    std::string decoded;
    size_t colon = std::string::npos;
    if (absl::Base64Unescape(credentials, &decoded)) colon = decoded.find(':');
    if (colon == std::string::npos) {
      return absl::UnauthenticatedError(
          "malformed Basic credentials: expected base64 of 'USER:KEY'");
    }
    std::string key = decoded.substr(colon + 1);
    if (key.empty()) key = decoded.substr(0, colon);
    if (key.empty()) return absl::UnauthenticatedError(kNoKey);
    return key;
  }
  return absl::UnauthenticatedError(
      "unsupported Authorization scheme: send your key as 'Authorization: Bearer KEY'");
}

std::string Describe(const config::TenantsConfig& c) {
  std::vector<std::string> ids;
  size_t keys = 0;
  for (const config::Tenant& t : c.tenants()) {
    ids.push_back(t.id());
    keys += t.api_key_hashes.size();
  }
  return absl::StrCat(c.tenants().size(), " tenant(s) with ", keys,
                      " key(s): ", absl::StrJoin(ids, ", "));
}

}  // namespace

absl::StatusOr<std::unique_ptr<TenantRegistry>> TenantRegistry::Load(std::string path,
                                                                     engine::Engine* engine) {
  absl::StatusOr<config::TenantsConfig> loaded = config::TenantsConfig::Load(path);
  if (!loaded.ok()) return loaded.status();
  return Create(std::move(path), *std::move(loaded), engine);
}

absl::StatusOr<std::unique_ptr<TenantRegistry>> TenantRegistry::Create(
    std::string path, config::TenantsConfig initial, engine::Engine* engine) {
  std::unique_ptr<TenantRegistry> registry(new TenantRegistry(std::move(path), engine));
  absl::MutexLock lock(&registry->reload_mu_);
  if (absl::Status s = registry->Install(std::move(initial)); !s.ok()) return s;
  return registry;
}

absl::Status TenantRegistry::Install(config::TenantsConfig table) {
  // The engine first: a request that authenticates with a new key right
  // after the swap then finds its tenant's limits there.
  if (engine_ != nullptr) {
    if (absl::Status s = engine_->SetTenants(table.Limits()); !s.ok()) return s;
  }
  auto next = std::make_shared<const config::TenantsConfig>(std::move(table));
  spdlog::info("tenants from {}: {}", path_, Describe(*next));
  absl::MutexLock lock(&mu_);
  current_ = std::move(next);
  return absl::OkStatus();
}

absl::Status TenantRegistry::Reload() {
  absl::MutexLock lock(&reload_mu_);
  absl::StatusOr<config::TenantsConfig> loaded = config::TenantsConfig::Load(path_);
  absl::Status s = loaded.ok() ? Install(*std::move(loaded)) : loaded.status();
  if (!s.ok()) {
    spdlog::error("tenants reload failed; the previous {} stay in force: {}", Describe(*current()),
                  std::string(s.message()));
  }
  return s;
}

std::shared_ptr<const config::TenantsConfig> TenantRegistry::current() const {
  absl::ReaderMutexLock lock(&mu_);
  return current_;
}

absl::StatusOr<std::shared_ptr<const config::Tenant>> TenantRegistry::Authenticate(
    std::string_view authorization) const {
  absl::StatusOr<std::string> key =
      KeyOf(absl::string_view(authorization.data(), authorization.size()));
  if (!key.ok()) return key.status();
  std::shared_ptr<const config::TenantsConfig> table = current();
  const config::Tenant* tenant = table->FindByKey(*key);
  if (tenant == nullptr) return absl::UnauthenticatedError("invalid API key");
  // Shares ownership of the whole table, so the tenant outlives a reload.
  return std::shared_ptr<const config::Tenant>(std::move(table), tenant);
}

void ApplyTenant(const config::Tenant& tenant, engine::GenerationRequest* request) {
  request->tenant = tenant.id();
  if (!tenant.compression.has_value()) return;
  const kvcache::KvCompressionSpec& d = *tenant.compression;
  if (!request->kv_compression.has_value()) {
    request->kv_compression = d;
    return;
  }
  if (request->kv_compression->policy.empty()) request->kv_compression->policy = d.policy;
  if (request->kv_compression->ratio == 0) request->kv_compression->ratio = d.ratio;
}

}  // namespace kvserve::server
