#include "engine/model/ops.h"

#include <cmath>

#include "engine/model/simd_exp.h"

namespace kvserve::model {

void RmsNorm(const float* x, const float* weight, int n, float eps, float* out) {
  // Accumulate in double: cheap at these sizes and removes any dependence on
  // the summation order's rounding.
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
  for (int i = 0; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

Rope::Rope(const ModelConfig& c, const std::vector<float>& freq_factors)
    : head_dim_(c.head_dim),
      rope_dim_(c.rope_dim),
      style_(c.rope_style),
      pos_scale_(1.0f / c.rope_linear_scale),
      inv_freq_(c.rope_dim / 2) {
  for (int i = 0; i < rope_dim_ / 2; ++i) {
    double f = std::pow(static_cast<double>(c.rope_base), -2.0 * i / rope_dim_);
    if (!freq_factors.empty()) f /= freq_factors[i];
    inv_freq_[i] = f;
  }
}

void Rope::Apply(float* row, int n_heads, int32_t pos) const {
  const double p = static_cast<double>(pos) * pos_scale_;
  const int half = rope_dim_ / 2;
  // cos/sin once per row, shared by the heads.
  float cs[512], sn[512];
  for (int i = 0; i < half; ++i) {
    const double theta = p * inv_freq_[i];
    cs[i] = static_cast<float>(std::cos(theta));
    sn[i] = static_cast<float>(std::sin(theta));
  }
  for (int h = 0; h < n_heads; ++h) {
    float* x = row + static_cast<int64_t>(h) * head_dim_;
    for (int i = 0; i < half; ++i) {
      float* a;
      float* b;
      if (style_ == RopeStyle::kNormal) {
        a = x + 2 * i;
        b = x + 2 * i + 1;
      } else {
        a = x + i;
        b = x + i + half;
      }
      const float x0 = *a, x1 = *b;
      *a = x0 * cs[i] - x1 * sn[i];
      *b = x0 * sn[i] + x1 * cs[i];
    }
  }
}

namespace {

void SiluMulScalar(const float* gate, const float* up, int n, float* out) {
  for (int i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

#if defined(__x86_64__)
// silu(g) = g * sigmoid(g), with sigmoid from e = exp(-|g|) so the exp
// argument is never positive: sigmoid = 1/(1+e) for g >= 0, e/(1+e) else.
__attribute__((target("avx2,fma"))) void SiluMulAvx2(const float* gate, const float* up, int n,
                                                      float* out) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 one = _mm256_set1_ps(1.0f);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = ExpNonPositiveAvx2(_mm256_or_ps(g, sign));  // exp(-|g|)
    const __m256 inv = _mm256_div_ps(one, _mm256_add_ps(one, e));
    const __m256 neg = _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_LT_OQ);
    const __m256 sig = _mm256_blendv_ps(inv, _mm256_mul_ps(e, inv), neg);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up + i)));
  }
  SiluMulScalar(gate + i, up + i, n - i, out + i);
}
#endif

}  // namespace

void SiluMul(const float* gate, const float* up, int n, float* out) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return SiluMulAvx2(gate, up, n, out);
#endif
  SiluMulScalar(gate, up, n, out);
}

void AddInPlace(float* x, const float* y, int n) {
  for (int i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace kvserve::model
