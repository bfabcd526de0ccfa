#include "kvcache/block_pool.h"

#include <set>
#include <utility>

#include "gtest/gtest.h"

namespace kvserve::kvcache {
namespace {

// row_width 8, two layers: 2 (K, V) * 2 layers * 16 tokens * 8 * 2 bytes.
constexpr KvShape kShape{2, 2, 4};
constexpr size_t kBlockBytes = 1024;

std::unique_ptr<BlockPool> MakePool(int n_blocks, int block_tokens = 16) {
  auto pool = BlockPool::Create(kShape, BlockPool::BytesPerBlock(kShape, block_tokens) * n_blocks,
                                block_tokens);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return *std::move(pool);
}

TEST(BlockPoolTest, SizesFromByteBudget) {
  EXPECT_EQ(BlockPool::BytesPerBlock(kShape, 16), kBlockBytes);
  auto pool = BlockPool::Create(kShape, 3 * kBlockBytes - 1);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ((*pool)->n_blocks(), 2);
  EXPECT_EQ((*pool)->bytes_per_block(), kBlockBytes);
  EXPECT_EQ((*pool)->capacity_bytes(), 2 * kBlockBytes);
  EXPECT_EQ((*pool)->block_tokens(), 16);
  EXPECT_EQ((*pool)->n_free(), 2);
  EXPECT_EQ((*pool)->n_used(), 0);
  EXPECT_EQ((*pool)->used_bytes(), 0u);

  auto big = BlockPool::Create(kShape, 4 * kBlockBytes, 32);
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ((*big)->bytes_per_block(), 2 * kBlockBytes);
  EXPECT_EQ((*big)->n_blocks(), 2);
}

TEST(BlockPoolTest, RejectsBadArguments) {
  EXPECT_EQ(BlockPool::Create(kShape, kBlockBytes - 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockPool::Create(kShape, 0).status().code(), absl::StatusCode::kInvalidArgument);
  for (int bt : {0, -16, 8, 24}) {
    EXPECT_EQ(BlockPool::Create(kShape, 100 * kBlockBytes, bt).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bt;
  }
  EXPECT_EQ(BlockPool::Create(KvShape{0, 2, 4}, 100 * kBlockBytes).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockPool::Create(KvShape{2, 2, -4}, 100 * kBlockBytes).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BlockPoolTest, AllocatesInOrderAndReusesLastFreed) {
  auto pool = MakePool(3);
  EXPECT_EQ(pool->Allocate(), 0);
  EXPECT_EQ(pool->Allocate(), 1);
  EXPECT_EQ(pool->Allocate(), 2);
  EXPECT_EQ(pool->n_free(), 0);
  EXPECT_EQ(pool->n_used(), 3);
  EXPECT_EQ(pool->used_bytes(), 3 * kBlockBytes);
  EXPECT_EQ(pool->Allocate(), std::nullopt);
  EXPECT_TRUE(pool->CheckInvariants().ok());

  pool->Release(1);
  pool->Release(0);
  EXPECT_EQ(pool->n_free(), 2);
  EXPECT_EQ(pool->Allocate(), 0);  // LIFO
  EXPECT_EQ(pool->Allocate(), 1);
  EXPECT_EQ(pool->Allocate(), std::nullopt);
  EXPECT_TRUE(pool->CheckInvariants().ok());
}

TEST(BlockPoolTest, ReferenceCounts) {
  auto pool = MakePool(2);
  const int32_t id = *pool->Allocate();
  EXPECT_EQ(pool->ref_count(id), 1);
  pool->Retain(id);
  pool->Retain(id);
  EXPECT_EQ(pool->ref_count(id), 3);
  pool->Release(id);
  pool->Release(id);
  EXPECT_EQ(pool->ref_count(id), 1);
  EXPECT_EQ(pool->n_free(), 1);
  pool->Release(id);
  EXPECT_EQ(pool->ref_count(id), 0);
  EXPECT_EQ(pool->n_free(), 2);
  EXPECT_TRUE(pool->CheckInvariants().ok());
}

TEST(BlockPoolTest, StorageIsZeroedDisjointAndCopyable) {
  auto pool = MakePool(3, 32);
  const int w = kShape.row_width(), bt = pool->block_tokens();
  const size_t half = static_cast<size_t>(w) * bt;
  // Every K and V region of every block and layer is zero and its own: no
  // two regions overlap.
  std::set<const uint16_t*> starts;
  for (int32_t b = 0; b < pool->n_blocks(); ++b) {
    for (int l = 0; l < kShape.n_layers; ++l) {
      for (const uint16_t* p : {std::as_const(*pool).k(b, l), std::as_const(*pool).v(b, l)}) {
        for (size_t i = 0; i < half; ++i) ASSERT_EQ(p[i], 0) << "block " << b << " layer " << l;
        starts.insert(p);
      }
    }
  }
  ASSERT_EQ(starts.size(), 3u * kShape.n_layers * 2);
  for (auto it = starts.begin(); std::next(it) != starts.end(); ++it) {
    EXPECT_GE(*std::next(it) - *it, static_cast<ptrdiff_t>(half));
  }

  const int32_t a = *pool->Allocate(), b = *pool->Allocate();
  for (int l = 0; l < kShape.n_layers; ++l) {
    for (size_t i = 0; i < half; ++i) {
      pool->k(a, l)[i] = static_cast<uint16_t>(1 + i + 1000 * l);
      pool->v(a, l)[i] = static_cast<uint16_t>(7 + i + 1000 * l);
    }
  }
  pool->CopyBlock(a, b);
  for (int l = 0; l < kShape.n_layers; ++l) {
    for (size_t i = 0; i < half; ++i) {
      ASSERT_EQ(pool->k(b, l)[i], pool->k(a, l)[i]);
      ASSERT_EQ(pool->v(b, l)[i], pool->v(a, l)[i]);
    }
  }
  // The third block was not touched.
  for (size_t i = 0; i < half; ++i) ASSERT_EQ(pool->k(2, 1)[i], 0);
}

TEST(BlockPoolDeathTest, DoubleReleaseIsABug) {
  auto pool = MakePool(2);
  const int32_t id = *pool->Allocate();
  pool->Release(id);
  EXPECT_DEATH(pool->Release(id), "release of a free block");
}

TEST(BlockPoolDeathTest, BadIdsAreBugs) {
  auto pool = MakePool(2);
  EXPECT_DEATH(pool->Release(2), "out of range");
  EXPECT_DEATH(pool->Release(-1), "out of range");
  EXPECT_DEATH(pool->Retain(5), "out of range");
  EXPECT_DEATH(pool->Retain(0), "retain of a free block");
  EXPECT_DEATH(pool->k(2, 0), "out of range");
}

}  // namespace
}  // namespace kvserve::kvcache
