// Picks the next token from a logit row.
//
// Order of the filters: temperature scaling, top-k, top-p (nucleus), min-p,
// then a draw from the renormalised distribution with the sampler's own
// seeded generator. Temperature 0 is greedy (argmax, lowest id on ties), and
// then no random number is drawn.
//
// Thread-safety: a Sampler belongs to one sequence; not thread-safe.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace kvserve::model {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // 1 = off
  float min_p = 0.0f;        // 0 = off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits: [n_vocab]. Returns the chosen token id.
  int32_t Sample(const float* logits, int n_vocab);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

// Index of the largest value (lowest index on ties).
int32_t ArgMax(const float* x, int n);

}  // namespace kvserve::model
