#include "kvcache/contiguous_kv_cache.h"

#include "common/fp16.h"
#include "gtest/gtest.h"

namespace kvserve::kvcache {
namespace {

TEST(ContiguousKvCacheTest, WritesReadBackAsF16Spans) {
  ContiguousKvCache kv({2, 2, 4});
  ASSERT_TRUE(kv.AddSequence(7, 5).ok());
  std::vector<float> k(3 * 8), v(3 * 8);
  for (int i = 0; i < 24; ++i) k[i] = i * 0.5f, v[i] = -i * 0.25f;
  kv.Write(7, 1, 1, 3, k.data(), v.data());
  std::vector<KvSpan> spans;
  kv.Read(7, 1, 4, &spans);
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].pos0, 0);
  EXPECT_EQ(spans[0].n, 4);
  EXPECT_EQ(spans[0].k_stride, kKvSpanAlign);
  for (int j = 0; j < 3; ++j) {
    for (int c = 0; c < 8; ++c) {
      EXPECT_EQ(Fp16ToFp32(spans[0].k[c * spans[0].k_stride + 1 + j]), k[j * 8 + c]);
      EXPECT_EQ(Fp16ToFp32(spans[0].v[(1 + j) * 8 + c]), v[j * 8 + c]);
    }
  }
  // Capacity 5 rounds up to one aligned stride of 16 positions.
  EXPECT_EQ(kv.bytes(), 2u * 2 * 16 * 8 * 2);
}

TEST(ContiguousKvCacheTest, SequenceLifecycle) {
  ContiguousKvCache kv({1, 1, 2});
  EXPECT_EQ(kv.AddSequence(1, 0).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(kv.AddSequence(1, 4).ok());
  EXPECT_EQ(kv.AddSequence(1, 4).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(kv.HasSequence(1));
  kv.RemoveSequence(1);
  EXPECT_FALSE(kv.HasSequence(1));
  EXPECT_EQ(kv.bytes(), 0u);
  std::vector<KvSpan> spans;
  ASSERT_TRUE(kv.AddSequence(1, 4).ok());
  kv.Read(1, 0, 0, &spans);
  EXPECT_TRUE(spans.empty());
}

TEST(ContiguousKvCacheDeathTest, WritePastCapacityIsABug) {
  ContiguousKvCache kv({1, 1, 2});
  ASSERT_TRUE(kv.AddSequence(1, 2).ok());
  std::vector<float> k(6), v(6);
  EXPECT_DEATH(kv.Write(1, 0, 1, 3, k.data(), v.data()), "CHECK failed");
}

}  // namespace
}  // namespace kvserve::kvcache
