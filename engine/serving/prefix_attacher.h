// Where the engine meets the prefix cache (kvcache/prefix_cache.h): waiting
// sequences borrow the longest cached prefix of their prompt for one
// scheduling round, and prompts are indexed as their blocks are computed.
//
// Why attachments last one round: attached before scheduling, the scheduler
// counts only what is left to compute and the blocks cannot be evicted in
// between; but a request still waiting afterwards must not pin cached blocks
// the running ones need, so it lets go (DetachWaiting) and tries again next
// step. When a step could run nothing at all, the next one attaches nothing
// (SkipNextAttach), so the head of the queue is admitted on free blocks even
// when cached prefixes fill the pool.
//
// Thread-safety: engine thread only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/serving/sequence.h"
#include "kvcache/paged_kv_cache.h"

namespace kvserve::engine {

class PrefixAttacher {
 public:
  // kv: not owned, outlives this. With enabled false every call is a no-op.
  PrefixAttacher(kvcache::PagedKvCache* kv, bool enabled) : kv_(kv), enabled_(enabled) {}

  // The sharing scope of a request's blocks: its tenant (a client cannot
  // choose another's) and its compression spec (blocks cached by one policy
  // are compressed as that policy decides, so only its own requests share
  // them).
  static std::string Salt(const std::string& tenant, const kvcache::KvCompressionSpec& spec);

  // Gives each waiting sequence that holds no KV yet the longest cached
  // prefix of its prompt, all but the prompt's last token (whose logits are
  // needed): sets num_computed, cached_tokens and prefix_attached.
  void AttachWaiting(const std::vector<Sequence*>& waiting);
  bool AnyAttached(const std::vector<Sequence*>& waiting) const;
  // Undoes AttachWaiting for the sequences still waiting.
  void DetachWaiting(const std::vector<Sequence*>& waiting);
  // s was admitted: its attachment becomes its own. Returns the prompt
  // tokens it took from the cache (0 if none were attached).
  int Keep(Sequence* s);
  // The next AttachWaiting attaches nothing (a step ran nothing).
  void SkipNextAttach() { skip_next_ = enabled_; }

  // Caches the prompt blocks s has computed (only full f16 blocks go in).
  // Called before the compressor's assessment of the step, so a prompt is
  // cached before it can be compressed.
  void IndexComputedPrompt(const Sequence* s, int computed);

  // Prompt tokens admitted from the cache so far.
  int64_t hit_tokens() const { return hit_tokens_; }

 private:
  kvcache::PagedKvCache* const kv_;  // not owned
  const bool enabled_;
  bool skip_next_ = false;
  int64_t hit_tokens_ = 0;
  std::vector<int32_t> match_;  // AttachWaiting's scratch
};

}  // namespace kvserve::engine
