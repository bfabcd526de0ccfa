#include "config/tenants.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/temp_dir.h"

namespace kvserve::config {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

std::string HashOf(std::string_view key) { return FormatKeyHash(HashApiKey(key)); }

// A file with tenants "a" (key "key-a") and "b" (keys "key-b1", "key-b2").
std::string TwoTenants() {
  return R"({"tenants": [
      {"id": "a", "api_keys": [")" +
         HashOf("key-a") + R"("], "weight": 2},
      {"id": "b", "api_keys": [")" +
         HashOf("key-b1") + R"(", ")" + HashOf("key-b2") + R"("]}]})";
}

TEST(KeyHashTest, Sha256KnownVectors) {
  // FIPS 180-2 examples.
  EXPECT_EQ(HashOf("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(HashOf(""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(HashOf("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "sha256:248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(KeyHashTest, ParseRoundTripsAndAcceptsUpperCaseHex) {
  const KeyHash h = HashApiKey("abc");
  auto parsed = ParseKeyHash(FormatKeyHash(h));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, h);
  auto upper =
      ParseKeyHash("sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD");
  ASSERT_TRUE(upper.ok()) << upper.status();
  EXPECT_EQ(*upper, h);
}

TEST(KeyHashTest, ParseRejectsRawKeysWithoutRepeatingThem) {
  auto raw = ParseKeyHash("my-secret-key");
  ASSERT_FALSE(raw.ok());
  EXPECT_THAT(raw.status().message(),
              AllOf(HasSubstr("kvserve hash-key"), Not(HasSubstr("my-secret-key"))));
  EXPECT_THAT(ParseKeyHash("sha256:abcd").status().message(), HasSubstr("64 hex digits"));
  EXPECT_THAT(ParseKeyHash("sha256:" + std::string(63, 'a') + "g").status().message(),
              HasSubstr("character 71 is not a hex digit"));
  EXPECT_FALSE(ParseKeyHash("SHA256:" + std::string(64, 'a')).ok());
  EXPECT_FALSE(ParseKeyHash("sha512:" + std::string(64, 'a')).ok());
}

TEST(KeyHashTest, EqualitySeesADifferenceAtEveryByte) {
  const KeyHash h = HashApiKey("abc");
  EXPECT_TRUE(KeyHashesEqual(h, h));
  for (size_t i = 0; i < h.size(); ++i) {
    for (uint8_t bit : {uint8_t{1}, uint8_t{0x80}}) {
      KeyHash other = h;
      other[i] ^= bit;
      EXPECT_FALSE(KeyHashesEqual(h, other)) << "byte " << i;
      EXPECT_FALSE(KeyHashesEqual(other, h)) << "byte " << i;
    }
  }
}

TEST(ApiKeyTest, PrintableAsciiWithoutSpaces) {
  EXPECT_TRUE(ValidateApiKey("sk-abc_DEF.123~!").ok());
  EXPECT_THAT(ValidateApiKey("").message(), HasSubstr("empty"));
  EXPECT_THAT(ValidateApiKey("two words").message(), HasSubstr("character 4"));
  EXPECT_FALSE(ValidateApiKey("tab\there").ok());
  EXPECT_FALSE(ValidateApiKey("new\nline").ok());
  EXPECT_FALSE(ValidateApiKey("caf\xc3\xa9").ok());
  EXPECT_FALSE(ValidateApiKey("del\x7f").ok());
  EXPECT_TRUE(ValidateApiKey(std::string(4096, 'k')).ok());
  EXPECT_THAT(ValidateApiKey(std::string(4097, 'k')).message(), HasSubstr("longer than 4096"));
}

TEST(TenantsConfigTest, TheIssuesExample) {
  const std::string text = R"({"tenants": [{"id": "acme", "api_keys": [")" + HashOf("acme-key") +
                           R"("], "kv_budget_bytes": 268435456, "max_concurrent": 8,
      "max_queued": 32, "weight": 1,
      "compression": {"policy": "attention-guided", "ratio": 0.25}}]})";
  auto c = TenantsConfig::Parse(text, "tenants.json");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->tenants().size(), 1u);
  const Tenant& t = c->tenants()[0];
  EXPECT_EQ(t.id(), "acme");
  EXPECT_EQ(t.limits.kv_budget_bytes, 268435456);
  EXPECT_EQ(t.limits.max_concurrent, 8);
  EXPECT_EQ(t.limits.max_queued, 32);
  EXPECT_EQ(t.limits.weight, 1.0);
  ASSERT_TRUE(t.compression.has_value());
  EXPECT_EQ(t.compression->policy, "attention-guided");
  EXPECT_EQ(t.compression->ratio, 0.25);
  ASSERT_EQ(t.api_key_hashes.size(), 1u);
  EXPECT_EQ(t.api_key_hashes[0], HashApiKey("acme-key"));
  const std::vector<engine::TenantLimits> limits = c->Limits();
  ASSERT_EQ(limits.size(), 1u);
  EXPECT_EQ(limits[0].id, "acme");
  EXPECT_EQ(limits[0].kv_budget_bytes, 268435456);
  EXPECT_EQ(limits[0].max_concurrent, 8);
  EXPECT_EQ(limits[0].max_queued, 32);
  EXPECT_EQ(limits[0].weight, 1.0);
}

TEST(TenantsConfigTest, OnlyIdAndKeysAreRequired) {
  auto c = TenantsConfig::Parse(
      R"({"tenants": [{"id": "x.Y_z-9", "api_keys": [")" + HashOf("k") + R"("]}]})", "f");
  ASSERT_TRUE(c.ok()) << c.status();
  const Tenant& t = c->tenants()[0];
  EXPECT_EQ(t.id(), "x.Y_z-9");
  EXPECT_EQ(t.limits.kv_budget_bytes, 0);
  EXPECT_EQ(t.limits.max_concurrent, 0);
  EXPECT_EQ(t.limits.max_queued, 0);
  EXPECT_EQ(t.limits.weight, 1.0);
  EXPECT_FALSE(t.compression.has_value());
}

TEST(TenantsConfigTest, SizesWithUnitsFractionalWeightsAndHalfACompression) {
  const std::string key = HashOf("k");
  auto c = TenantsConfig::Parse(R"({"tenants": [
      {"id": "a", "api_keys": [")" + key +
                                    R"("], "kv_budget_bytes": "256MiB", "weight": 0.5,
       "compression": {"policy": "h2o"}},
      {"id": "b", "api_keys": [")" + HashOf("k2") +
                                    R"("], "compression": {"ratio": 0.125}}]})",
                                "f");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->tenants()[0].limits.kv_budget_bytes, 256ll << 20);
  EXPECT_EQ(c->tenants()[0].limits.weight, 0.5);
  // The missing half stays empty (0 / ""): the server's default fills it.
  EXPECT_EQ(c->tenants()[0].compression->policy, "h2o");
  EXPECT_EQ(c->tenants()[0].compression->ratio, 0.0);
  EXPECT_EQ(c->tenants()[1].compression->policy, "");
  EXPECT_EQ(c->tenants()[1].compression->ratio, 0.125);
}

TEST(TenantsConfigTest, FindByKeySelectsTheKeysTenantOnly) {
  auto c = TenantsConfig::Parse(TwoTenants(), "f");
  ASSERT_TRUE(c.ok()) << c.status();
  const Tenant* a = c->FindByKey("key-a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->id(), "a");
  for (const char* key : {"key-b1", "key-b2"}) {
    const Tenant* b = c->FindByKey(key);
    ASSERT_NE(b, nullptr) << key;
    EXPECT_EQ(b->id(), "b") << key;
  }
  for (const char* wrong : {"", "key-a ", "key-A", "key-b", "key-b12", "sha256:key-a"}) {
    EXPECT_EQ(c->FindByKey(wrong), nullptr) << wrong;
  }
  // Presenting the stored hash is not presenting the key.
  EXPECT_EQ(c->FindByKey(HashOf("key-a")), nullptr);
}

// Each malformed file: the message names the tenant (index and id when
// known) and the field.
TEST(TenantsConfigTest, EveryValidationErrorNamesTheTenantAndField) {
  const std::string k1 = HashOf("k1"), k2 = HashOf("k2");
  auto one = [&](const std::string& fields) {
    return R"({"tenants": [{"id": "acme", "api_keys": [")" + k1 + "\"]" + fields + "}]}";
  };
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"", {"tenants file f: not valid JSON"}},
      {"{", {"not valid JSON"}},
      {"[]", {"expected a JSON object"}},
      {"{}", {"missing \"tenants\""}},
      {R"({"tenants": {}})", {"must be a list"}},
      {R"({"tenants": []})", {"lists no tenant", "without a tenants file"}},
      {R"({"tenants": [], "extra": 1})", {"unknown key 'extra'"}},
      {R"({"tenants": [7]})", {"tenants[0]: tenant: expected an object"}},
      {R"({"tenants": [{"api_keys": [")" + k1 + "\"]}]}", {"tenants[0]: id: missing"}},
      {R"({"tenants": [{"id": 5}]})", {"tenants[0]: id: expected a string"}},
      {R"({"tenants": [{"id": ""}]})", {"tenants[0]: id: \"\" must be 1 to 64 characters"}},
      {R"({"tenants": [{"id": "a b"}]})", {"id: \"a b\" must be", "Prometheus label"}},
      {R"({"tenants": [{"id": "a\"b"}]})", {"id: \"a\\\"b\" must be"}},
      {R"({"tenants": [{"id": ")" + std::string(65, 'x') + "\"}]}", {"1 to 64 characters"}},
      {R"({"tenants": [{"id": "acme", "api_keys": [")" + k1 +
           R"("]}, {"id": "acme", "api_keys": [")" + k2 + "\"]}]}",
       {"tenants[1] (acme): id: 'acme' is also tenants[0]"}},
      {R"({"tenants": [{"id": "acme"}]})", {"tenants[0] (acme): api_keys: missing"}},
      {R"({"tenants": [{"id": "acme", "api_keys": []}]})", {"(acme): api_keys: must list"}},
      {R"({"tenants": [{"id": "acme", "api_keys": "x"}]})", {"(acme): api_keys: expected a list"}},
      {R"({"tenants": [{"id": "acme", "api_keys": [1]}]})",
       {"(acme): api_keys[0]: expected a string"}},
      {R"({"tenants": [{"id": "acme", "api_keys": ["plain-key"]}]})",
       {"(acme): api_keys[0]: expected \"sha256:", "raw keys are not accepted"}},
      {R"({"tenants": [{"id": "acme", "api_keys": [")" + k1 + R"(", ")" + k1 + "\"]}]}",
       {"(acme): api_keys[1]: the same key hash is also tenants[0] (acme) api_keys[0]"}},
      {R"({"tenants": [{"id": "acme", "api_keys": [")" + k1 +
           R"("]}, {"id": "beta", "api_keys": [")" + k1 + "\"]}]}",
       {"tenants[1] (beta): api_keys[0]: the same key hash is also tenants[0] (acme)",
        "exactly one tenant"}},
      {one(R"(, "kv_budget_bytes": -1)"), {"(acme): kv_budget_bytes: must be >= 0, got -1"}},
      {one(R"(, "kv_budget_bytes": 1.5)"), {"(acme): kv_budget_bytes: expected an integer"}},
      {one(R"(, "kv_budget_bytes": "lots")"), {"(acme): kv_budget_bytes: 'lots' is not a size"}},
      {one(R"(, "kv_budget_bytes": null)"), {"(acme): kv_budget_bytes: expected an integer"}},
      {one(R"(, "max_concurrent": -2)"), {"(acme): max_concurrent: must be >= 0, got -2"}},
      {one(R"(, "max_concurrent": 3000000000)"), {"(acme): max_concurrent: must be <="}},
      {one(R"(, "max_queued": -1)"), {"(acme): max_queued: must be >= 0, got -1"}},
      {one(R"(, "max_queued": "8")"), {"(acme): max_queued: expected an integer, got string"}},
      {one(R"(, "weight": 0)"), {"(acme): weight: must be a finite number > 0, got 0"}},
      {one(R"(, "weight": -1.5)"), {"(acme): weight: must be a finite number > 0"}},
      {one(R"(, "weight": "1")"), {"(acme): weight: expected a number"}},
      {one(R"(, "compression": "h2o")"), {"(acme): compression: expected an object"}},
      {one(R"(, "compression": {})"), {"(acme): compression: give \"policy\", \"ratio\""}},
      {one(R"(, "compression": {"policy": "zip"})"),
       {"(acme): compression.policy: \"zip\" is not one of", "attention-guided"}},
      {one(R"(, "compression": {"policy": 1})"), {"(acme): compression.policy: expected a string"}},
      {one(R"(, "compression": {"ratio": 0})"),
       {"(acme): compression.ratio: must be a number in (0, 1], got 0"}},
      {one(R"(, "compression": {"ratio": 1.5})"),
       {"compression.ratio: must be a number in (0, 1]"}},
      {one(R"(, "compression": {"ratio": "0.5"})"), {"compression.ratio: must be a number"}},
      {one(R"(, "compression": {"policy": "h2o", "level": 3})"),
       {"(acme): compression.level: unknown key"}},
      {one(R"(, "max_concurent": 8)"), {"(acme): max_concurent: unknown key"}},
  };
  for (const auto& [text, wants] : cases) {
    auto c = TenantsConfig::Parse(text, "f");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << text;
    for (const std::string& want : wants) {
      EXPECT_THAT(c.status().message(), HasSubstr(want)) << text;
    }
    // Every error names the file.
    const absl::string_view m = c.status().message();
    EXPECT_TRUE(absl::EndsWith(m, " (in f)") || absl::StartsWith(m, "tenants file f: ")) << m;
  }
}

TEST(TenantsConfigTest, LoadReadsTheFileAndNamesItInErrors) {
  const std::string path = kvserve::testing::ProcessTempDir() + "/kvserve_tenants_test.json";
  std::ofstream(path) << TwoTenants();
  auto c = TenantsConfig::Load(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->tenants().size(), 2u);
  std::ofstream(path) << R"({"tenants": [{"id": "a", "weight": 1}]})";
  auto bad = TenantsConfig::Load(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("(in " + path + ")"));
  std::remove(path.c_str());
  auto missing = TenantsConfig::Load(path);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("cannot read '" + path + "'"));
}

}  // namespace
}  // namespace kvserve::config
