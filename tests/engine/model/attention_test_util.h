// Shared by the attention tests: a small GQA shape and seeded inputs.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "engine/model/model_config.h"

namespace kvserve::model::testing {

// One layer, 6 query heads over 2 KV heads of 32 dims.
inline ModelConfig SmallGqaConfig() {
  ModelConfig c;
  c.n_layers = 1;
  c.n_head = 6;
  c.n_kv_head = 2;
  c.head_dim = 32;
  c.n_embd = 192;
  return c;
}

// n standard-normal floats from `seed`.
inline std::vector<float> RandomNormal(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace kvserve::model::testing
