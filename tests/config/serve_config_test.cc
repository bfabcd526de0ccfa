#include "config/serve_config.h"

#include "gtest/gtest.h"

namespace kvserve::config {
namespace {

ServeConfig Valid() {
  ServeConfig c;
  c.model_path = "/proc/self/exe";  // any readable file
  return c;
}

TEST(ServeConfigTest, AcceptsDefaultsWithAReadableModel) {
  auto c = ValidateServeConfig(Valid());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->port, 8080);
}

TEST(ServeConfigTest, RejectsEachBadFieldByName) {
  struct Case {
    void (*mutate)(ServeConfig&);
    const char* field;
  } cases[] = {
      {[](ServeConfig& c) { c.model_path = ""; }, "model"},
      {[](ServeConfig& c) { c.model_path = "/nonexistent/x.gguf"; }, "model"},
      {[](ServeConfig& c) { c.host = ""; }, "host"},
      {[](ServeConfig& c) { c.port = 0; }, "port"},
      {[](ServeConfig& c) { c.port = 70000; }, "port"},
      {[](ServeConfig& c) { c.threads = -1; }, "threads"},
      {[](ServeConfig& c) { c.log_level = "loud"; }, "log_level"},
  };
  for (const auto& tc : cases) {
    ServeConfig c = Valid();
    tc.mutate(c);
    auto r = ValidateServeConfig(c);
    ASSERT_FALSE(r.ok()) << tc.field;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(r.status().message().rfind(tc.field, 0), 0u) << r.status();
  }
}

}  // namespace
}  // namespace kvserve::config
