#include "kvcache/slab_arena.h"

#include <map>
#include <random>
#include <set>

#include "gtest/gtest.h"

namespace kvserve::kvcache {
namespace {

// f16 1024 bytes, int8 576, int4 320, int2 192; a slab holds 2 f16 units.
constexpr TierBytes kUnits = {1024, 576, 320, 192, 0};
constexpr size_t kSlab = 2048;

std::unique_ptr<SlabArena> Make(int64_t slabs) {
  auto a = SlabArena::Create(kUnits, kSlab, slabs);
  EXPECT_TRUE(a.ok()) << a.status();
  return *std::move(a);
}

TEST(SlabArenaTest, RejectsBadGeometry) {
  EXPECT_FALSE(SlabArena::Create(kUnits, kSlab, 0).ok());
  EXPECT_FALSE(SlabArena::Create(kUnits, 1000, 4).ok());  // not a multiple of 64
  TierBytes bad = kUnits;
  bad[TierIndex(KvTier::kInt4)] = 100;
  EXPECT_FALSE(SlabArena::Create(bad, kSlab, 4).ok());
  bad = kUnits;
  bad[TierIndex(KvTier::kEvicted)] = 64;
  EXPECT_FALSE(SlabArena::Create(bad, kSlab, 4).ok());
  bad = kUnits;
  bad[TierIndex(KvTier::kF16)] = 4096;  // larger than a slab
  EXPECT_FALSE(SlabArena::Create(bad, kSlab, 4).ok());
}

TEST(SlabArenaTest, CountsAvailableUnitsPerTier) {
  auto a = Make(3);
  EXPECT_EQ(a->capacity_bytes(), 3 * kSlab);
  EXPECT_EQ(a->Available(KvTier::kF16), 6);
  EXPECT_EQ(a->Available(KvTier::kInt8), 3 * 3);   // 2048 / 576 = 3
  EXPECT_EQ(a->Available(KvTier::kInt2), 3 * 10);  // 2048 / 192 = 10
  const uint32_t f = *a->Allocate(KvTier::kF16);
  EXPECT_EQ(a->Available(KvTier::kF16), 5);  // the hole in its slab, plus 2 free slabs
  EXPECT_EQ(a->Available(KvTier::kInt2), 20);
  const uint32_t q = *a->Allocate(KvTier::kInt2);
  EXPECT_EQ(a->Available(KvTier::kInt2), 9 + 10);
  EXPECT_EQ(a->Available(KvTier::kF16), 3);
  EXPECT_EQ(a->used_bytes(), 1024u + 192u);
  EXPECT_EQ(a->committed_bytes(), 2 * kSlab);
  a->Free(KvTier::kF16, f);
  EXPECT_EQ(a->committed_bytes(), kSlab);  // the f16 slab went back
  EXPECT_EQ(a->Available(KvTier::kF16), 4);
  a->Free(KvTier::kInt2, q);
  EXPECT_EQ(a->used_bytes(), 0u);
  EXPECT_EQ(a->free_slabs(), 3);
  EXPECT_TRUE(a->CheckInvariants().ok());
}

TEST(SlabArenaTest, UnitsAreAlignedDisjointAndStable) {
  auto a = Make(4);
  std::map<uint32_t, std::pair<KvTier, uint8_t>> live;
  std::mt19937 rng(7);
  const KvTier tiers[] = {KvTier::kF16, KvTier::kInt8, KvTier::kInt4, KvTier::kInt2};
  for (int step = 0; step < 4000; ++step) {
    if (live.empty() || rng() % 3 != 0) {
      const KvTier t = tiers[rng() % 4];
      const std::optional<uint32_t> h = a->Allocate(t);
      if (!h) {
        EXPECT_EQ(a->Available(t), 0) << step;
        continue;
      }
      ASSERT_EQ(live.count(*h), 0u);
      ASSERT_EQ(reinterpret_cast<uintptr_t>(a->Data(*h)) % SlabArena::kAlign, 0u);
      const uint8_t tag = static_cast<uint8_t>(rng());
      std::memset(a->Data(*h), tag, a->unit_bytes(t));
      live[*h] = {t, tag};
    } else {
      auto it = live.begin();
      std::advance(it, rng() % live.size());
      const auto [t, tag] = it->second;
      // Nothing else wrote over this unit while it lived.
      for (size_t i = 0; i < a->unit_bytes(t); ++i) ASSERT_EQ(a->Data(it->first)[i], tag);
      a->Free(t, it->first);
      live.erase(it);
    }
    if (step % 97 == 0) {
      ASSERT_TRUE(a->CheckInvariants().ok()) << a->CheckInvariants();
    }
  }
  size_t bytes = 0;
  for (const auto& [h, e] : live) bytes += a->unit_bytes(e.first);
  EXPECT_EQ(a->used_bytes(), bytes);
  for (const auto& [h, e] : live) a->Free(e.first, h);
  EXPECT_EQ(a->free_slabs(), 4);
  EXPECT_TRUE(a->CheckInvariants().ok());
}

TEST(SlabArenaDeathTest, MisuseAborts) {
  auto a = Make(2);
  const uint32_t h = *a->Allocate(KvTier::kInt4);
  EXPECT_DEATH(a->Free(KvTier::kF16, h), "wrong tier");
  EXPECT_DEATH(a->Allocate(KvTier::kEvicted), "no storage");
  a->Free(KvTier::kInt4, h);
  EXPECT_DEATH(a->Free(KvTier::kInt4, h), "wrong tier or already free");
}

}  // namespace
}  // namespace kvserve::kvcache
