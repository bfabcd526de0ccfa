// The prefix cache through PagedKvCache: chain keys, sharing, reference
// counts, LRU eviction and allocation accounting.
#include "kvcache/prefix_cache.h"

#include <algorithm>
#include <climits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/fp16.h"
#include "gtest/gtest.h"
#include "kvcache/paged_kv_cache.h"

namespace kvserve::kvcache {
namespace {

constexpr KvShape kShape{2, 2, 32};
constexpr int kBt = 16;

std::unique_ptr<PagedKvCache> MakeCache(int n_blocks) {
  auto kv = PagedKvCache::Create(kShape, n_blocks * BlockPool::BytesPerBlock(kShape, kBt), kBt);
  EXPECT_TRUE(kv.ok()) << kv.status();
  return *std::move(kv);
}

void ExpectInvariants(const PagedKvCache& kv) {
  const absl::Status st = kv.CheckInvariants();
  EXPECT_TRUE(st.ok()) << st << "\n" << kv.DebugString();
}

// The test's stand-in for a model: the KV of position p is a function of
// the salt and every token up to p, so that two sequences hold equal KV at
// p exactly when they agree on all of it. Values are multiples of 1/16 in
// [-8, 8), exact in f16.
uint64_t Mix(uint64_t h, uint64_t x) {
  h ^= x + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  h *= 0xff51afd7ed558ccdull;
  return h ^ (h >> 29);
}

std::vector<uint64_t> PositionHashes(const std::string& salt, const std::vector<int32_t>& tokens) {
  uint64_t h = 1469598103934665603ull;
  for (char c : salt) h = Mix(h, static_cast<unsigned char>(c));
  h = Mix(h, salt.size());
  std::vector<uint64_t> out;
  for (int32_t t : tokens) {
    h = Mix(h, static_cast<uint32_t>(t));
    out.push_back(h);
  }
  return out;
}

float KAt(uint64_t h, int c) {
  return static_cast<float>(static_cast<int>((h >> (c % 56)) & 0xff) - 128) / 16;
}
float VAt(uint64_t h, int c) {
  return static_cast<float>(static_cast<int>((h >> ((c * 7 + 3) % 56)) & 0xff) - 128) / 16;
}

// Writes positions [from, to) of seq, in every layer (layer l adds l).
void WriteKv(PagedKvCache* kv, int seq, const std::string& salt, const std::vector<int32_t>& tokens,
             int from, int to) {
  const std::vector<uint64_t> h = PositionHashes(salt, tokens);
  const int w = kShape.row_width();
  for (int l = 0; l < kShape.n_layers; ++l) {
    std::vector<float> k(static_cast<size_t>(to - from) * w), v(k.size());
    for (int p = from; p < to; ++p) {
      for (int c = 0; c < w; ++c) {
        k[static_cast<size_t>(p - from) * w + c] = KAt(h[p], c) + l;
        v[static_cast<size_t>(p - from) * w + c] = VAt(h[p], c) - l;
      }
    }
    kv->Write(seq, l, from, to - from, k.data(), v.data());
  }
}

// Checks that seq's positions [0, end) hold the KV of salt + tokens.
void ExpectKv(const PagedKvCache& kv, int seq, const std::string& salt,
              const std::vector<int32_t>& tokens, int end) {
  const std::vector<uint64_t> h = PositionHashes(salt, tokens);
  const int w = kShape.row_width();
  for (int l = 0; l < kShape.n_layers; ++l) {
    std::vector<KvSpan> spans;
    kv.Read(seq, l, end, &spans);
    int seen = 0;
    for (const KvSpan& sp : spans) {
      ASSERT_EQ(sp.tier, KvTier::kF16);
      for (int j = 0; j < sp.n; ++j) {
        const int p = sp.pos0 + j;
        for (int c = 0; c < w; ++c) {
          ASSERT_EQ(Fp16ToFp32(sp.k[c * sp.k_stride + j]), KAt(h[p], c) + l)
              << "seq " << seq << " layer " << l << " pos " << p;
          ASSERT_EQ(Fp16ToFp32(sp.v[j * w + c]), VAt(h[p], c) - l)
              << "seq " << seq << " layer " << l << " pos " << p;
        }
      }
      seen += sp.n;
    }
    ASSERT_EQ(seen, end);
  }
}

std::vector<int32_t> Tokens(int n, int32_t base) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = base + i;
  return t;
}

// A sequence that computed its whole prompt: reserve, write, index.
void Prefill(PagedKvCache* kv, int seq, const std::string& salt,
             const std::vector<int32_t>& prompt) {
  ASSERT_TRUE(kv->Reserve(seq, static_cast<int>(prompt.size())));
  WriteKv(kv, seq, salt, prompt, 0, static_cast<int>(prompt.size()));
  kv->IndexPrefix(seq, salt, prompt);
}

TEST(PrefixCacheTest, ChainKeysDependOnSaltAndEveryEarlierToken) {
  const std::vector<int32_t> a = Tokens(16, 100);
  std::vector<int32_t> b = a;
  b[15] = 7;
  const PrefixCache::Key s = PrefixCache::SeedKey(std::string("tenant\0spec", 11));
  EXPECT_EQ(PrefixCache::ChainKey(s, a), PrefixCache::ChainKey(s, a));
  EXPECT_NE(PrefixCache::ChainKey(s, a), PrefixCache::ChainKey(s, b));
  EXPECT_NE(PrefixCache::ChainKey(s, a), PrefixCache::ChainKey(PrefixCache::SeedKey("other"), a));
  EXPECT_NE(PrefixCache::ChainKey(PrefixCache::ChainKey(s, a), a),
            PrefixCache::ChainKey(PrefixCache::ChainKey(s, b), a));
  // The salt is compared whole, embedded NUL included.
  EXPECT_NE(PrefixCache::SeedKey(std::string("a\0b", 3)),
            PrefixCache::SeedKey(std::string("a\0c", 3)));
}

TEST(PrefixCacheTest, MatchesSameSaltAndTokensOnlyWholeBlocksInChainOrder) {
  auto kv = MakeCache(16);
  const std::string salt("acme\0attention-guided:0.25", 27);
  const std::vector<int32_t> prompt = Tokens(50, 1000);  // 3 full blocks + 2 tokens
  Prefill(kv.get(), 1, salt, prompt);
  EXPECT_EQ(kv->prefix_cache().n_indexed(), 3);  // the partial last block is never cached
  for (int b = 0; b < 3; ++b) EXPECT_TRUE(kv->IsIndexed(1, b));
  EXPECT_FALSE(kv->IsIndexed(1, 3));
  ExpectInvariants(*kv);

  std::vector<int32_t> blocks;
  EXPECT_EQ(kv->MatchPrefix(salt, prompt, 49, &blocks), 48);
  EXPECT_EQ(blocks,
            (std::vector<int32_t>{kv->BlockId(1, 0), kv->BlockId(1, 1), kv->BlockId(1, 2)}));
  // Capped so the last prompt token is left to compute.
  EXPECT_EQ(kv->MatchPrefix(salt, Tokens(48, 1000), 47, &blocks), 32);
  EXPECT_EQ(blocks.size(), 2u);
  EXPECT_EQ(kv->MatchPrefix(salt, prompt, 0, &blocks), 0);
  EXPECT_TRUE(blocks.empty());
  // A longer request over the same document matches the document.
  std::vector<int32_t> longer = Tokens(48, 1000);
  for (int32_t t : Tokens(30, 5)) longer.push_back(t);
  EXPECT_EQ(kv->MatchPrefix(salt, longer, 77, &blocks), 48);
  // Another salt (tenant or compression spec) never matches.
  EXPECT_EQ(kv->MatchPrefix("acme", prompt, 49, &blocks), 0);
  EXPECT_EQ(kv->MatchPrefix(std::string("acme\0attention-guided:0.5", 26), prompt, 49, &blocks), 0);
  // A different token in block 0 breaks the whole chain; in block 1 keeps
  // block 0 only.
  std::vector<int32_t> other = prompt;
  other[3] = -1;
  EXPECT_EQ(kv->MatchPrefix(salt, other, 49, &blocks), 0);
  other = prompt;
  other[20] = -1;
  EXPECT_EQ(kv->MatchPrefix(salt, other, 49, &blocks), 16);
  // The same block contents at another position are another chain.
  std::vector<int32_t> shifted(16, 0);
  for (int32_t t : prompt) shifted.push_back(t);
  EXPECT_EQ(kv->MatchPrefix(salt, shifted, 65, &blocks), 0);
  EXPECT_EQ(kv->prefix_cache().counters().blocks_indexed, 3);
}

TEST(PrefixCacheTest, IndexesOnlyWrittenFullF16BlocksAndNeverTwice) {
  auto kv = MakeCache(16);
  const std::vector<int32_t> prompt = Tokens(64, 0);
  ASSERT_TRUE(kv->Reserve(1, 64));
  WriteKv(kv.get(), 1, "s", prompt, 0, 40);
  // Only positions < Length(seq) = 40: two full blocks.
  EXPECT_EQ(kv->IndexPrefix(1, "s", prompt), 2);
  EXPECT_EQ(kv->IndexPrefix(1, "s", prompt), 0);  // already there
  WriteKv(kv.get(), 1, "s", prompt, 40, 64);
  // Block 2 compressed: the chain stops there, block 3 is not indexed.
  ASSERT_TRUE(kv->Compress(1, 1, 2, KvTier::kInt8));
  EXPECT_EQ(kv->IndexPrefix(1, "s", prompt), 0);
  EXPECT_EQ(kv->prefix_cache().n_indexed(), 2);
  ExpectInvariants(*kv);

  // A second computation of the same chain stays private; a block after it
  // that extends the chain hangs off the indexed (canonical) block.
  std::vector<int32_t> extended = Tokens(32, 0);
  for (int32_t t : Tokens(16, 900)) extended.push_back(t);
  Prefill(kv.get(), 2, "s", extended);
  EXPECT_FALSE(kv->IsIndexed(2, 0));
  EXPECT_FALSE(kv->IsIndexed(2, 1));
  EXPECT_TRUE(kv->IsIndexed(2, 2));
  std::vector<int32_t> blocks;
  EXPECT_EQ(kv->MatchPrefix("s", extended, 47, &blocks), 32);
  EXPECT_EQ(kv->MatchPrefix("s", extended, 48, &blocks), 48);
  EXPECT_EQ(blocks,
            (std::vector<int32_t>{kv->BlockId(1, 0), kv->BlockId(1, 1), kv->BlockId(2, 2)}));
  ExpectInvariants(*kv);
}

TEST(PrefixCacheTest, AttachedSequenceComputesOnlyTheTail) {
  auto kv = MakeCache(8);
  const std::string salt = "t1";
  std::vector<int32_t> q1 = Tokens(48, 0);
  for (int32_t t : Tokens(10, 500)) q1.push_back(t);
  Prefill(kv.get(), 1, salt, q1);
  kv->Free(1);
  // The document's blocks outlive the request, unused and evictable.
  EXPECT_EQ(kv->pool().n_used(), 3);
  EXPECT_EQ(kv->n_evictable(), 3);
  EXPECT_EQ(kv->n_available(), 8);
  ExpectInvariants(*kv);

  std::vector<int32_t> q2 = Tokens(48, 0);
  for (int32_t t : Tokens(20, 700)) q2.push_back(t);
  std::vector<int32_t> blocks;
  const int matched = kv->MatchPrefix(salt, q2, static_cast<int>(q2.size()) - 1, &blocks);
  ASSERT_EQ(matched, 48);
  EXPECT_EQ(kv->EvictableAmong(blocks), 3);
  kv->AttachPrefix(2, blocks);
  EXPECT_EQ(kv->Length(2), 48);
  EXPECT_EQ(kv->NumBlocks(2), 3);
  EXPECT_EQ(kv->n_evictable(), 0);
  EXPECT_EQ(kv->n_available(), 5);
  for (int b = 0; b < 3; ++b) EXPECT_FALSE(kv->IsPrivate(2, b));
  // Only the question's blocks are new, and nothing is copied.
  EXPECT_EQ(kv->BlocksNeeded(2, 68), 2);
  ASSERT_TRUE(kv->Reserve(2, 68));
  WriteKv(kv.get(), 2, salt, q2, 48, 68);
  EXPECT_EQ(kv->pool().n_used(), 5);
  EXPECT_EQ(std::vector<int32_t>(blocks.begin(), blocks.end()),
            (std::vector<int32_t>{kv->BlockId(2, 0), kv->BlockId(2, 1), kv->BlockId(2, 2)}));
  ExpectKv(*kv, 2, salt, q2, 68);
  EXPECT_EQ(kv->prefix_cache().counters().hits, 1);
  EXPECT_EQ(kv->prefix_cache().counters().hit_tokens, 48);
  ExpectInvariants(*kv);
  // Overwriting a cached position copies the block: the cache keeps its KV.
  EXPECT_EQ(kv->BlocksNeededForWrite(2, 5, 1), 1);
  WriteKv(kv.get(), 2, "another salt", q2, 5, 6);
  EXPECT_NE(kv->BlockId(2, 0), blocks[0]);
  EXPECT_TRUE(kv->prefix_cache().Contains(blocks[0]));
  kv->Free(2);
  kv->AttachPrefix(3, std::vector<int32_t>(blocks.begin(), blocks.end()));
  ExpectKv(*kv, 3, salt, q1, 48);
  kv->Free(3);
  ExpectInvariants(*kv);
}

TEST(PrefixCacheTest, FreeOrderDoesNotMatter) {
  const std::vector<int32_t> doc = Tokens(64, 3);
  std::vector<int> order = {1, 2, 3};
  do {
    auto kv = MakeCache(16);
    Prefill(kv.get(), 1, "s", doc);  // 4 blocks, all indexed
    std::vector<int32_t> blocks;
    ASSERT_EQ(kv->MatchPrefix("s", doc, 63, &blocks), 48);
    kv->AttachPrefix(2, blocks);
    ASSERT_EQ(kv->MatchPrefix("s", doc, 40, &blocks), 32);
    kv->AttachPrefix(3, blocks);
    ASSERT_TRUE(kv->Reserve(3, 40));
    EXPECT_EQ(kv->pool().ref_count(kv->BlockId(1, 0)), 4);  // 3 sequences + the index
    // Sequence 1 alone holds block 3, sequence 3 alone its private block 2.
    EXPECT_EQ(kv->BlocksReleasedByFree(1), 1);
    EXPECT_EQ(kv->BlocksReleasedByFree(2), 0);
    EXPECT_EQ(kv->BlocksReleasedByFree(3), 1);
    for (int seq : order) {
      const int available = kv->n_available();
      const int released = kv->BlocksReleasedByFree(seq);
      kv->Free(seq);
      EXPECT_EQ(kv->n_available(), available + released);
      ExpectInvariants(*kv);
    }
    // Idle: only the index holds blocks, all of them evictable.
    EXPECT_EQ(kv->num_sequences(), 0);
    EXPECT_EQ(kv->pool().n_used(), 4);
    EXPECT_EQ(kv->n_evictable(), 4);
    EXPECT_EQ(kv->n_available(), 16);
    EXPECT_EQ(kv->EvictUnused(INT_MAX), 4);
    EXPECT_EQ(kv->pool().n_used(), 0);
    EXPECT_EQ(kv->pool().n_free(), 16);
    ExpectInvariants(*kv);
  } while (std::next_permutation(order.begin(), order.end()));
}

TEST(PrefixCacheTest, EvictsLeastRecentlyUsedChainsFromTheirEnds) {
  auto kv = MakeCache(8);
  const std::vector<int32_t> x = Tokens(48, 0), y = Tokens(32, 100);
  Prefill(kv.get(), 1, "s", x);
  kv->Free(1);
  Prefill(kv.get(), 2, "s", y);
  kv->Free(2);
  // x was used last now: y is the least recently used.
  std::vector<int32_t> blocks;
  kv->MatchPrefix("s", x, 48, &blocks);
  kv->AttachPrefix(3, blocks);
  kv->Free(3);
  EXPECT_EQ(kv->n_available(), 8);
  auto matched = [&](const std::vector<int32_t>& t) {
    std::vector<int32_t> b;
    return kv->MatchPrefix("s", t, static_cast<int>(t.size()), &b);
  };
  const std::vector<std::pair<int, int>> expected = {{48, 16}, {48, 0}, {32, 0}, {16, 0}, {0, 0}};
  for (const auto& [mx, my] : expected) {
    EXPECT_EQ(kv->EvictUnused(1), 1);
    EXPECT_EQ(matched(x), mx);
    EXPECT_EQ(matched(y), my);
    EXPECT_EQ(kv->n_available(), 8);  // free + evictable: eviction moves blocks between them
    ExpectInvariants(*kv);
  }
  EXPECT_EQ(kv->EvictUnused(1), 0);  // nothing left
  EXPECT_EQ(kv->prefix_cache().counters().evicted_blocks, 5);
}

TEST(PrefixCacheTest, ReserveEvictsUnusedBlocksOnlyAsNeededAndAllOrNothing) {
  auto kv = MakeCache(8);
  const std::vector<int32_t> doc = Tokens(96, 0);  // 6 blocks
  Prefill(kv.get(), 1, "s", doc);
  kv->Free(1);
  EXPECT_EQ(kv->pool().n_free(), 2);
  EXPECT_EQ(kv->n_evictable(), 6);
  // Two fit in the free blocks: nothing is evicted.
  ASSERT_TRUE(kv->CanAllocate(2, 32));
  ASSERT_TRUE(kv->Reserve(2, 32));
  EXPECT_EQ(kv->n_evictable(), 6);
  // Three more take the chain's last three blocks.
  ASSERT_TRUE(kv->CanAllocate(2, 80));
  ASSERT_TRUE(kv->Reserve(2, 80));
  EXPECT_EQ(kv->n_evictable(), 3);
  std::vector<int32_t> blocks;
  EXPECT_EQ(kv->MatchPrefix("s", doc, 95, &blocks), 48);
  // Four more do not fit in 0 free + 3 evictable: nothing changes.
  EXPECT_FALSE(kv->CanAllocate(3, 64));
  EXPECT_FALSE(kv->Reserve(3, 64));
  EXPECT_FALSE(kv->HasSequence(3));
  EXPECT_EQ(kv->n_evictable(), 3);
  EXPECT_EQ(kv->prefix_cache().counters().evicted_blocks, 3);
  // A copy-on-write in Write evicts too.
  WriteKv(kv.get(), 2, "s", Tokens(80, 0), 0, 80);
  kv->Fork(2, 4);
  EXPECT_EQ(kv->BlocksNeededForWrite(4, 0, 1), 1);
  EXPECT_LE(kv->BlocksNeededForWrite(4, 0, 1), kv->n_available());
  WriteKv(kv.get(), 4, "x", Tokens(80, 0), 0, 1);
  EXPECT_EQ(kv->n_evictable(), 2);
  ExpectInvariants(*kv);
}

TEST(PrefixCacheTest, CompressingInAFullPoolEvictsUnusedCachedBlocks) {
  auto kv = MakeCache(8);
  Prefill(kv.get(), 1, "s", Tokens(96, 0));  // 6 blocks, indexed
  kv->Free(1);
  ASSERT_TRUE(kv->Reserve(2, 32));  // the 2 free blocks
  WriteKv(kv.get(), 2, "t", Tokens(32, 1), 0, 32);
  ASSERT_EQ(kv->pool().n_free(), 0);
  ASSERT_EQ(kv->n_evictable(), 6);
  // A quantized copy needs room the full pool lacks; the unused cached
  // blocks are that room (as they are for Reserve), so compression under
  // pressure is not refused while the cache holds blocks nobody uses.
  for (int l = 0; l < kShape.n_layers; ++l) {
    EXPECT_TRUE(kv->Compress(2, l, 0, KvTier::kInt4)) << l;
    EXPECT_TRUE(kv->Compress(2, l, 1, KvTier::kInt2)) << l;
  }
  EXPECT_LT(kv->n_evictable(), 6);
  EXPECT_GT(kv->prefix_cache().counters().evicted_blocks, 0);
  ExpectInvariants(*kv);
}

TEST(PrefixCacheTest, UnindexTakesTheRestOfTheChainAndFreesWhatNobodyHolds) {
  auto kv = MakeCache(8);
  const std::vector<int32_t> doc = Tokens(64, 0);
  Prefill(kv.get(), 1, "s", doc);
  std::vector<int32_t> blocks;
  kv->MatchPrefix("s", doc, 32, &blocks);
  kv->AttachPrefix(2, blocks);
  kv->Free(1);  // blocks 2 and 3 unused now
  EXPECT_EQ(kv->n_evictable(), 2);
  EXPECT_TRUE(kv->Unindex(2, 1));
  EXPECT_FALSE(kv->Unindex(2, 1));
  // Block 1 left the index (still held by seq 2); 2 and 3 were freed.
  EXPECT_EQ(kv->prefix_cache().n_indexed(), 1);
  EXPECT_EQ(kv->n_evictable(), 0);
  EXPECT_EQ(kv->pool().n_used(), 2);
  EXPECT_TRUE(kv->IsPrivate(2, 1));
  EXPECT_EQ(kv->MatchPrefix("s", doc, 63, &blocks), 16);
  EXPECT_EQ(kv->prefix_cache().counters().unindexed_blocks, 1);
  EXPECT_EQ(kv->prefix_cache().counters().evicted_blocks, 2);
  ExpectInvariants(*kv);
}

TEST(PrefixCacheDeathTest, MisuseAborts) {
  auto kv = MakeCache(8);
  const std::vector<int32_t> doc = Tokens(32, 0);
  Prefill(kv.get(), 1, "s", doc);
  EXPECT_DEATH(kv->AttachPrefix(1, std::vector<int32_t>{kv->BlockId(1, 0)}), "existing sequence");
  ASSERT_TRUE(kv->Reserve(2, 16));
  const int32_t private_block = kv->BlockId(2, 0);
  EXPECT_DEATH(kv->AttachPrefix(3, std::vector<int32_t>{private_block}), "not in the prefix index");
  // An indexed block never compresses: it is not private.
  EXPECT_DEATH(kv->Compress(1, 0, 0, KvTier::kInt8), "private");
  EXPECT_DEATH(kv->CompressShared(1, 0, 0, KvTier::kInt8), "indexed");
  EXPECT_DEATH(kv->IndexPrefix(9, "s", doc), "unknown sequence");
}

// With keys cut to a few bits nearly every chain collides with another:
// the index must still only hand out blocks whose salt and tokens, from the
// chain's start, equal the query's.
TEST(PrefixCacheTest, KeyCollisionsCostMissesNeverWrongBlocks) {
  for (int key_bits : {1, 2, 3}) {
    SCOPED_TRACE(key_bits);
    auto pool = *BlockPool::Create(kShape, 64 * BlockPool::BytesPerBlock(kShape, kBt), kBt);
    PrefixCache index(pool.get(), key_bits);
    std::mt19937_64 rng(key_bits);
    // What each indexed block holds: its salt and the tokens of its chain.
    std::map<int32_t, std::pair<std::string, std::vector<int32_t>>> holds;
    std::vector<std::pair<std::string, std::vector<int32_t>>> chains;
    std::vector<int32_t> held;
    int offered = 0, added = 0;
    for (int c = 0; c < 12; ++c) {
      const std::string salt = c % 3 == 0 ? "x" : "y";
      std::vector<int32_t> tokens(16 * (1 + rng() % 3));
      for (auto& t : tokens) t = static_cast<int32_t>(rng() % 3);  // few distinct blocks
      std::vector<int32_t> table;
      for (size_t b = 0; b < tokens.size() / kBt; ++b) table.push_back(*pool->Allocate());
      held.insert(held.end(), table.begin(), table.end());
      offered += static_cast<int>(table.size());
      const int n = index.Index(salt, tokens, table);
      added += n;
      for (size_t b = 0; b < table.size(); ++b) {
        if (index.Contains(table[b])) {
          holds[table[b]] = {salt,
                             std::vector<int32_t>(tokens.begin(), tokens.begin() + (b + 1) * kBt)};
        }
      }
      chains.emplace_back(salt, tokens);
      ASSERT_TRUE(index.CheckInvariants().ok()) << index.CheckInvariants();
    }
    EXPECT_LT(added, offered);  // collisions did keep blocks out
    EXPECT_GT(added, 0);
    int hits = 0;
    for (const auto& [salt, tokens] : chains) {
      for (const std::string& s : {salt, std::string("z")}) {
        std::vector<int32_t> blocks;
        const int n = index.Match(s, tokens, 8, &blocks);
        ASSERT_EQ(n, static_cast<int>(blocks.size()));
        hits += n;
        for (int b = 0; b < n; ++b) {
          const auto& [hsalt, htokens] = holds.at(blocks[b]);
          EXPECT_EQ(hsalt, s);
          EXPECT_EQ(htokens, std::vector<int32_t>(tokens.begin(), tokens.begin() + (b + 1) * kBt));
        }
      }
    }
    EXPECT_GT(hits, 0);
    for (int32_t id : held) {
      pool->Release(id);
      index.OnReferenceChange(id);
    }
    EXPECT_EQ(index.n_unused(), index.n_indexed());
    EXPECT_EQ(index.EvictUnused(INT_MAX), added);
    EXPECT_EQ(pool->n_used(), 0);
    EXPECT_TRUE(index.CheckInvariants().ok());
  }
}

// A randomized workload of requests over a few documents and two salts:
// hits, fresh prefills, decode growth, preemption (Free, then the request
// starts again from the cache), aborts (Free mid-prefill) and explicit
// evictions. After every step the reference counts and the index agree;
// every hit reads exactly the KV its own tokens would have produced; at
// idle every block is free once the cache is evicted.
TEST(PrefixCacheTest, RandomizedMixedWorkloadKeepsAccountsAndEndsWithEveryBlockFree) {
  for (uint64_t seed : {1u, 2u, 3u, 4u}) {
    SCOPED_TRACE(seed);
    std::mt19937_64 rng(seed);
    constexpr int kBlocks = 20;
    auto kv = MakeCache(kBlocks);
    const std::vector<std::string> salts = {std::string("a\0none", 6), std::string("b\0none", 6)};
    std::vector<std::vector<int32_t>> docs;
    for (int d = 0; d < 3; ++d) docs.push_back(Tokens(16 * (2 + d) + d * 5, 1000 * d));
    struct Request {
      std::string salt;
      std::vector<int32_t> tokens;  // prompt, then generated
      int prompt_len = 0;
      int computed = 0;
    };
    std::map<int, Request> running;
    std::vector<Request> preempted;
    int next_seq = 0;
    int64_t hit_tokens = 0;
    int n_preempted = 0;

    auto admit = [&](Request r) {
      std::vector<int32_t> blocks;
      const int matched = kv->MatchPrefix(r.salt, r.tokens, r.prompt_len - 1, &blocks);
      const int need = (r.prompt_len + kBt - 1) / kBt - matched / kBt;
      // The admission rule the scheduler follows.
      if (need + kv->EvictableAmong(blocks) > kv->n_available()) return false;
      const int seq = next_seq++;
      kv->AttachPrefix(seq, blocks);
      hit_tokens += matched;
      EXPECT_EQ(kv->BlocksNeeded(seq, r.prompt_len), need);
      EXPECT_TRUE(kv->Reserve(seq, r.prompt_len));
      if (matched > 0) ExpectKv(*kv, seq, r.salt, r.tokens, matched);
      r.computed = matched;
      running[seq] = std::move(r);
      return true;
    };

    for (int step = 0; step < 400; ++step) {
      const int op = static_cast<int>(rng() % 10);
      if (op < 3) {
        Request r;
        r.salt = salts[rng() % salts.size()];
        r.tokens = docs[rng() % docs.size()];
        const int q = static_cast<int>(rng() % 3);  // a few questions repeat
        for (int32_t t : Tokens(3 + q * 7, 50000 + q * 100)) r.tokens.push_back(t);
        r.prompt_len = static_cast<int>(r.tokens.size());
        admit(std::move(r));
      } else if (op < 7 && !running.empty()) {
        // One engine step for a random running request: the rest of its
        // prompt (in up to two chunks), or one decoded token.
        auto it = std::next(running.begin(), static_cast<long>(rng() % running.size()));
        Request& r = it->second;
        const int seq = it->first;
        if (r.computed < r.prompt_len) {
          const int n = std::min(r.prompt_len - r.computed, 1 + static_cast<int>(rng() % 40));
          WriteKv(kv.get(), seq, r.salt, r.tokens, r.computed, r.computed + n);
          r.computed += n;
          if (r.computed == r.prompt_len) kv->IndexPrefix(seq, r.salt, r.tokens);
        } else if (kv->CanAllocate(seq, r.computed + 1)) {
          ASSERT_TRUE(kv->Reserve(seq, r.computed + 1));
          r.tokens.push_back(static_cast<int32_t>(rng() % 50));
          WriteKv(kv.get(), seq, r.salt, r.tokens, r.computed, r.computed + 1);
          ++r.computed;
        } else {
          // Preempted for memory: starts again later from the cache.
          Request back = r;
          back.tokens.resize(back.prompt_len);
          back.computed = 0;
          preempted.push_back(std::move(back));
          ++n_preempted;
          kv->Free(seq);
          running.erase(it);
        }
      } else if (op == 7 && !running.empty()) {
        // Finished or aborted (mid-prefill or not), or preempted by the
        // scheduler for another request.
        auto it = std::next(running.begin(), static_cast<long>(rng() % running.size()));
        if (rng() % 2 == 0) {
          Request back = it->second;
          back.tokens.resize(back.prompt_len);
          back.computed = 0;
          preempted.push_back(std::move(back));
          ++n_preempted;
        }
        const int available = kv->n_available();
        const int released = kv->BlocksReleasedByFree(it->first);
        kv->Free(it->first);
        EXPECT_EQ(kv->n_available(), available + released);
        running.erase(it);
      } else if (op == 8 && !preempted.empty()) {
        if (admit(preempted.back())) preempted.pop_back();
      } else if (op == 9) {
        kv->EvictUnused(static_cast<int>(rng() % 3));
      }
      ExpectInvariants(*kv);
      ASSERT_EQ(kv->n_available(), kv->pool().n_free() + kv->n_evictable());
      // Blocks in use are those the tables name plus those only indexed.
      std::set<int32_t> held;
      for (const auto& [seq, r] : running) {
        for (int b = 0; b < kv->NumBlocks(seq); ++b) held.insert(kv->BlockId(seq, b));
      }
      ASSERT_EQ(kv->pool().n_used(), static_cast<int>(held.size()) + kv->n_evictable());
    }
    for (const auto& [seq, r] : running) kv->Free(seq);
    running.clear();
    ExpectInvariants(*kv);
    EXPECT_EQ(kv->pool().n_used(), kv->prefix_cache().n_indexed());
    EXPECT_EQ(kv->n_evictable(), kv->prefix_cache().n_indexed());
    // The workload covered what it is meant to.
    const PrefixCacheCounters& c = kv->prefix_cache().counters();
    EXPECT_GT(c.hits, 0);
    EXPECT_GT(c.evicted_blocks, 0);
    EXPECT_GT(n_preempted, 0);
    EXPECT_EQ(kv->prefix_cache().counters().hit_tokens, hit_tokens);
    kv->EvictUnused(INT_MAX);
    EXPECT_EQ(kv->pool().n_used(), 0);
    EXPECT_EQ(kv->pool().n_free(), kBlocks);
    EXPECT_EQ(kv->prefix_cache().n_indexed(), 0);
    ExpectInvariants(*kv);
  }
}

}  // namespace
}  // namespace kvserve::kvcache
