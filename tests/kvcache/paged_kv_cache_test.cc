#include "kvcache/paged_kv_cache.h"

#include <cstring>
#include <map>
#include <random>

#include "common/fp16.h"
#include "common/thread_pool.h"
#include "engine/model/attention.h"
#include "gtest/gtest.h"
#include "kvcache/contiguous_kv_cache.h"

namespace kvserve::kvcache {
namespace {

// The f16 contents of positions [0, end) of one layer, gathered from the
// spans a store hands out: k and v both [end][row_width].
struct Dense {
  std::vector<uint16_t> k, v;
  bool operator==(const Dense&) const = default;
};

Dense ReadDense(const KvStore& kv, int seq, int layer, int end) {
  const int w = kv.shape().row_width();
  std::vector<KvSpan> spans;
  kv.Read(seq, layer, end, &spans);
  Dense d;
  d.k.resize(static_cast<size_t>(end) * w);
  d.v.resize(static_cast<size_t>(end) * w);
  int next = 0;
  for (const KvSpan& sp : spans) {
    EXPECT_EQ(sp.pos0, next);
    EXPECT_GT(sp.n, 0);
    EXPECT_GE(sp.k_stride, (sp.n + kKvSpanAlign - 1) / kKvSpanAlign * kKvSpanAlign);
    for (int j = 0; j < sp.n; ++j) {
      for (int c = 0; c < w; ++c) {
        d.k[static_cast<size_t>(sp.pos0 + j) * w + c] = sp.k[c * sp.k_stride + j];
        d.v[static_cast<size_t>(sp.pos0 + j) * w + c] = sp.v[j * w + c];
      }
    }
    next += sp.n;
  }
  EXPECT_EQ(next, end);
  return d;
}

std::vector<float> Random(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = scale * d(rng);
  return v;
}

void ExpectInvariants(const PagedKvCache& kv) {
  const absl::Status st = kv.CheckInvariants();
  EXPECT_TRUE(st.ok()) << st << "\n" << kv.DebugString();
}

std::unique_ptr<PagedKvCache> MakeCache(const KvShape& shape, int n_blocks, int block_tokens = 16) {
  auto kv = PagedKvCache::Create(shape, BlockPool::BytesPerBlock(shape, block_tokens) * n_blocks,
                                 block_tokens);
  EXPECT_TRUE(kv.ok()) << kv.status();
  return *std::move(kv);
}

TEST(PagedKvCacheTest, CreateRejectsBadArguments) {
  EXPECT_EQ(PagedKvCache::Create({1, 1, 4}, 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PagedKvCache::Create({1, 1, 4}, 1 << 20, 12).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PagedKvCacheTest, ReserveIsAllOrNothing) {
  auto kv = MakeCache({2, 1, 4}, 4);
  const size_t block_bytes = kv->pool().bytes_per_block();
  EXPECT_EQ(kv->BlocksNeeded(1, 40), 3);
  EXPECT_EQ(kv->BlocksNeeded(1, 0), 0);
  ASSERT_TRUE(kv->Reserve(1, 40));
  EXPECT_TRUE(kv->HasSequence(1));
  EXPECT_EQ(kv->NumBlocks(1), 3);
  EXPECT_EQ(kv->Capacity(1), 48);
  EXPECT_EQ(kv->Length(1), 0);
  EXPECT_EQ(kv->SequenceBytes(1), 3 * block_bytes);
  EXPECT_EQ(kv->pool().n_free(), 1);
  EXPECT_EQ(kv->pool().used_bytes(), 3 * block_bytes);
  ExpectInvariants(*kv);

  // A new sequence that does not fit leaves no trace.
  EXPECT_EQ(kv->BlocksNeeded(2, 40), 3);
  EXPECT_FALSE(kv->CanAllocate(2, 40));
  EXPECT_FALSE(kv->Reserve(2, 40));
  EXPECT_FALSE(kv->HasSequence(2));
  EXPECT_EQ(kv->pool().n_free(), 1);
  ExpectInvariants(*kv);

  // Growth that does not fit leaves the sequence as it was.
  EXPECT_EQ(kv->BlocksNeeded(1, 65), 2);
  EXPECT_FALSE(kv->Reserve(1, 65));
  EXPECT_EQ(kv->NumBlocks(1), 3);
  EXPECT_EQ(kv->pool().n_free(), 1);
  ExpectInvariants(*kv);

  EXPECT_EQ(kv->BlocksNeeded(1, 64), 1);
  EXPECT_TRUE(kv->CanAllocate(1, 64));
  ASSERT_TRUE(kv->Reserve(1, 64));
  EXPECT_EQ(kv->NumBlocks(1), 4);
  EXPECT_EQ(kv->pool().n_free(), 0);
  // Reserving less than the capacity changes nothing.
  EXPECT_EQ(kv->BlocksNeeded(1, 10), 0);
  EXPECT_TRUE(kv->Reserve(1, 10));
  EXPECT_EQ(kv->NumBlocks(1), 4);
  // An empty sequence needs no block, even from an exhausted pool.
  EXPECT_TRUE(kv->Reserve(2, 0));
  EXPECT_TRUE(kv->HasSequence(2));
  EXPECT_EQ(kv->NumBlocks(2), 0);
  ExpectInvariants(*kv);
}

TEST(PagedKvCacheTest, FreeReturnsBlocks) {
  auto kv = MakeCache({1, 1, 4}, 4);
  ASSERT_TRUE(kv->Reserve(1, 17));
  ASSERT_TRUE(kv->Reserve(2, 30));
  EXPECT_EQ(kv->pool().n_free(), 0);
  kv->Free(1);
  EXPECT_FALSE(kv->HasSequence(1));
  EXPECT_EQ(kv->Length(1), 0);
  EXPECT_EQ(kv->NumBlocks(1), 0);
  EXPECT_EQ(kv->SequenceBytes(1), 0u);
  EXPECT_EQ(kv->pool().n_free(), 2);
  ExpectInvariants(*kv);
  kv->Free(1);  // unknown ids are a no-op
  kv->Free(99);
  EXPECT_EQ(kv->pool().n_free(), 2);
  // The freed blocks serve the next sequence.
  ASSERT_TRUE(kv->Reserve(3, 32));
  EXPECT_EQ(kv->pool().n_free(), 0);
  kv->Free(2);
  kv->Free(3);
  EXPECT_EQ(kv->pool().n_free(), 4);
  EXPECT_EQ(kv->num_sequences(), 0);
  ExpectInvariants(*kv);
}

// Writes the same data, in chunks crossing block boundaries, to a paged and
// a contiguous store: both must hand out identical f16 values at identical
// positions, and the paged spans must be one per block.
TEST(PagedKvCacheTest, WriteReadMatchesContiguousAcrossBlocks) {
  const KvShape shape{2, 2, 8};
  const int w = shape.row_width();
  const std::vector<int> chunks = {5, 16, 11, 1, 30, 7};  // 70 positions
  const int total = 70;
  for (int bt : {16, 32, 64}) {
    SCOPED_TRACE(bt);
    auto paged = MakeCache(shape, 12, bt);
    ContiguousKvCache contig(shape);
    for (int seq : {3, 4}) {
      ASSERT_TRUE(contig.AddSequence(seq, total).ok());
      ASSERT_TRUE(paged->Reserve(seq, total));
    }
    int pos = 0;
    uint64_t seed = 1;
    for (int n : chunks) {
      // Interleave the two sequences so that each sees the other's blocks
      // next to its own.
      for (int seq : {3, 4}) {
        for (int l = 0; l < shape.n_layers; ++l) {
          auto k = Random(static_cast<size_t>(n) * w, seed++, 10.0f);
          auto v = Random(static_cast<size_t>(n) * w, seed++, 10.0f);
          k[0] = 1e6f;  // saturates to the f16 maximum
          v[n * w - 1] = -1e6f;
          paged->Write(seq, l, pos, n, k.data(), v.data());
          contig.Write(seq, l, pos, n, k.data(), v.data());
        }
      }
      pos += n;
      for (int seq : {3, 4}) EXPECT_EQ(paged->Length(seq), pos);
    }
    ExpectInvariants(*paged);
    for (int seq : {3, 4}) {
      for (int l = 0; l < shape.n_layers; ++l) {
        for (int end : {0, 1, 15, 16, 17, 33, total}) {
          const Dense got = ReadDense(*paged, seq, l, end);
          ASSERT_TRUE(got == ReadDense(contig, seq, l, end))
              << "seq " << seq << " layer " << l << " end " << end;
        }
        // The saturated values are finite.
        const Dense d = ReadDense(*paged, seq, l, total);
        EXPECT_EQ(Fp16ToFp32(d.k[0]), 65504.0f);
      }
    }
    // Span layout: one per block, k_stride = block_tokens, last partial.
    std::vector<KvSpan> spans;
    paged->Read(3, 1, total, &spans);
    ASSERT_EQ(static_cast<int>(spans.size()), (total + bt - 1) / bt);
    for (size_t i = 0; i < spans.size(); ++i) {
      EXPECT_EQ(spans[i].pos0, static_cast<int>(i) * bt);
      EXPECT_EQ(spans[i].n, std::min(bt, total - static_cast<int>(i) * bt));
      EXPECT_EQ(spans[i].k_stride, bt);
    }
    // Read appends.
    paged->Read(4, 0, 5, &spans);
    EXPECT_EQ(spans.back().pos0, 0);
    EXPECT_EQ(spans.back().n, 5);
  }
}

TEST(PagedKvCacheTest, ForkSharesBlocksAndCopyOnWriteKeepsSource) {
  const KvShape shape{2, 1, 4};
  const int w = shape.row_width();
  auto kv = MakeCache(shape, 8);
  ASSERT_TRUE(kv->Reserve(0, 40));  // 3 blocks, only 2 of them written
  for (int l = 0; l < 2; ++l) {
    auto k = Random(20 * w, 10 + l), v = Random(20 * w, 20 + l);
    kv->Write(0, l, 0, 20, k.data(), v.data());
  }
  const Dense src0 = ReadDense(*kv, 0, 0, 20), src1 = ReadDense(*kv, 0, 1, 20);

  kv->Fork(0, 1);
  ExpectInvariants(*kv);
  EXPECT_EQ(kv->Length(1), 20);
  EXPECT_EQ(kv->NumBlocks(1), 2);  // the unwritten third block stays with 0
  EXPECT_EQ(kv->pool().n_used(), 3);
  std::vector<KvSpan> a, b;
  kv->Read(0, 1, 20, &a);
  kv->Read(1, 1, 20, &b);
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(a[i].k, b[i].k);
    EXPECT_EQ(a[i].v, b[i].v);
  }
  // Appending into the shared, partly filled second block needs a copy for
  // either sequence; growing past it needs a new block besides.
  EXPECT_EQ(kv->BlocksNeeded(1, 21), 1);
  EXPECT_EQ(kv->BlocksNeeded(0, 21), 1);
  EXPECT_EQ(kv->BlocksNeeded(1, 40), 2);
  EXPECT_EQ(kv->BlocksNeeded(1, 20), 0);
  ASSERT_TRUE(kv->Reserve(1, 21));
  EXPECT_EQ(kv->pool().n_used(), 4);
  ExpectInvariants(*kv);
  // Sequence 0 now owns the original outright.
  EXPECT_EQ(kv->BlocksNeeded(0, 21), 0);
  b.clear();
  kv->Read(1, 1, 20, &b);
  EXPECT_EQ(a[0].k, b[0].k);
  EXPECT_NE(a[1].k, b[1].k);
  // The copy carries every layer.
  EXPECT_TRUE(ReadDense(*kv, 1, 0, 20) == src0);
  EXPECT_TRUE(ReadDense(*kv, 1, 1, 20) == src1);

  // Sequence 1 appends: sequence 0 is untouched.
  auto k = Random(6 * w, 30), v = Random(6 * w, 31);
  for (int l = 0; l < 2; ++l) kv->Write(1, l, 20, 6, k.data(), v.data());
  EXPECT_EQ(kv->Length(1), 26);
  EXPECT_EQ(kv->Length(0), 20);
  EXPECT_TRUE(ReadDense(*kv, 0, 0, 20) == src0);
  EXPECT_TRUE(ReadDense(*kv, 0, 1, 20) == src1);
  Dense d1 = ReadDense(*kv, 1, 1, 26);
  EXPECT_TRUE(std::equal(src1.k.begin(), src1.k.end(), d1.k.begin()));
  EXPECT_EQ(d1.k[20 * w], Fp32ToFp16(k[0]));

  // Overwriting a position in the shared first block copies it in Write.
  EXPECT_EQ(kv->BlocksNeededForWrite(1, 3, 1), 1);
  EXPECT_EQ(kv->BlocksNeededForWrite(1, 16, 4), 0);
  std::vector<float> ones(w, 1.0f);
  kv->Write(1, 0, 3, 1, ones.data(), ones.data());
  EXPECT_EQ(kv->pool().n_used(), 5);
  EXPECT_EQ(kv->BlocksNeededForWrite(1, 3, 1), 0);
  ExpectInvariants(*kv);
  EXPECT_TRUE(ReadDense(*kv, 0, 0, 20) == src0);
  // Sequence 1 differs from the source in position 3 of layer 0 only.
  Dense d0 = ReadDense(*kv, 1, 0, 20);
  for (int c = 0; c < w; ++c) {
    EXPECT_EQ(d0.k[3 * w + c], Fp32ToFp16(1.0f));
    EXPECT_EQ(d0.v[3 * w + c], Fp32ToFp16(1.0f));
    d0.k[3 * w + c] = src0.k[3 * w + c];
    d0.v[3 * w + c] = src0.v[3 * w + c];
  }
  EXPECT_TRUE(d0 == src0);
  EXPECT_TRUE(ReadDense(*kv, 1, 1, 20) == src1);

  // Freeing the source leaves the fork whole.
  kv->Free(0);
  ExpectInvariants(*kv);
  EXPECT_EQ(kv->pool().n_used(), 2);
  EXPECT_TRUE(ReadDense(*kv, 1, 1, 26) == d1);
  kv->Free(1);
  EXPECT_EQ(kv->pool().n_free(), kv->pool().n_blocks());
  ExpectInvariants(*kv);
}

TEST(PagedKvCacheTest, AppendAfterForkWithoutReserveCopiesInWrite) {
  const KvShape shape{1, 1, 4};
  auto kv = MakeCache(shape, 4);
  ASSERT_TRUE(kv->Reserve(0, 32));
  auto k = Random(10 * 4, 1), v = Random(10 * 4, 2);
  kv->Write(0, 0, 0, 10, k.data(), v.data());
  const Dense before = ReadDense(*kv, 0, 0, 10);
  kv->Fork(0, 1);
  EXPECT_EQ(kv->pool().n_used(), 2);
  // Sequence 0's reservation of [10, 32) now crosses a shared block.
  EXPECT_EQ(kv->BlocksNeededForWrite(0, 10, 1), 1);
  EXPECT_EQ(kv->BlocksNeeded(0, 32), 1);
  std::vector<float> row(4, 2.0f);
  kv->Write(0, 0, 10, 1, row.data(), row.data());
  EXPECT_EQ(kv->pool().n_used(), 3);
  ExpectInvariants(*kv);
  EXPECT_TRUE(ReadDense(*kv, 1, 0, 10) == before);
  EXPECT_EQ(ReadDense(*kv, 0, 0, 11).v[10 * 4], Fp32ToFp16(2.0f));
}

TEST(PagedKvCacheTest, DebugStringShowsTablesAndSharing) {
  auto kv = MakeCache({1, 1, 4}, 4);
  ASSERT_TRUE(kv->Reserve(5, 20));
  std::vector<float> x(20 * 4, 0.5f);
  kv->Write(5, 0, 0, 20, x.data(), x.data());
  kv->Fork(5, 2);
  EXPECT_EQ(kv->DebugString(),
            "PagedKvCache: 2 blocks used, 2/4 f16 blocks free, 512 bytes used, 16 tokens/block, 2 "
            "sequences, 0 blocks indexed (0 unused)\n"
            "  seq 2: length 20, blocks [0x2 1x2]\n"
            "  seq 5: length 20, blocks [0x2 1x2]\n");
  // Indexed blocks carry an "i"; only the full first block is indexed.
  const std::vector<int32_t> tokens(20, 7);
  EXPECT_EQ(kv->IndexPrefix(5, "t", tokens), 1);
  kv->Free(2);
  EXPECT_EQ(kv->DebugString(),
            "PagedKvCache: 2 blocks used, 2/4 f16 blocks free, 512 bytes used, 16 tokens/block, 1 "
            "sequences, 1 blocks indexed (0 unused)\n"
            "  seq 5: length 20, blocks [0x2i 1]\n");
}

TEST(PagedKvCacheDeathTest, WritesOutsideTheReservationAreBugs) {
  auto kv = MakeCache({1, 1, 4}, 4);
  ASSERT_TRUE(kv->Reserve(1, 20));  // capacity 32
  std::vector<float> x(40 * 4);
  EXPECT_DEATH(kv->Write(1, 0, 30, 3, x.data(), x.data()), "CHECK failed");
  EXPECT_DEATH(kv->Write(1, 1, 0, 1, x.data(), x.data()), "CHECK failed");
  EXPECT_DEATH(kv->Write(2, 0, 0, 1, x.data(), x.data()), "unknown sequence");
  kv->Write(1, 0, 0, 5, x.data(), x.data());
  std::vector<KvSpan> spans;
  EXPECT_DEATH(kv->Read(1, 0, 6, &spans), "CHECK failed");
  EXPECT_DEATH(kv->Fork(1, 1), "itself");
  ASSERT_TRUE(kv->Reserve(2, 1));
  EXPECT_DEATH(kv->Fork(1, 2), "existing sequence");
  EXPECT_DEATH(kv->Fork(7, 8), "unknown sequence");
}

TEST(PagedKvCacheDeathTest, CopyOnWriteWithoutAFreeBlockIsABug) {
  auto kv = MakeCache({1, 1, 4}, 2);
  ASSERT_TRUE(kv->Reserve(0, 32));
  std::vector<float> x(20 * 4);
  kv->Write(0, 0, 0, 20, x.data(), x.data());
  kv->Fork(0, 1);
  EXPECT_FALSE(kv->CanAllocate(0, 21));
  EXPECT_DEATH(kv->Write(0, 0, 19, 2, x.data(), x.data()), "copy-on-write");
}

// Random reserve/write/free/fork on a small pool, against a shadow copy of
// every sequence's f16 contents; invariants are checked after every step.
TEST(PagedKvCacheTest, RandomOperationsKeepInvariants) {
  const KvShape shape{2, 1, 4};
  const int w = shape.row_width();
  auto kv = MakeCache(shape, 12);
  struct Shadow {
    std::vector<uint16_t> k[2], v[2];  // [length][w] per layer
  };
  std::map<int, Shadow> shadow;
  std::mt19937 rng(20240611);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  // Values exactly representable in f16, so the expected bits are exact.
  auto value = [&] { return static_cast<float>(uniform(-4096, 4096)) / 8.0f; };
  int reserve_failed = 0, reserve_ok = 0, writes = 0, cow_writes = 0, forks = 0, frees = 0;

  for (int step = 0; step < 1000; ++step) {
    SCOPED_TRACE(step);
    const int seq = uniform(0, 5);
    switch (uniform(0, 3)) {
      case 0: {  // reserve
        const int new_len = kv->Length(seq) + uniform(0, 40);
        const int need = kv->BlocksNeeded(seq, new_len);
        const int free_before = kv->pool().n_free(), blocks_before = kv->NumBlocks(seq);
        const bool existed = kv->HasSequence(seq);
        EXPECT_EQ(kv->CanAllocate(seq, new_len), need <= free_before);
        if (kv->Reserve(seq, new_len)) {
          ++reserve_ok;
          EXPECT_LE(need, free_before);
          EXPECT_EQ(kv->pool().n_free(), free_before - need);
          EXPECT_GE(kv->Capacity(seq), new_len);
          EXPECT_EQ(kv->BlocksNeeded(seq, new_len), 0);
          if (new_len > kv->Length(seq)) {
            EXPECT_EQ(kv->BlocksNeededForWrite(seq, kv->Length(seq), new_len - kv->Length(seq)), 0);
          }
          shadow[seq];
        } else {
          ++reserve_failed;
          EXPECT_GT(need, free_before);
          EXPECT_EQ(kv->pool().n_free(), free_before);
          EXPECT_EQ(kv->NumBlocks(seq), blocks_before);
          EXPECT_EQ(kv->HasSequence(seq), existed);
        }
        break;
      }
      case 1: {  // write: append or overwrite, within capacity
        if (!kv->HasSequence(seq) || kv->Capacity(seq) == 0) break;
        const int len = kv->Length(seq), cap = kv->Capacity(seq);
        const int pos = uniform(std::max(0, len - 20), std::min(len, cap - 1));
        const int n = uniform(1, std::min(cap - pos, 20));
        const int need = kv->BlocksNeededForWrite(seq, pos, n);
        if (need > kv->pool().n_free()) break;
        const int free_before = kv->pool().n_free();
        Shadow& sh = shadow[seq];
        for (int l = 0; l < 2; ++l) {
          std::vector<float> k(n * w), v(n * w);
          for (auto& x : k) x = value();
          for (auto& x : v) x = value();
          kv->Write(seq, l, pos, n, k.data(), v.data());
          sh.k[l].resize(std::max<size_t>(sh.k[l].size(), static_cast<size_t>(pos + n) * w));
          sh.v[l].resize(sh.k[l].size());
          for (int i = 0; i < n * w; ++i) {
            sh.k[l][pos * w + i] = Fp32ToFp16(k[i]);
            sh.v[l][pos * w + i] = Fp32ToFp16(v[i]);
          }
        }
        EXPECT_EQ(kv->pool().n_free(), free_before - need);
        EXPECT_EQ(kv->Length(seq), std::max(len, pos + n));
        ++writes;
        cow_writes += need > 0;
        break;
      }
      case 2:  // free (possibly unknown)
        kv->Free(seq);
        shadow.erase(seq);
        ++frees;
        break;
      case 3: {  // fork into a free id
        const int dst = uniform(0, 5);
        if (!kv->HasSequence(seq) || kv->HasSequence(dst)) break;
        const int used_before = kv->pool().n_used();
        kv->Fork(seq, dst);
        EXPECT_EQ(kv->pool().n_used(), used_before);
        EXPECT_EQ(kv->Length(dst), kv->Length(seq));
        shadow[dst] = shadow[seq];
        ++forks;
        break;
      }
    }
    const absl::Status st = kv->CheckInvariants();
    ASSERT_TRUE(st.ok()) << st << "\n" << kv->DebugString();
    ASSERT_EQ(static_cast<int>(shadow.size()), kv->num_sequences());
    for (const auto& [id, sh] : shadow) {
      const int len = kv->Length(id);
      ASSERT_EQ(sh.k[0].size(), static_cast<size_t>(len) * w) << "seq " << id;
      for (int l = 0; l < 2; ++l) {
        const Dense d = ReadDense(*kv, id, l, len);
        ASSERT_TRUE(d.k == sh.k[l] && d.v == sh.v[l]) << "seq " << id << " layer " << l;
      }
    }
  }
  for (const auto& [id, sh] : shadow) kv->Free(id);
  EXPECT_EQ(kv->pool().n_free(), kv->pool().n_blocks());
  EXPECT_EQ(kv->num_sequences(), 0);
  ExpectInvariants(*kv);
  // Every path was taken (the seed is fixed, so these are deterministic).
  EXPECT_GT(reserve_ok, 0);
  EXPECT_GT(reserve_failed, 0);
  EXPECT_GT(writes, 0);
  EXPECT_GT(cow_writes, 0);
  EXPECT_GT(forks, 0);
  EXPECT_GT(frees, 0);
}

// The real attention kernel reads through the spans: over a paged store it
// must give the same bits as over a contiguous one with the same K/V,
// including a sequence forked from another mid-way.
TEST(PagedKvCacheAttentionTest, BitIdenticalToContiguous) {
  model::ModelConfig c;
  c.n_layers = 2;
  c.n_head = 6;
  c.n_kv_head = 2;
  c.head_dim = 32;
  c.n_embd = 192;
  const KvShape shape{c.n_layers, c.n_kv_head, c.head_dim};
  const int w = c.kv_dim(), q_w = c.q_dim();
  for (int bt : {16, 32, 64}) {
    SCOPED_TRACE(bt);
    auto paged = MakeCache(shape, 16, bt);
    ContiguousKvCache contig(shape);
    uint64_t seed = 100;
    // Writes the same fresh K/V to both stores, every layer.
    auto write = [&](int s, int pos, int n) {
      for (int l = 0; l < c.n_layers; ++l) {
        auto k = Random(static_cast<size_t>(n) * w, seed++);
        auto v = Random(static_cast<size_t>(n) * w, seed++);
        paged->Write(s, l, pos, n, k.data(), v.data());
        contig.Write(s, l, pos, n, k.data(), v.data());
      }
    };
    // Sequence 0: a 40-position prompt; sequence 2 forks from it; then both
    // continue differently. Sequence 1 stands alone.
    ASSERT_TRUE(paged->Reserve(0, 40));
    ASSERT_TRUE(contig.AddSequence(0, 70).ok());
    ASSERT_TRUE(contig.AddSequence(1, 23).ok());
    ASSERT_TRUE(contig.AddSequence(2, 70).ok());
    for (int l = 0; l < c.n_layers; ++l) {
      auto k = Random(40 * w, seed++), v = Random(40 * w, seed++);
      paged->Write(0, l, 0, 40, k.data(), v.data());
      contig.Write(0, l, 0, 40, k.data(), v.data());
      contig.Write(2, l, 0, 40, k.data(), v.data());
    }
    paged->Fork(0, 2);
    ASSERT_TRUE(paged->Reserve(0, 70));
    ASSERT_TRUE(paged->Reserve(2, 70));
    ASSERT_TRUE(paged->Reserve(1, 23));
    write(0, 40, 30);
    write(1, 0, 23);
    for (int p = 40; p < 70; ++p) write(2, p, 1);  // decode steps
    ExpectInvariants(*paged);

    std::vector<int32_t> seq, pos;
    for (int p = 50; p < 70; ++p) seq.push_back(0), pos.push_back(p);
    for (int p = 20; p < 23; ++p) seq.push_back(1), pos.push_back(p);
    for (int p = 0; p < 70; p += 7) seq.push_back(2), pos.push_back(p);
    const int n = static_cast<int>(seq.size());
    const auto q = Random(static_cast<size_t>(n) * q_w, 7);
    ThreadPool pool(2);
    model::Attention att(c);
    for (int l = 0; l < c.n_layers; ++l) {
      std::vector<float> want(n * q_w), got(n * q_w);
      att.Compute(contig, l, q.data(), seq.data(), pos.data(), n, want.data(), &pool);
      att.Compute(*paged, l, q.data(), seq.data(), pos.data(), n, got.data(), &pool);
      ASSERT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0)
          << "layer " << l;
    }
    // The fork must differ from its source after position 40, or the check
    // above could not tell their tables apart.
    EXPECT_FALSE(ReadDense(*paged, 0, 0, 70) == ReadDense(*paged, 2, 0, 70));
    EXPECT_TRUE(ReadDense(contig, 2, 1, 70) == ReadDense(*paged, 2, 1, 70));
  }
}

}  // namespace
}  // namespace kvserve::kvcache
