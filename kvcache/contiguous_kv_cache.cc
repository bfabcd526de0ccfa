#include "kvcache/contiguous_kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/fp16.h"

namespace kvserve::kvcache {

absl::Status ContiguousKvCache::AddSequence(int seq, int max_tokens) {
  if (max_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens must be > 0, got ", max_tokens));
  }
  if (seqs_.count(seq)) return absl::AlreadyExistsError(absl::StrCat("sequence ", seq));
  auto s = std::make_unique<Sequence>();
  s->capacity = max_tokens;
  s->stride = (max_tokens + kKvSpanAlign - 1) / kKvSpanAlign * kKvSpanAlign;
  const size_t n = static_cast<size_t>(s->stride) * shape_.row_width();
  s->k.assign(shape_.n_layers, std::vector<uint16_t>(n));
  s->v.assign(shape_.n_layers, std::vector<uint16_t>(n));
  seqs_[seq] = std::move(s);
  return absl::OkStatus();
}

void ContiguousKvCache::RemoveSequence(int seq) { seqs_.erase(seq); }

size_t ContiguousKvCache::bytes() const {
  size_t total = 0;
  for (const auto& [id, s] : seqs_) {
    total += 2ull * shape_.n_layers * s->stride * shape_.row_width() * sizeof(uint16_t);
  }
  return total;
}

void ContiguousKvCache::Write(int seq, int layer, int pos, int n, const float* k, const float* v) {
  auto it = seqs_.find(seq);
  KV_CHECK_MSG(it != seqs_.end(), "write to unknown sequence");
  Sequence& s = *it->second;
  KV_CHECK(pos >= 0 && n >= 0 && pos + n <= s.capacity);
  KV_CHECK(layer >= 0 && layer < shape_.n_layers);
  const int w = shape_.row_width();
  uint16_t* kd = s.k[layer].data();
  uint16_t* vd = s.v[layer].data() + static_cast<size_t>(pos) * w;
  // Saturating conversion: attention gives positions outside a query's
  // range weight 0, and 0 * inf would be NaN.
  std::vector<uint16_t>& row = scratch_;
  row.resize(w);
  for (int j = 0; j < n; ++j) {
    Fp32ToFp16Saturated(k + static_cast<size_t>(j) * w, row.data(), w);
    for (int c = 0; c < w; ++c) kd[static_cast<size_t>(c) * s.stride + pos + j] = row[c];
  }
  Fp32ToFp16Saturated(v, vd, static_cast<int64_t>(n) * w);
}

void ContiguousKvCache::Read(int seq, int layer, int end, std::vector<KvSpan>* spans) const {
  auto it = seqs_.find(seq);
  KV_CHECK_MSG(it != seqs_.end(), "read of unknown sequence");
  const Sequence& s = *it->second;
  KV_CHECK(end >= 0 && end <= s.capacity);
  if (end == 0) return;
  spans->push_back(KvSpan{0, end, s.k[layer].data(), s.stride, s.v[layer].data()});
}

}  // namespace kvserve::kvcache
