#include "kvcache/prefix_cache.h"

#include <algorithm>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/check.h"

namespace kvserve::kvcache {

PrefixCache::PrefixCache(BlockPool* pool, int key_bits)
    : pool_(pool), key_mask_(key_bits >= 64 ? ~Key{0} : (Key{1} << key_bits) - 1) {
  KV_CHECK(pool_ != nullptr);
  KV_CHECK(key_bits >= 1 && key_bits <= 64);
}

PrefixCache::Key PrefixCache::SeedKey(std::string_view salt) {
  // Abseil here has its own string_view type.
  return absl::HashOf(absl::string_view(salt.data(), salt.size()));
}

PrefixCache::Key PrefixCache::ChainKey(Key previous, std::span<const int32_t> tokens) {
  return absl::HashOf(previous, absl::MakeConstSpan(tokens.data(), tokens.size()));
}

const PrefixCache::Entry* PrefixCache::Verified(Key key, int32_t parent, std::string_view salt,
                                                std::span<const int32_t> tokens) const {
  auto k = by_key_.find(key & key_mask_);
  if (k == by_key_.end()) return nullptr;
  const Entry& e = entries_.at(k->second);
  if (e.parent != parent) return nullptr;
  if (parent < 0 && e.salt != salt) return nullptr;
  if (!std::equal(tokens.begin(), tokens.end(), e.tokens.begin(), e.tokens.end())) return nullptr;
  return &e;
}

int PrefixCache::Match(std::string_view salt, std::span<const int32_t> tokens, int max_blocks,
                       std::vector<int32_t>* blocks) const {
  const int bt = pool_->block_tokens();
  const int n = std::min<int64_t>(max_blocks, static_cast<int64_t>(tokens.size()) / bt);
  Key key = SeedKey(salt);
  int32_t parent = -1;
  int matched = 0;
  for (int i = 0; i < n; ++i) {
    const std::span<const int32_t> chunk = tokens.subspan(static_cast<size_t>(i) * bt, bt);
    key = ChainKey(key, chunk);
    const Entry* e = Verified(key, parent, salt, chunk);
    if (e == nullptr) break;
    parent = by_key_.at(key & key_mask_);
    blocks->push_back(parent);
    ++matched;
  }
  return matched;
}

bool PrefixCache::IsUnused(int32_t block) const {
  auto it = entries_.find(block);
  return it != entries_.end() && it->second.on_lru;
}

bool PrefixCache::AllF16(int32_t block) const {
  for (int l = 0; l < pool_->shape().n_layers; ++l) {
    if (pool_->tier(block, l) != KvTier::kF16) return false;
  }
  return true;
}

int PrefixCache::Index(std::string_view salt, std::span<const int32_t> tokens,
                       std::span<const int32_t> table) {
  const int bt = pool_->block_tokens();
  const int n = std::min<int64_t>(static_cast<int64_t>(table.size()),
                                  static_cast<int64_t>(tokens.size()) / bt);
  Key key = SeedKey(salt);
  int32_t parent = -1;
  int added = 0;
  for (int i = 0; i < n; ++i) {
    const std::span<const int32_t> chunk = tokens.subspan(static_cast<size_t>(i) * bt, bt);
    key = ChainKey(key, chunk);
    if (Verified(key, parent, salt, chunk) != nullptr) {
      // Indexed already: this very block (the sequence started on it), or
      // another computation of the same chain, which stays canonical while
      // ours stays private. Later blocks hang off the canonical one.
      parent = by_key_.at(key & key_mask_);
      continue;
    }
    const int32_t id = table[i];
    // A key taken by another chain (a 64-bit collision), or a block
    // indexed under another chain (the caller's tokens or salt differ from
    // what the block holds): nothing further can be linked.
    if (by_key_.count(key & key_mask_) != 0 || Contains(id)) break;
    // Only exact KV is promised to future hits.
    if (!AllF16(id)) break;
    Entry e;
    e.key = key & key_mask_;
    e.parent = parent;
    if (parent < 0) e.salt = std::string(salt);
    e.tokens.assign(chunk.begin(), chunk.end());
    by_key_.emplace(e.key, id);
    entries_.emplace(id, std::move(e));
    if (parent >= 0) entries_.at(parent).children.push_back(id);
    pool_->Retain(id);
    OnReferenceChange(id);
    parent = id;
    ++added;
  }
  counters_.blocks_indexed += added;
  return added;
}

void PrefixCache::OnReferenceChange(int32_t block) {
  auto it = entries_.find(block);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  const bool unused = pool_->ref_count(block) == 1;
  if (unused && !e.on_lru) {
    e.lru_pos = lru_.insert(lru_.end(), block);
    e.on_lru = true;
  } else if (!unused && e.on_lru) {
    lru_.erase(e.lru_pos);
    e.on_lru = false;
  }
}

int PrefixCache::RemoveSubtree(int32_t block, int* removed) {
  auto top = entries_.find(block);
  if (top == entries_.end()) return 0;
  if (top->second.parent >= 0) {
    std::vector<int32_t>& siblings = entries_.at(top->second.parent).children;
    siblings.erase(std::find(siblings.begin(), siblings.end(), block));
  }
  int freed = 0;
  std::vector<int32_t> stack = {block};
  while (!stack.empty()) {
    const int32_t id = stack.back();
    stack.pop_back();
    auto it = entries_.find(id);
    Entry& e = it->second;
    stack.insert(stack.end(), e.children.begin(), e.children.end());
    if (e.on_lru) lru_.erase(e.lru_pos);
    by_key_.erase(e.key);
    entries_.erase(it);
    const bool last = pool_->ref_count(id) == 1;
    pool_->Release(id);
    ++*removed;
    if (last) {
      ++freed;
    } else {
      ++counters_.unindexed_blocks;
    }
  }
  counters_.evicted_blocks += freed;
  return freed;
}

int PrefixCache::EvictUnused(int n) {
  int freed = 0, removed = 0;
  // Each round frees at least the front block, whose only reference was
  // the index's.
  while (freed < n && !lru_.empty()) freed += RemoveSubtree(lru_.front(), &removed);
  return freed;
}

int PrefixCache::Unindex(int32_t block) {
  int removed = 0;
  RemoveSubtree(block, &removed);
  return removed;
}

void PrefixCache::RecordHit(int blocks) {
  KV_CHECK(blocks > 0);
  ++counters_.hits;
  counters_.hit_tokens += static_cast<int64_t>(blocks) * pool_->block_tokens();
}

absl::Status PrefixCache::CheckInvariants() const {
  if (by_key_.size() != entries_.size()) {
    return absl::InternalError(
        absl::StrCat("prefix index: ", by_key_.size(), " keys for ", entries_.size(), " entries"));
  }
  int on_lru = 0;
  for (const auto& [id, e] : entries_) {
    if (id < 0 || id >= pool_->id_limit() || pool_->ref_count(id) < 1) {
      return absl::InternalError(absl::StrCat("prefix index names free or bad block ", id));
    }
    if (!AllF16(id)) {
      return absl::InternalError(absl::StrCat("indexed block ", id, " is compressed"));
    }
    auto k = by_key_.find(e.key);
    if (k == by_key_.end() || k->second != id) {
      return absl::InternalError(absl::StrCat("indexed block ", id, " is not under its key"));
    }
    if (static_cast<int>(e.tokens.size()) != pool_->block_tokens()) {
      return absl::InternalError(
          absl::StrCat("indexed block ", id, " keeps ", e.tokens.size(), " tokens"));
    }
    if (e.on_lru != (pool_->ref_count(id) == 1)) {
      return absl::InternalError(absl::StrCat("indexed block ", id, " with ref count ",
                                              pool_->ref_count(id), (e.on_lru ? " is" : " is not"),
                                              " on the LRU list"));
    }
    on_lru += e.on_lru;
    if (e.parent >= 0) {
      auto p = entries_.find(e.parent);
      if (p == entries_.end() ||
          std::count(p->second.children.begin(), p->second.children.end(), id) != 1) {
        return absl::InternalError(
            absl::StrCat("indexed block ", id, " is not a child of its parent ", e.parent));
      }
    }
    for (int32_t c : e.children) {
      auto ch = entries_.find(c);
      if (ch == entries_.end() || ch->second.parent != id) {
        return absl::InternalError(
            absl::StrCat("indexed block ", id, " lists ", c, " as a child, which it is not"));
      }
    }
  }
  if (on_lru != static_cast<int>(lru_.size())) {
    return absl::InternalError(
        absl::StrCat("LRU list has ", lru_.size(), " blocks, ", on_lru, " entries say so"));
  }
  return absl::OkStatus();
}

}  // namespace kvserve::kvcache
