#include "engine/model/sampler.h"

#include <algorithm>
#include <cmath>

namespace kvserve::model {

int32_t ArgMax(const float* x, int n) {
  // Two passes (the maximum, then its first index) vectorise where a single
  // compare-and-remember loop does not; the result is the same.
  float mx = x[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  for (int i = 0; i < n; ++i) {
    if (x[i] == mx) return i;
  }
  return 0;
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int32_t Sampler::Sample(const float* logits, int n_vocab) {
  if (params_.temperature <= 0.0f) return ArgMax(logits, n_vocab);
  candidates_.resize(n_vocab);
  const float inv_t = 1.0f / params_.temperature;
  for (int i = 0; i < n_vocab; ++i) candidates_[i] = {logits[i] * inv_t, i};
  // Descending by logit, ties by id, so the candidate order is deterministic.
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = params_.top_k;
    std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_logit);
    candidates_.resize(keep);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  // Softmax over the kept candidates.
  const float mx = candidates_[0].first;
  std::vector<double> p(candidates_.size());
  double sum = 0;
  for (size_t i = 0; i < candidates_.size(); ++i) {
    p[i] = std::exp(static_cast<double>(candidates_[i].first - mx));
    sum += p[i];
  }
  for (double& x : p) x /= sum;
  size_t n = p.size();
  if (params_.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < n; ++i) {
      cum += p[i];
      if (cum >= params_.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  if (params_.min_p > 0.0f) {
    const double floor = p[0] * params_.min_p;
    size_t m = 1;
    while (m < n && p[m] >= floor) ++m;
    n = m;
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += p[i];
  std::uniform_real_distribution<double> u(0.0, total);
  const double r = u(rng_);
  double cum = 0;
  for (size_t i = 0; i < n; ++i) {
    cum += p[i];
    if (r < cum) return candidates_[i].second;
  }
  return candidates_[n - 1].second;
}

}  // namespace kvserve::model
