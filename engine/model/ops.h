// Row-wise operations of the decoder besides matmul and attention. Each works
// on one row at a time with a fixed reduction order, so a row's result never
// depends on the other rows of the batch.
//
// Thread-safety: pure functions over caller-owned memory.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model/model_config.h"

namespace kvserve::model {

// out[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i]; x, out: [n]. In place ok.
void RmsNorm(const float* x, const float* weight, int n, float eps, float* out);

// Precomputed rotation frequencies: theta_i = base^(-2i/rope_dim) / factor_i.
class Rope {
 public:
  Rope(const ModelConfig& config, const std::vector<float>& freq_factors);
  // Rotates every head of one row in place. row: [n_heads, head_dim].
  void Apply(float* row, int n_heads, int32_t pos) const;

 private:
  int head_dim_;
  int rope_dim_;
  RopeStyle style_;
  float pos_scale_;
  std::vector<double> inv_freq_;  // [rope_dim / 2]
};

// out[i] = silu(gate[i]) * up[i]; [n]. In place on gate ok.
void SiluMul(const float* gate, const float* up, int n, float* out);

// x[i] += y[i]; [n].
void AddInPlace(float* x, const float* y, int n);

}  // namespace kvserve::model
