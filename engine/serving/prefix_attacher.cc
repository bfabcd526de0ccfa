#include "engine/serving/prefix_attacher.h"

#include <algorithm>
#include <span>

#include "absl/strings/str_cat.h"

namespace kvserve::engine {

std::string PrefixAttacher::Salt(const std::string& tenant,
                                 const kvcache::KvCompressionSpec& spec) {
  std::string salt = tenant;
  salt.push_back('\0');
  absl::StrAppend(&salt, spec.policy);
  salt.push_back('\0');
  absl::StrAppend(&salt, spec.ratio);
  return salt;
}

void PrefixAttacher::AttachWaiting(const std::vector<Sequence*>& waiting) {
  if (!enabled_) return;
  if (skip_next_) {
    skip_next_ = false;
    return;
  }
  for (Sequence* s : waiting) {
    if (s->num_computed != 0 || kv_->HasSequence(s->id)) continue;
    const std::span<const int32_t> prompt(s->tokens.data(), s->prompt_len);
    const int matched = kv_->MatchPrefix(s->cache_salt, prompt, s->prompt_len - 1, &match_);
    if (matched == 0) continue;
    kv_->AttachPrefix(s->id, match_);
    s->num_computed = matched;
    s->cached_tokens = matched;
    s->prefix_attached = true;
  }
}

bool PrefixAttacher::AnyAttached(const std::vector<Sequence*>& waiting) const {
  return enabled_ && std::any_of(waiting.begin(), waiting.end(),
                                 [](const Sequence* s) { return s->prefix_attached; });
}

void PrefixAttacher::DetachWaiting(const std::vector<Sequence*>& waiting) {
  if (!enabled_) return;  // nothing was attached
  for (Sequence* s : waiting) {
    if (!s->prefix_attached) continue;
    kv_->Free(s->id);
    s->num_computed = 0;
    s->cached_tokens = 0;
    s->prefix_attached = false;
  }
}

int PrefixAttacher::Keep(Sequence* s) {
  if (!s->prefix_attached) return 0;
  s->prefix_attached = false;
  hit_tokens_ += s->cached_tokens;
  return s->cached_tokens;
}

void PrefixAttacher::IndexComputedPrompt(const Sequence* s, int computed) {
  if (!enabled_) return;
  const int n = std::min(computed, s->prompt_len);
  kv_->IndexPrefix(s->id, s->cache_salt, std::span<const int32_t>(s->tokens.data(), n));
}

}  // namespace kvserve::engine
