#include "config/tenants.h"

// SHA-256 and the constant-time comparison come from OpenSSL's libcrypto
// (libssl-dev), a widely reviewed implementation, rather than code of our
// own: a subtle bug in either would be a security hole.
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "config/server_config.h"
#include "kvcache/compression_policy.h"
#include "nlohmann/json.hpp"

namespace kvserve::config {
namespace {

using nlohmann::json;

constexpr std::string_view kHashPrefix = "sha256:";
constexpr size_t kMaxIdLength = 64;
constexpr size_t kMaxKeyLength = 4096;

// Errors of one file: every message names the file; those about a tenant
// name it by index and id, then the field.
class Errors {
 public:
  explicit Errors(std::string_view origin) : origin_(origin) {}

  absl::Status File(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat("tenants file ", origin_, ": ", message));
  }
  absl::Status Field(size_t index, absl::string_view id, absl::string_view field,
                     absl::string_view message) const {
    std::string who = absl::StrCat("tenants[", index, "]");
    if (!id.empty()) absl::StrAppend(&who, " (", id, ")");
    return absl::InvalidArgumentError(
        absl::StrCat(who, ": ", field, ": ", message, " (in ", origin_, ")"));
  }

 private:
  std::string origin_;
};

bool IsIdChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
}

std::string TypeName(const json& v) { return v.type_name(); }

// A JSON integer in [min, max]; "" on success, else why not.
std::string ReadInt(const json& v, int64_t min, int64_t max, int64_t* out) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(max)) return absl::StrCat("must be <= ", max, ", got ", u);
    *out = static_cast<int64_t>(u);
    return "";
  }
  if (!v.is_number_integer()) {
    return absl::StrCat("expected an integer, got ", v.is_number() ? v.dump() : TypeName(v));
  }
  const int64_t i = v.get<int64_t>();
  if (i < min) return absl::StrCat("must be >= ", min, ", got ", i);
  if (i > max) return absl::StrCat("must be <= ", max, ", got ", i);
  *out = i;
  return "";
}

}  // namespace

KeyHash HashApiKey(std::string_view key) {
  KeyHash out{};
  unsigned int len = 0;
  const int ok = EVP_Digest(key.data(), key.size(), out.data(), &len, EVP_sha256(), nullptr);
  KV_CHECK_MSG(ok == 1 && len == out.size(), "OpenSSL SHA-256 failed");
  return out;
}

std::string FormatKeyHash(const KeyHash& hash) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(kHashPrefix);
  for (uint8_t b : hash) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

absl::StatusOr<KeyHash> ParseKeyHash(std::string_view text) {
  // The message never repeats the text: a raw key pasted by mistake must
  // not end up in logs.
  if (!text.starts_with(kHashPrefix)) {
    return absl::InvalidArgumentError(
        "expected \"sha256:<64 hex digits>\", the hash of a key (see `kvserve hash-key`); raw "
        "keys are not accepted");
  }
  const std::string_view hex = text.substr(kHashPrefix.size());
  if (hex.size() != 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected 64 hex digits after \"sha256:\", got ", hex.size(), " characters"));
  }
  KeyHash out{};
  for (size_t i = 0; i < 64; ++i) {
    const char c = absl::ascii_tolower(static_cast<unsigned char>(hex[i]));
    int v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("character ", i + kHashPrefix.size() + 1, " is not a hex digit"));
    }
    out[i / 2] = static_cast<uint8_t>(out[i / 2] << 4 | v);
  }
  return out;
}

bool KeyHashesEqual(const KeyHash& a, const KeyHash& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

absl::Status ValidateApiKey(std::string_view key) {
  if (key.empty()) return absl::InvalidArgumentError("the key is empty");
  if (key.size() > kMaxKeyLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("the key is longer than ", kMaxKeyLength, " characters"));
  }
  for (size_t i = 0; i < key.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(key[i]);
    if (c <= 0x20 || c >= 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat(
          "character ", i + 1,
          " of the key is a space, a control character or not ASCII; keys travel in HTTP "
          "headers and must be printable ASCII without spaces"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TenantsConfig> TenantsConfig::Parse(std::string_view json_text,
                                                   std::string_view origin) {
  const Errors err(origin);
  const json root = json::parse(json_text.begin(), json_text.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded()) return err.File("not valid JSON");
  if (!root.is_object()) return err.File("expected a JSON object {\"tenants\": [...]}");
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() != "tenants") {
      return err.File(absl::StrCat("unknown key '", it.key(), "' (expected only \"tenants\")"));
    }
  }
  const auto list = root.find("tenants");
  if (list == root.end()) return err.File("missing \"tenants\": [...]");
  if (!list->is_array()) {
    return err.File(absl::StrCat("\"tenants\" must be a list, got ", TypeName(*list)));
  }
  if (list->empty()) {
    return err.File(
        "\"tenants\" lists no tenant, which would refuse every client; to serve without API "
        "keys, run without a tenants file");
  }

  TenantsConfig config;
  std::map<std::string, size_t> ids;                    // id -> index
  std::map<KeyHash, std::pair<size_t, size_t>> owners;  // hash -> (tenant, key index)
  for (size_t i = 0; i < list->size(); ++i) {
    const json& t = (*list)[i];
    if (!t.is_object()) {
      return err.Field(i, "", "tenant", absl::StrCat("expected an object, got ", TypeName(t)));
    }
    Tenant tenant;
    // The id first, so that every later error can name the tenant.
    const auto id = t.find("id");
    if (id == t.end()) return err.Field(i, "", "id", "missing");
    if (!id->is_string()) {
      return err.Field(i, "", "id", absl::StrCat("expected a string, got ", TypeName(*id)));
    }
    tenant.limits.id = id->get<std::string>();
    const std::string& name = tenant.limits.id;
    if (name.empty() || name.size() > kMaxIdLength ||
        !std::all_of(name.begin(), name.end(), IsIdChar)) {
      // Quoted as JSON: the id is not known to be printable.
      return err.Field(i, "", "id",
                       absl::StrCat(json(name).dump(),
                                    " must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and "
                                    "'-' (it becomes a Prometheus label value)"));
    }
    if (auto [prev, inserted] = ids.emplace(name, i); !inserted) {
      return err.Field(
          i, name, "id",
          absl::StrCat("'", name, "' is also tenants[", prev->second, "]; ids must be unique"));
    }

    bool has_keys = false;
    for (auto f = t.begin(); f != t.end(); ++f) {
      const std::string& key = f.key();
      const json& v = f.value();
      auto bad = [&](absl::string_view message) { return err.Field(i, name, key, message); };
      if (key == "id") continue;
      if (key == "api_keys") {
        has_keys = true;
        if (!v.is_array()) return bad(absl::StrCat("expected a list, got ", TypeName(v)));
        if (v.empty()) return bad("must list at least one key hash");
        for (size_t k = 0; k < v.size(); ++k) {
          const std::string field = absl::StrCat("api_keys[", k, "]");
          if (!v[k].is_string()) {
            return err.Field(i, name, field,
                             absl::StrCat("expected a string, got ", TypeName(v[k])));
          }
          absl::StatusOr<KeyHash> hash = ParseKeyHash(v[k].get<std::string>());
          if (!hash.ok()) return err.Field(i, name, field, hash.status().message());
          auto [prev, inserted] = owners.emplace(*hash, std::make_pair(i, k));
          if (!inserted) {
            const auto [pt, pk] = prev->second;
            return err.Field(
                i, name, field,
                absl::StrCat("the same key hash is also tenants[", pt, "] (",
                             pt == i ? name : (*list)[pt]["id"].get<std::string>(), ") api_keys[",
                             pk, "]; a key must select exactly one tenant"));
          }
          tenant.api_key_hashes.push_back(*hash);
        }
      } else if (key == "kv_budget_bytes") {
        if (v.is_string()) {
          absl::StatusOr<uint64_t> bytes = ParseByteSize(v.get<std::string>());
          if (!bytes.ok()) return bad(bytes.status().message());
          if (*bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
            return bad("too large");
          }
          tenant.limits.kv_budget_bytes = static_cast<int64_t>(*bytes);
        } else {
          int64_t bytes = 0;
          if (std::string why = ReadInt(v, 0, std::numeric_limits<int64_t>::max(), &bytes);
              !why.empty()) {
            return bad(absl::StrCat(why, " (bytes, or a size such as \"256MiB\"; 0 = no cap)"));
          }
          tenant.limits.kv_budget_bytes = bytes;
        }
      } else if (key == "max_concurrent" || key == "max_queued") {
        int64_t n = 0;
        if (std::string why = ReadInt(v, 0, std::numeric_limits<int>::max(), &n); !why.empty()) {
          return bad(absl::StrCat(why, " (0 = no cap)"));
        }
        (key == "max_concurrent" ? tenant.limits.max_concurrent : tenant.limits.max_queued) =
            static_cast<int>(n);
      } else if (key == "weight") {
        if (!v.is_number()) return bad(absl::StrCat("expected a number, got ", TypeName(v)));
        const double w = v.get<double>();
        if (!(w > 0) || !std::isfinite(w)) {
          return bad(absl::StrCat("must be a finite number > 0, got ", v.dump()));
        }
        tenant.limits.weight = w;
      } else if (key == "compression") {
        if (!v.is_object()) {
          return bad(absl::StrCat("expected an object {\"policy\", \"ratio\"}, got ", TypeName(v)));
        }
        if (v.empty()) return bad("give \"policy\", \"ratio\" or both");
        kvcache::KvCompressionSpec spec{"", 0.0};
        for (auto c = v.begin(); c != v.end(); ++c) {
          const std::string field = absl::StrCat("compression.", c.key());
          const json& cv = c.value();
          if (c.key() == "policy") {
            if (!cv.is_string()) {
              return err.Field(i, name, field,
                               absl::StrCat("expected a string, got ", TypeName(cv)));
            }
            spec.policy = cv.get<std::string>();
            if (!kvcache::IsCompressionPolicy(spec.policy)) {
              return err.Field(i, name, field,
                               absl::StrCat(json(spec.policy).dump(), " is not one of ",
                                            kvcache::CompressionPolicyNameList()));
            }
          } else if (c.key() == "ratio") {
            const double r = cv.is_number() ? cv.get<double>() : 0.0;
            if (!cv.is_number() || !(r > 0 && r <= 1)) {
              return err.Field(i, name, field,
                               absl::StrCat("must be a number in (0, 1], got ", cv.dump()));
            }
            spec.ratio = r;
          } else {
            return err.Field(i, name, field, "unknown key (expected policy and ratio)");
          }
        }
        tenant.compression = spec;
      } else {
        return bad(
            "unknown key (expected id, api_keys, kv_budget_bytes, max_concurrent, max_queued, "
            "weight, compression)");
      }
    }
    if (!has_keys) return err.Field(i, name, "api_keys", "missing (list one or more key hashes)");
    config.tenants_.push_back(std::move(tenant));
  }
  for (size_t t = 0; t < config.tenants_.size(); ++t) {
    for (const KeyHash& h : config.tenants_[t].api_key_hashes) config.keys_.push_back({h, t});
  }
  return config;
}

absl::StatusOr<TenantsConfig> TenantsConfig::Load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::InvalidArgumentError(absl::StrCat("tenants file: cannot read '", path, "'"));
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) {
    return absl::InvalidArgumentError(absl::StrCat("tenants file: error reading '", path, "'"));
  }
  return Parse(ss.str(), path);
}

const Tenant* TenantsConfig::FindByKey(std::string_view api_key) const {
  const KeyHash presented = HashApiKey(api_key);
  // 1 + the index of the matching tenant, 0 for none. Every stored hash is
  // compared and the match is selected with a mask, not a branch, so the
  // loop takes the same path whichever key (if any) matches.
  size_t found = 0;
  for (const StoredKey& k : keys_) {
    const size_t mask = size_t{0} - static_cast<size_t>(KeyHashesEqual(presented, k.hash));
    found = (found & ~mask) | ((k.tenant + 1) & mask);
  }
  return found == 0 ? nullptr : &tenants_[found - 1];
}

std::vector<engine::TenantLimits> TenantsConfig::Limits() const {
  std::vector<engine::TenantLimits> out;
  out.reserve(tenants_.size());
  for (const Tenant& t : tenants_) out.push_back(t.limits);
  return out;
}

}  // namespace kvserve::config
