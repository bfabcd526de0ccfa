#include "engine/serving/stop_matcher.h"

#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

std::string Feed(StopMatcher& m, const std::vector<std::string>& pieces, bool* stopped) {
  std::string out;
  for (const auto& p : pieces) {
    out += m.Push(p, stopped);
    if (*stopped) return out;
  }
  return out + m.Flush();
}

TEST(StopMatcherTest, StopSplitAcrossPiecesIsFoundAndRemoved) {
  StopMatcher m({"\n\nUser:"});
  bool stopped = false;
  EXPECT_EQ(Feed(m, {"Hello", " there\n", "\nUs", "er: hi"}, &stopped), "Hello there");
  EXPECT_TRUE(stopped);
}

TEST(StopMatcherTest, HeldBackTextIsReleasedWhenItCannotMatch) {
  StopMatcher m({"STOP"});
  bool stopped = false;
  EXPECT_EQ(m.Push("abcST", &stopped), "abc");
  EXPECT_EQ(m.Push("x", &stopped), "STx");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(m.Push("ST", &stopped), "");
  EXPECT_EQ(m.Flush(), "ST");
}

TEST(StopMatcherTest, EarliestStopWinsAndEmptyStopsAreIgnored) {
  StopMatcher m({"", "world", "lo w"});
  bool stopped = false;
  EXPECT_EQ(m.Push("hello world", &stopped), "hel");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(m.Push("more", &stopped), "");
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcherTest, NoStopsPassesEverythingThrough) {
  StopMatcher m({});
  bool stopped = false;
  EXPECT_EQ(m.Push("abc", &stopped), "abc");
  EXPECT_EQ(m.Flush(), "");
}

}  // namespace
}  // namespace kvserve::engine
