// The tenants file of `kvserve serve --tenants FILE`: who may call the
// server (API keys, stored as SHA-256 hashes) and what each tenant may use
// (KV budget, concurrency, queue, scheduling weight, default compression).
//
// Format (JSON; a YAML reader would need yaml-cpp, which is not installed):
//
//   {"tenants": [
//     {"id": "acme",                              // [A-Za-z0-9._-]{1,64}
//      "api_keys": ["sha256:<64 hex digits>"],    // >= 1; `kvserve hash-key`
//      "kv_budget_bytes": 268435456,              // or "256MiB"; 0 = no cap
//      "max_concurrent": 8,                       // 0 = no cap
//      "max_queued": 32,                          // 0 = no cap
//      "weight": 1,                               // > 0
//      "compression": {"policy": "attention-guided", "ratio": 0.25}}]}
//
// Only "id" and "api_keys" are required; the rest default to no cap, weight
// 1 and the server's compression default. "compression" may give either
// half; the other half comes from the server's default. Unknown keys are
// errors (a misspelt limit must not silently mean "no limit"), as are an
// empty tenant list (it would lock every client out: run without a tenants
// file for single-tenant mode), duplicate ids and a key hash listed twice,
// in one tenant or across tenants.
//
// Keys are never stored: the file holds "sha256:" + the hex SHA-256 of each
// key, and a presented key is hashed once and compared with every stored
// hash in constant time (FindByKey), so neither the comparison nor which
// tenant matched shows in the time a lookup takes.
//
// Thread-safety: TenantsConfig is immutable after Parse/Load; the free
// functions are thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/serving/tenant.h"
#include "kvcache/kv_compressor.h"

namespace kvserve::config {

// SHA-256 digest of an API key.
using KeyHash = std::array<uint8_t, 32>;

// SHA-256 of `key` (OpenSSL's libcrypto).
KeyHash HashApiKey(std::string_view key);
// "sha256:" + 64 lowercase hex digits.
std::string FormatKeyHash(const KeyHash& hash);
// Parses FormatKeyHash's form (hex digits in either case). InvalidArgument
// naming what is wrong otherwise.
absl::StatusOr<KeyHash> ParseKeyHash(std::string_view text);
// Equality whose time does not depend on where the hashes differ.
bool KeyHashesEqual(const KeyHash& a, const KeyHash& b);

// Whether `key` can be an API key: 1..4096 printable ASCII characters
// without spaces (it travels in an HTTP header, whose value servers trim,
// and in gRPC metadata). InvalidArgument saying why not.
absl::Status ValidateApiKey(std::string_view key);

struct Tenant {
  // What the engine enforces; limits.id is the tenant id.
  engine::TenantLimits limits;
  // The default compression of its requests; an empty policy or a ratio of 0
  // leaves that half to the server's default. nullopt: no default of its own.
  std::optional<kvcache::KvCompressionSpec> compression;
  std::vector<KeyHash> api_key_hashes;  // >= 1

  const std::string& id() const { return limits.id; }
};

class TenantsConfig {
 public:
  // Parses and validates a tenants file's text. `origin` (the path) is named
  // in errors, which read "tenants[1] (acme): max_queued: must be >= 0, got
  // -1 (in FILE)".
  static absl::StatusOr<TenantsConfig> Parse(std::string_view json_text, std::string_view origin);
  // Reads the file at `path` and parses it.
  static absl::StatusOr<TenantsConfig> Load(const std::string& path);

  const std::vector<Tenant>& tenants() const { return tenants_; }
  // The tenant whose key is `api_key`, or nullptr. Hashes the key once and
  // compares the digest with every stored hash, in constant time each,
  // choosing the match without a branch: the time depends only on the key's
  // length and the number of stored hashes.
  const Tenant* FindByKey(std::string_view api_key) const;
  // The table for engine::Engine::SetTenants.
  std::vector<engine::TenantLimits> Limits() const;

 private:
  TenantsConfig() = default;

  struct StoredKey {
    KeyHash hash;
    size_t tenant;  // index into tenants_
  };
  std::vector<Tenant> tenants_;
  std::vector<StoredKey> keys_;  // every tenant's hashes
};

}  // namespace kvserve::config
