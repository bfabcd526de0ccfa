#include "kvcache/block_pool.h"

#include <set>
#include <utility>

#include "common/fp16.h"
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
  const int32_t a = *pool->Allocate(), b = *pool->Allocate(), c = *pool->Allocate();
  EXPECT_EQ(c, 2);
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

TEST(BlockPoolTest, CompressionGivesBytesBackToThePool) {
  // head_dim 32 so that every tier has its own size.
  const KvShape shape{2, 2, 32};
  const size_t block = BlockPool::BytesPerBlock(shape, 16);
  auto made = BlockPool::Create(shape, 2 * block);
  ASSERT_TRUE(made.ok()) << made.status();
  BlockPool& pool = **made;
  const int32_t a = *pool.Allocate(), b = *pool.Allocate();
  EXPECT_EQ(pool.n_free(), 0);
  EXPECT_EQ(pool.Allocate(), std::nullopt);
  for (size_t i = 0; i < pool.unit_bytes(KvTier::kF16) / 2; ++i) {
    pool.k(a, 0)[i] = Fp32ToFp16(static_cast<float>(i % 7));
  }
  // Evicting both layers of `a` frees a whole f16 block's worth of units.
  ASSERT_TRUE(pool.Compress(a, 0, KvTier::kEvicted, 16));
  EXPECT_EQ(pool.n_free(), 0);  // one f16 unit is not a block
  ASSERT_TRUE(pool.Compress(a, 1, KvTier::kEvicted, 16));
  EXPECT_EQ(pool.n_free(), 1);
  EXPECT_EQ(pool.used_bytes(), block);
  EXPECT_EQ(pool.units(KvTier::kEvicted), 2);
  const int32_t c = *pool.Allocate();  // admitted thanks to the eviction
  EXPECT_TRUE(pool.CheckInvariants().ok()) << pool.CheckInvariants();
  // The pool is full again: quantizing needs a slab for int8 units, and
  // freeing one f16 unit leaves its slab half used, so it is refused and
  // nothing changes.
  EXPECT_FALSE(pool.Compress(b, 0, KvTier::kInt8, 16));
  EXPECT_EQ(pool.tier(b, 0), KvTier::kF16);
  EXPECT_TRUE(pool.CheckInvariants().ok()) << pool.CheckInvariants();
  pool.Release(c);
  // Now there is room: int8 then further down, bytes shrinking each time.
  size_t used = pool.used_bytes();
  for (KvTier t : {KvTier::kInt8, KvTier::kInt4, KvTier::kInt2, KvTier::kEvicted}) {
    ASSERT_TRUE(pool.Compress(b, 0, t, 16)) << KvTierName(t);
    EXPECT_EQ(pool.tier(b, 0), t);
    EXPECT_LT(pool.used_bytes(), used);
    used = pool.used_bytes();
    EXPECT_TRUE(pool.CheckInvariants().ok()) << pool.CheckInvariants();
  }
  pool.Release(a);
  pool.Release(b);
  EXPECT_EQ(pool.used_bytes(), 0u);
  EXPECT_EQ(pool.n_free(), 2);
  for (int t = 0; t < kNumKvTiers; ++t) EXPECT_EQ(pool.units(TierFromIndex(t)), 0);
  EXPECT_TRUE(pool.CheckInvariants().ok());
}

TEST(BlockPoolDeathTest, CompressionMisuseAborts) {
  const KvShape shape{1, 1, 16};
  auto pool = *BlockPool::Create(shape, 4 * BlockPool::BytesPerBlock(shape, 16));
  const int32_t id = *pool->Allocate();
  ASSERT_TRUE(pool->Compress(id, 0, KvTier::kInt4, 16));
  EXPECT_DEATH(pool->Compress(id, 0, KvTier::kInt8, 16), "only move down");
  EXPECT_DEATH(pool->k(id, 0), "compressed unit");
  // A compressed block cannot be the source of a copy-on-write.
  pool->Retain(id);
  const int32_t other = *pool->Allocate();
  EXPECT_DEATH(pool->CopyBlock(id, other), "compressed unit");
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
  pool->Release(*pool->Allocate());
  EXPECT_DEATH(pool->Retain(0), "retain of a free block");
  EXPECT_DEATH(pool->k(2, 0), "out of range");
}

}  // namespace
}  // namespace kvserve::kvcache
