#include "engine/serving/logits_processing.h"

#include <algorithm>
#include <cmath>

namespace kvserve::engine {

void ApplyPenalties(const SamplingOptions& s, const absl::flat_hash_map<int32_t, int>& output_counts,
                    const std::vector<uint8_t>& seen, float* logits, int n_vocab) {
  if (s.repetition_penalty != 1.0f) {
    for (int t = 0; t < n_vocab && t < static_cast<int>(seen.size()); ++t) {
      if (!seen[t]) continue;
      logits[t] = logits[t] > 0 ? logits[t] / s.repetition_penalty : logits[t] * s.repetition_penalty;
    }
  }
  if (s.presence_penalty != 0.0f || s.frequency_penalty != 0.0f) {
    for (const auto& [token, count] : output_counts) {
      if (token < 0 || token >= n_vocab) continue;
      logits[token] -= s.presence_penalty + s.frequency_penalty * static_cast<float>(count);
    }
  }
}

TokenLogprob ComputeLogprob(const float* logits, int n_vocab, int32_t token, int top) {
  double mx = logits[0];
  for (int i = 1; i < n_vocab; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
  double sum = 0;
  for (int i = 0; i < n_vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  const double lse = mx + std::log(sum);
  TokenLogprob out;
  out.token = token;
  out.logprob = static_cast<float>(logits[token] - lse);
  if (top > 0) {
    std::vector<int32_t> ids(n_vocab);
    for (int i = 0; i < n_vocab; ++i) ids[i] = i;
    const int k = std::min(top, n_vocab);
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int i = 0; i < k; ++i) {
      out.top.emplace_back(ids[i], static_cast<float>(logits[ids[i]] - lse));
    }
  }
  return out;
}

}  // namespace kvserve::engine
