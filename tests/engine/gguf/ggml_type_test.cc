#include "engine/gguf/ggml_type.h"

#include "gtest/gtest.h"

namespace kvserve::gguf {
namespace {

TEST(GgufTypeTest, BlockLayoutsMatchGgml) {
  EXPECT_EQ(BlockElements(GgmlType::kF32), 1);
  EXPECT_EQ(BlockBytes(GgmlType::kF32), 4u);
  EXPECT_EQ(BlockBytes(GgmlType::kF16), 2u);
  EXPECT_EQ(BlockBytes(GgmlType::kBF16), 2u);
  EXPECT_EQ(BlockElements(GgmlType::kQ4_0), 32);
  EXPECT_EQ(BlockBytes(GgmlType::kQ4_0), 18u);
  EXPECT_EQ(BlockBytes(GgmlType::kQ4_1), 20u);
  EXPECT_EQ(BlockBytes(GgmlType::kQ5_0), 22u);
  EXPECT_EQ(BlockBytes(GgmlType::kQ5_1), 24u);
  EXPECT_EQ(BlockBytes(GgmlType::kQ8_0), 34u);
  EXPECT_EQ(BlockElements(GgmlType::kQ4_K), 256);
  EXPECT_EQ(BlockBytes(GgmlType::kQ2_K), 84u);
  EXPECT_EQ(BlockBytes(GgmlType::kQ3_K), 110u);
  EXPECT_EQ(BlockBytes(GgmlType::kQ4_K), 144u);
  EXPECT_EQ(BlockBytes(GgmlType::kQ5_K), 176u);
  EXPECT_EQ(BlockBytes(GgmlType::kQ6_K), 210u);
  EXPECT_EQ(BlockBytes(GgmlType::kQ8_K), 292u);
}

TEST(GgufTypeTest, RowBytes) {
  EXPECT_EQ(RowBytes(GgmlType::kF32, 576), 576u * 4);
  EXPECT_EQ(RowBytes(GgmlType::kQ8_0, 576), 18u * 34);
  EXPECT_EQ(RowBytes(GgmlType::kQ4_1, 576), 18u * 20);
  EXPECT_EQ(RowBytes(GgmlType::kQ6_K, 512), 2u * 210);
  EXPECT_EQ(RowBytes(GgmlType::kQ4_0, 0), 0u);
}

TEST(GgufTypeTest, NamesAndSupport) {
  EXPECT_EQ(TypeName(GgmlType::kQ4_1), "Q4_1");
  EXPECT_EQ(TypeName(GgmlType::kBF16), "BF16");
  EXPECT_EQ(TypeName(static_cast<GgmlType>(99)), "type99");
  EXPECT_EQ(TypeName(static_cast<GgmlType>(4)), "type4");  // removed from GGML
  EXPECT_EQ(BlockElements(static_cast<GgmlType>(99)), 0);
  EXPECT_EQ(BlockBytes(static_cast<GgmlType>(99)), 0u);

  for (GgmlType t :
       {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ4_0, GgmlType::kQ4_1,
        GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ8_0, GgmlType::kQ2_K, GgmlType::kQ3_K,
        GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    EXPECT_TRUE(IsSupportedType(t)) << TypeName(t);
  }
  for (GgmlType t : {GgmlType::kQ8_1, GgmlType::kQ8_K, GgmlType::kI8, GgmlType::kI32,
                     GgmlType::kF64, static_cast<GgmlType>(99)}) {
    EXPECT_FALSE(IsSupportedType(t)) << TypeName(t);
  }
}

TEST(GgufTypeDeathTest, RowBytesOfPartialBlockIsABug) {
  EXPECT_DEATH(RowBytes(GgmlType::kQ4_0, 33), "multiple of the block size");
}

}  // namespace
}  // namespace kvserve::gguf
