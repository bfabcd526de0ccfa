#include "server/tenant_registry.h"

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/temp_dir.h"

namespace kvserve::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string HashOf(std::string_view key) { return config::FormatKeyHash(config::HashApiKey(key)); }

// {"tenants": [...]} with one tenant per {id, keys}.
std::string TenantsJson(const std::vector<std::pair<std::string, std::vector<std::string>>>& ts) {
  std::string out = R"({"tenants": [)";
  for (size_t i = 0; i < ts.size(); ++i) {
    if (i > 0) out += ", ";
    out += R"({"id": ")" + ts[i].first + R"(", "api_keys": [)";
    for (size_t k = 0; k < ts[i].second.size(); ++k) {
      if (k > 0) out += ", ";
      out += "\"" + HashOf(ts[i].second[k]) + "\"";
    }
    out += "]}";
  }
  return out + "]}";
}

class TenantRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = kvserve::testing::ProcessTempDir() + "/tenant_registry_test_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".json";
    Write(TenantsJson({{"acme", {"key-a"}}, {"beta", {"key-b1", "key-b2"}}}));
    auto r = TenantRegistry::Load(path_, /*engine=*/nullptr);
    ASSERT_TRUE(r.ok()) << r.status();
    registry_ = std::move(*r);
  }
  void TearDown() override { std::remove(path_.c_str()); }

  void Write(const std::string& text) { std::ofstream(path_, std::ios::trunc) << text; }

  // The tenant id `authorization` selects, or the error message.
  std::string Who(std::string_view authorization) {
    auto t = registry_->Authenticate(authorization);
    if (!t.ok()) {
      EXPECT_EQ(t.status().code(), absl::StatusCode::kUnauthenticated);
      return "error: " + std::string(t.status().message());
    }
    return (*t)->id();
  }

  std::string path_;
  std::unique_ptr<TenantRegistry> registry_;
};

TEST_F(TenantRegistryTest, BearerKeysSelectTheirTenant) {
  EXPECT_EQ(Who("Bearer key-a"), "acme");
  EXPECT_EQ(Who("Bearer key-b1"), "beta");  // another tenant's key is that tenant, not acme
  EXPECT_EQ(Who("Bearer key-b2"), "beta");
  // The scheme is case-insensitive; surrounding blanks do not count.
  EXPECT_EQ(Who("bearer key-a"), "acme");
  EXPECT_EQ(Who("BEARER \t key-a  "), "acme");
}

TEST_F(TenantRegistryTest, BasicCredentialsCarryTheKeyAsPasswordOrUser) {
  EXPECT_EQ(Who("Basic " + absl::Base64Escape("anyone:key-a")), "acme");
  EXPECT_EQ(Who("Basic " + absl::Base64Escape(":key-b1")), "beta");
  EXPECT_EQ(Who("basic " + absl::Base64Escape("key-b2:")), "beta");  // curl -u KEY:
  EXPECT_THAT(Who("Basic " + absl::Base64Escape("key-a:wrong")), HasSubstr("invalid API key"));
  EXPECT_THAT(Who("Basic " + absl::Base64Escape("key-a")), HasSubstr("malformed Basic"));
  EXPECT_THAT(Who("Basic %%%"), HasSubstr("malformed Basic"));
  EXPECT_THAT(Who("Basic " + absl::Base64Escape(":")), HasSubstr("no API key"));
}

TEST_F(TenantRegistryTest, MissingMalformedAndUnknownKeysAreUnauthenticated) {
  EXPECT_THAT(Who(""), HasSubstr("no API key"));
  EXPECT_THAT(Who("   "), HasSubstr("no API key"));
  EXPECT_THAT(Who("Bearer"), HasSubstr("no API key"));
  EXPECT_THAT(Who("Bearer   "), HasSubstr("no API key"));
  EXPECT_THAT(Who("key-a"), HasSubstr("unsupported Authorization scheme"));
  EXPECT_THAT(Who("Token key-a"), HasSubstr("unsupported Authorization scheme"));
  EXPECT_THAT(Who("Bearer key-a2"), HasSubstr("invalid API key"));
  EXPECT_THAT(Who("Bearer KEY-A"), HasSubstr("invalid API key"));
  EXPECT_THAT(Who("Bearer key-a key-b1"), HasSubstr("invalid API key"));
  EXPECT_THAT(Who("Bearer " + HashOf("key-a")), HasSubstr("invalid API key"));
  // Messages never echo what was sent.
  EXPECT_THAT(Who("Bearer secret-guess"), Not(HasSubstr("secret-guess")));
  EXPECT_THAT(Who("Token secret-guess"), Not(HasSubstr("secret-guess")));
}

TEST_F(TenantRegistryTest, ReloadSwapsKeysAndLimits) {
  Write(TenantsJson({{"acme", {"key-a-new"}}, {"gamma", {"key-g"}}}));
  ASSERT_TRUE(registry_->Reload().ok());
  EXPECT_EQ(Who("Bearer key-a-new"), "acme");
  EXPECT_EQ(Who("Bearer key-g"), "gamma");
  EXPECT_THAT(Who("Bearer key-a"), HasSubstr("invalid API key"));   // removed key
  EXPECT_THAT(Who("Bearer key-b1"), HasSubstr("invalid API key"));  // removed tenant
  ASSERT_EQ(registry_->current()->tenants().size(), 2u);
  EXPECT_EQ(registry_->current()->tenants()[1].id(), "gamma");
}

TEST_F(TenantRegistryTest, ABadFileKeepsTheOldTable) {
  for (const std::string& bad :
       {std::string("{\"tenants\": ["), std::string(R"({"tenants": []})"),
        TenantsJson({{"acme", {"key-x"}}, {"acme", {"key-y"}}}),
        std::string(R"({"tenants": [{"id": "acme", "api_keys": ["key-a"]}]})")}) {
    Write(bad);
    const absl::Status s = registry_->Reload();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(Who("Bearer key-a"), "acme") << bad;
    EXPECT_EQ(Who("Bearer key-b2"), "beta") << bad;
  }
  std::remove(path_.c_str());
  EXPECT_THAT(registry_->Reload().message(), HasSubstr("cannot read"));
  EXPECT_EQ(Who("Bearer key-a"), "acme");
}

TEST_F(TenantRegistryTest, ATenantOutlivesTheReloadThatRemovesIt) {
  auto beta = registry_->Authenticate("Bearer key-b1");
  ASSERT_TRUE(beta.ok());
  Write(TenantsJson({{"acme", {"key-a"}}}));
  ASSERT_TRUE(registry_->Reload().ok());
  EXPECT_EQ((*beta)->id(), "beta");  // still readable by the request that holds it
  EXPECT_EQ((*beta)->api_key_hashes.size(), 2u);
}

TEST_F(TenantRegistryTest, AuthenticationDuringReloadsSeesOneTableOrTheOther) {
  const std::string a = TenantsJson({{"acme", {"key-a"}}, {"beta", {"key-b1"}}});
  const std::string b = TenantsJson({{"acme", {"key-a"}}, {"beta", {"key-b2"}}});
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < 3; ++i) {
    readers.emplace_back([&] {
      while (!stop.load()) {
        auto t = registry_->Authenticate("Bearer key-a");
        if (!t.ok() || (*t)->id() != "acme") wrong.fetch_add(1);
      }
    });
  }
  for (int i = 0; i < 50; ++i) {
    Write(i % 2 == 0 ? a : b);
    EXPECT_TRUE(registry_->Reload().ok());
  }
  stop.store(true);
  for (std::thread& t : readers) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(ApplyTenantTest, ChargesTheTenantAndFillsOpenCompressionHalves) {
  const std::string file = R"({"tenants": [
      {"id": "acme", "api_keys": [")" +
                           HashOf("a") + R"("],
       "compression": {"policy": "attention-guided", "ratio": 0.25}},
      {"id": "half", "api_keys": [")" +
                           HashOf("h") + R"("], "compression": {"ratio": 0.5}},
      {"id": "plain", "api_keys": [")" +
                           HashOf("p") + R"("]}]})";
  auto c = config::TenantsConfig::Parse(file, "f");
  ASSERT_TRUE(c.ok()) << c.status();
  const config::Tenant& acme = c->tenants()[0];
  const config::Tenant& half = c->tenants()[1];
  const config::Tenant& plain = c->tenants()[2];

  engine::GenerationRequest r;  // no kv_compression: the tenant's default
  ApplyTenant(acme, &r);
  EXPECT_EQ(r.tenant, "acme");
  ASSERT_TRUE(r.kv_compression.has_value());
  EXPECT_EQ(r.kv_compression->policy, "attention-guided");
  EXPECT_EQ(r.kv_compression->ratio, 0.25);

  engine::GenerationRequest given;  // the request's own choice wins
  given.kv_compression = kvcache::KvCompressionSpec{"h2o", 0.5};
  ApplyTenant(acme, &given);
  EXPECT_EQ(given.kv_compression->policy, "h2o");
  EXPECT_EQ(given.kv_compression->ratio, 0.5);

  engine::GenerationRequest policy_only;  // the open half from the tenant
  policy_only.kv_compression = kvcache::KvCompressionSpec{"snapkv", 0.0};
  ApplyTenant(acme, &policy_only);
  EXPECT_EQ(policy_only.kv_compression->policy, "snapkv");
  EXPECT_EQ(policy_only.kv_compression->ratio, 0.25);

  engine::GenerationRequest ratio_only;
  ratio_only.kv_compression = kvcache::KvCompressionSpec{"", 0.125};
  ApplyTenant(acme, &ratio_only);
  EXPECT_EQ(ratio_only.kv_compression->policy, "attention-guided");
  EXPECT_EQ(ratio_only.kv_compression->ratio, 0.125);

  engine::GenerationRequest via_half;  // the tenant's open half stays for the engine
  ApplyTenant(half, &via_half);
  EXPECT_EQ(via_half.kv_compression->policy, "");
  EXPECT_EQ(via_half.kv_compression->ratio, 0.5);

  engine::GenerationRequest via_plain;  // no default of its own: the engine's
  ApplyTenant(plain, &via_plain);
  EXPECT_EQ(via_plain.tenant, "plain");
  EXPECT_FALSE(via_plain.kv_compression.has_value());
}

}  // namespace
}  // namespace kvserve::server
