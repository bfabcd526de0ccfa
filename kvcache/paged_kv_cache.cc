#include "kvcache/paged_kv_cache.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/fp16.h"

namespace kvserve::kvcache {
namespace {

int CeilDiv(int a, int b) { return (a + b - 1) / b; }

}  // namespace

absl::StatusOr<std::unique_ptr<PagedKvCache>> PagedKvCache::Create(const KvShape& shape,
                                                                   size_t pool_bytes,
                                                                   int block_tokens) {
  auto pool = BlockPool::Create(shape, pool_bytes, block_tokens);
  if (!pool.ok()) return pool.status();
  return std::make_unique<PagedKvCache>(*std::move(pool));
}

PagedKvCache::PagedKvCache(std::unique_ptr<BlockPool> pool)
    : pool_(std::move(pool)), index_(pool_.get()) {
  KV_CHECK_MSG(pool_->n_used() == 0, "a paged cache needs a pool with no blocks in use");
}

int PagedKvCache::BlocksNeeded(int seq, int new_len) const {
  KV_CHECK(new_len >= 0);
  const int bt = block_tokens();
  const int want = CeilDiv(new_len, bt);
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return want;
  const Sequence& s = it->second;
  const int have = static_cast<int>(s.blocks.size());
  int need = std::max(0, want - have);
  if (new_len > s.length) {
    // Existing blocks that the positions [length, new_len) fall in.
    for (int b = s.length / bt; b < std::min(want, have); ++b) {
      if (pool_->ref_count(s.blocks[b]) > 1) ++need;
    }
  }
  return need;
}

bool PagedKvCache::CanAllocate(int seq, int new_len) const {
  return BlocksNeeded(seq, new_len) <= n_available();
}

int PagedKvCache::BlocksNeededForWrite(int seq, int pos, int n) const {
  auto it = seqs_.find(seq);
  KV_CHECK_MSG(it != seqs_.end(), "unknown sequence");
  const Sequence& s = it->second;
  const int bt = block_tokens();
  KV_CHECK(pos >= 0 && n >= 0 && pos + n <= static_cast<int>(s.blocks.size()) * bt);
  if (n == 0) return 0;
  int need = 0;
  for (int b = pos / bt; b <= (pos + n - 1) / bt; ++b) {
    if (pool_->ref_count(s.blocks[b]) > 1) ++need;
  }
  return need;
}

int PagedKvCache::Length(int seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? 0 : it->second.length;
}

int PagedKvCache::NumBlocks(int seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? 0 : static_cast<int>(it->second.blocks.size());
}

size_t PagedKvCache::SequenceBytes(int seq) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return 0;
  size_t bytes = 0;
  for (int32_t id : it->second.blocks) {
    for (int l = 0; l < shape().n_layers; ++l) bytes += pool_->unit_bytes(pool_->tier(id, l));
  }
  return bytes;
}

KvTier PagedKvCache::Tier(int seq, int layer, int block) const {
  auto it = seqs_.find(seq);
  KV_CHECK_MSG(it != seqs_.end(), "unknown sequence");
  KV_CHECK(block >= 0 && block < static_cast<int>(it->second.blocks.size()));
  return pool_->tier(it->second.blocks[block], layer);
}

void PagedKvCache::Tiers(int seq, int layer, std::vector<KvTier>* out) const {
  out->clear();
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  out->reserve(it->second.blocks.size());
  for (int32_t id : it->second.blocks) out->push_back(pool_->tier(id, layer));
}

int32_t PagedKvCache::BlockId(int seq, int block) const {
  auto it = seqs_.find(seq);
  KV_CHECK_MSG(it != seqs_.end(), "unknown sequence");
  KV_CHECK(block >= 0 && block < static_cast<int>(it->second.blocks.size()));
  return it->second.blocks[block];
}

bool PagedKvCache::IsPrivate(int seq, int block) const {
  // An indexed block has the index's reference too, so it is never private.
  return pool_->ref_count(BlockId(seq, block)) == 1;
}

int PagedKvCache::BlocksReleasedByFree(int seq) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return 0;
  int n = 0;
  for (int32_t id : it->second.blocks) {
    n += pool_->ref_count(id) == 1 + (index_.Contains(id) ? 1 : 0);
  }
  return n;
}

bool PagedKvCache::IsIndexed(int seq, int block) const {
  return index_.Contains(BlockId(seq, block));
}

int PagedKvCache::MatchPrefix(std::string_view salt, std::span<const int32_t> tokens,
                              int max_tokens, std::vector<int32_t>* blocks) const {
  blocks->clear();
  if (max_tokens <= 0) return 0;
  return index_.Match(salt, tokens, max_tokens / block_tokens(), blocks) * block_tokens();
}

int PagedKvCache::EvictableAmong(std::span<const int32_t> blocks) const {
  int n = 0;
  for (int32_t id : blocks) n += index_.IsUnused(id);
  return n;
}

bool PagedKvCache::Compress(int seq, int layer, int block, KvTier to) {
  auto it = seqs_.find(seq);
  KV_CHECK_MSG(it != seqs_.end(), "compress of an unknown sequence");
  const Sequence& s = it->second;
  KV_CHECK(block >= 0 && block < static_cast<int>(s.blocks.size()));
  KV_CHECK_MSG(pool_->ref_count(s.blocks[block]) == 1,
               "only a private block may be compressed (CompressShared for shared ones)");
  const int bt = block_tokens();
  const int n_valid = std::min(bt, s.length - block * bt);
  KV_CHECK_MSG(n_valid >= 1, "compress of a block holding no written position");
  return CompressEvicting(s.blocks[block], layer, to, n_valid);
}

bool PagedKvCache::CompressShared(int seq, int layer, int block, KvTier to) {
  auto it = seqs_.find(seq);
  KV_CHECK_MSG(it != seqs_.end(), "compress of an unknown sequence");
  const Sequence& s = it->second;
  KV_CHECK(block >= 0 && block < static_cast<int>(s.blocks.size()));
  const int32_t id = s.blocks[block];
  KV_CHECK_MSG(!index_.Contains(id), "an indexed block must stay f16: Unindex it first");
  // A shared block that is full in one holder is full in all: appending
  // into a shared block copies it first. So no holder will write it again.
  KV_CHECK_MSG(s.length >= (block + 1) * block_tokens(),
               "only a full block may be compressed while shared");
  return CompressEvicting(id, layer, to, block_tokens());
}

bool PagedKvCache::CompressEvicting(int32_t id, int layer, KvTier to, int n_valid) {
  // The quantized copy may need a new slab, which a full pool can only get
  // from the unused indexed blocks: free for the taking here as for Reserve.
  // Without this, compression under pressure was refused while the cache
  // held blocks nobody used. The block itself is held, so never evicted.
  while (!pool_->Compress(id, layer, to, n_valid)) {
    if (index_.EvictUnused(1) == 0) return false;
  }
  return true;
}

std::optional<int32_t> PagedKvCache::AllocateBlock() {
  std::optional<int32_t> id = pool_->Allocate();
  // Each eviction frees at least one f16 block: indexed blocks are f16.
  while (!id.has_value() && index_.EvictUnused(1) > 0) id = pool_->Allocate();
  return id;
}

void PagedKvCache::ReleaseBlock(int32_t id) {
  pool_->Release(id);
  index_.OnReferenceChange(id);
}

bool PagedKvCache::Reserve(int seq, int new_len) {
  const int need = BlocksNeeded(seq, new_len);
  if (need > n_available()) return false;
  if (need > pool_->n_free()) index_.EvictUnused(need - pool_->n_free());
  KV_CHECK_MSG(pool_->n_free() >= need, "evicting unused indexed blocks freed too little");
  Sequence& s = seqs_[seq];
  const int bt = block_tokens();
  const int want = CeilDiv(new_len, bt);
  if (new_len > s.length) {
    Unshare(s, s.length / bt, std::min(want, static_cast<int>(s.blocks.size())));
  }
  while (static_cast<int>(s.blocks.size()) < want) {
    const std::optional<int32_t> id = AllocateBlock();
    KV_CHECK_MSG(id.has_value(), "BlocksNeeded undercounted");
    s.blocks.push_back(*id);
  }
  return true;
}

void PagedKvCache::Free(int seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  const std::vector<int32_t>& blocks = it->second.blocks;
  for (int32_t id : blocks) pool_->Release(id);
  // Indexed blocks this sequence held last join the LRU list last block
  // first, so that a chain is evicted from its end.
  for (auto id = blocks.rbegin(); id != blocks.rend(); ++id) index_.OnReferenceChange(*id);
  seqs_.erase(it);
}

void PagedKvCache::Fork(int src, int dst) {
  KV_CHECK_MSG(src != dst, "fork onto itself");
  auto it = seqs_.find(src);
  KV_CHECK_MSG(it != seqs_.end(), "fork of an unknown sequence");
  KV_CHECK_MSG(seqs_.count(dst) == 0, "fork onto an existing sequence");
  Sequence copy;
  copy.length = it->second.length;
  // Only blocks holding written positions are shared: sharing src's empty
  // reserved tail would just force both sequences to copy it.
  const int n = CeilDiv(copy.length, block_tokens());
  copy.blocks.assign(it->second.blocks.begin(), it->second.blocks.begin() + n);
  for (int32_t id : copy.blocks) pool_->Retain(id);
  seqs_.emplace(dst, std::move(copy));
}

void PagedKvCache::AttachPrefix(int seq, std::span<const int32_t> blocks) {
  KV_CHECK_MSG(seqs_.count(seq) == 0, "AttachPrefix onto an existing sequence");
  Sequence s;
  s.blocks.assign(blocks.begin(), blocks.end());
  s.length = static_cast<int>(blocks.size()) * block_tokens();
  for (int32_t id : s.blocks) {
    KV_CHECK_MSG(index_.Contains(id), "AttachPrefix of a block not in the prefix index");
    pool_->Retain(id);
    index_.OnReferenceChange(id);  // in use now: off the LRU list
  }
  if (!blocks.empty()) index_.RecordHit(static_cast<int>(blocks.size()));
  seqs_.emplace(seq, std::move(s));
}

int PagedKvCache::IndexPrefix(int seq, std::string_view salt, std::span<const int32_t> tokens) {
  auto it = seqs_.find(seq);
  KV_CHECK_MSG(it != seqs_.end(), "IndexPrefix of an unknown sequence");
  const Sequence& s = it->second;
  const size_t written = std::min(tokens.size(), static_cast<size_t>(s.length));
  return index_.Index(salt, tokens.first(written), s.blocks);
}

bool PagedKvCache::Unindex(int seq, int block) { return index_.Unindex(BlockId(seq, block)) > 0; }

void PagedKvCache::Unshare(Sequence& s, int first, int last) {
  for (int b = first; b < last; ++b) {
    const int32_t old = s.blocks[b];
    if (pool_->ref_count(old) == 1) continue;
    const std::optional<int32_t> id = AllocateBlock();
    KV_CHECK_MSG(id.has_value(),
                 "no free block for copy-on-write: Reserve or check BlocksNeededForWrite first");
    // The eviction above cannot have freed `old`: this sequence holds it.
    pool_->CopyBlock(old, *id);
    ReleaseBlock(old);
    s.blocks[b] = *id;
  }
}

void PagedKvCache::Write(int seq, int layer, int pos, int n, const float* k, const float* v) {
  auto it = seqs_.find(seq);
  KV_CHECK_MSG(it != seqs_.end(), "write to unknown sequence");
  Sequence& s = it->second;
  const int bt = block_tokens();
  KV_CHECK(layer >= 0 && layer < shape().n_layers);
  KV_CHECK(pos >= 0 && n >= 0 && pos + n <= static_cast<int>(s.blocks.size()) * bt);
  if (n == 0) return;
  Unshare(s, pos / bt, (pos + n - 1) / bt + 1);
  const int w = shape().row_width();
  // Saturating conversion, as in ContiguousKvCache: attention gives
  // positions outside a query's range weight 0, and 0 * inf would be NaN.
  scratch_.resize(static_cast<size_t>(n) * w);
  Fp32ToFp16Saturated(k, scratch_.data(), static_cast<int64_t>(n) * w);
  for (int p = pos; p < pos + n;) {
    const int b = p / bt, off = p % bt;
    const int m = std::min(bt - off, pos + n - p);  // positions in this block
    const int j0 = p - pos;
    uint16_t* kd = pool_->k(s.blocks[b], layer);
    for (int c = 0; c < w; ++c) {
      uint16_t* dst = kd + static_cast<size_t>(c) * bt + off;
      for (int j = 0; j < m; ++j) dst[j] = scratch_[static_cast<size_t>(j0 + j) * w + c];
    }
    Fp32ToFp16Saturated(v + static_cast<size_t>(j0) * w,
                        pool_->v(s.blocks[b], layer) + static_cast<size_t>(off) * w,
                        static_cast<int64_t>(m) * w);
    p += m;
  }
  s.length = std::max(s.length, pos + n);
}

void PagedKvCache::Read(int seq, int layer, int end, std::vector<KvSpan>* spans) const {
  auto it = seqs_.find(seq);
  KV_CHECK_MSG(it != seqs_.end(), "read of unknown sequence");
  const Sequence& s = it->second;
  KV_CHECK(end >= 0 && end <= s.length);
  const int bt = block_tokens();
  for (int b = 0, p = 0; p < end; ++b, p += bt) {
    const int32_t id = s.blocks[b];
    const KvTier tier = pool_->tier(id, layer);
    KvSpan span;
    span.pos0 = p;
    span.n = std::min(bt, end - p);
    span.k_stride = bt;
    span.tier = tier;
    span.block = b;
    if (tier == KvTier::kEvicted) continue;
    if (tier == KvTier::kF16) {
      span.k = pool_->k(id, layer);
      span.v = pool_->v(id, layer);
    } else {
      span.packed = pool_->unit_data(id, layer);
    }
    spans->push_back(span);
  }
}

absl::Status PagedKvCache::CheckInvariants() const {
  // The pool checks that free + used == total: its free list holds exactly
  // the blocks with count 0, each once.
  if (absl::Status st = pool_->CheckInvariants(); !st.ok()) return st;
  const int n_blocks = pool_->id_limit();
  std::vector<int32_t> refs(n_blocks, 0);
  for (const auto& [seq, s] : seqs_) {
    const int capacity = static_cast<int>(s.blocks.size()) * block_tokens();
    if (s.length < 0 || s.length > capacity) {
      return absl::InternalError(
          absl::StrCat("sequence ", seq, " has length ", s.length, " outside capacity ", capacity));
    }
    std::vector<int32_t> sorted = s.blocks;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
      return absl::InternalError(absl::StrCat("sequence ", seq, " names a block twice"));
    }
    for (int32_t id : s.blocks) {
      if (id < 0 || id >= n_blocks) {
        return absl::InternalError(absl::StrCat("sequence ", seq, " names bad block ", id));
      }
      ++refs[id];
    }
  }
  for (int32_t id = 0; id < n_blocks; ++id) {
    // A free block has count 0 (checked by the pool), so a named or indexed
    // free block shows up here as a mismatch.
    const int indexed = index_.Contains(id) ? 1 : 0;
    if (refs[id] + indexed != pool_->ref_count(id)) {
      return absl::InternalError(absl::StrCat("block ", id, " has ref count ", pool_->ref_count(id),
                                              " but ", refs[id], " table entries and ", indexed,
                                              " index reference"));
    }
  }
  return index_.CheckInvariants();
}

std::string PagedKvCache::DebugString() const {
  std::string out =
      absl::StrCat("PagedKvCache: ", pool_->n_used(), " blocks used, ", pool_->n_free(), "/",
                   pool_->n_blocks(), " f16 blocks free, ", pool_->used_bytes(), " bytes used, ",
                   block_tokens(), " tokens/block, ", seqs_.size(), " sequences, ",
                   index_.n_indexed(), " blocks indexed (", index_.n_unused(), " unused)\n");
  const std::map<int, const Sequence*> ordered = [&] {
    std::map<int, const Sequence*> m;
    for (const auto& [seq, s] : seqs_) m[seq] = &s;
    return m;
  }();
  for (const auto& [seq, s] : ordered) {
    absl::StrAppend(&out, "  seq ", seq, ": length ", s->length, ", blocks [");
    for (size_t i = 0; i < s->blocks.size(); ++i) {
      const int32_t id = s->blocks[i];
      absl::StrAppend(&out, i ? " " : "", id);
      // Shared blocks carry their reference count, indexed ones an "i".
      if (pool_->ref_count(id) > 1) absl::StrAppend(&out, "x", pool_->ref_count(id));
      if (index_.Contains(id)) absl::StrAppend(&out, "i");
      // Compressed blocks list each layer's tier by its bits (e: evicted).
      std::string tiers;
      bool compressed = false;
      for (int l = 0; l < shape().n_layers; ++l) {
        const KvTier t = pool_->tier(id, l);
        compressed |= t != KvTier::kF16;
        tiers += t == KvTier::kEvicted ? "e" : std::to_string(KvTierBits(t));
        if (l + 1 < shape().n_layers) tiers += ",";
      }
      if (compressed) absl::StrAppend(&out, "{", tiers, "}");
    }
    absl::StrAppend(&out, "]\n");
  }
  return out;
}

}  // namespace kvserve::kvcache
