#include <algorithm>

#include "common/fp16.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kvserve {
namespace {

constexpr float kF16Max = 65504.0f;

void SaturatedScalar(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = Fp32ToFp16(std::clamp(src[i], -kF16Max, kF16Max));
}

#if defined(__x86_64__)
__attribute__((target("avx2,f16c"))) void SaturatedF16c(const float* src, uint16_t* dst,
                                                         int64_t n) {
  const __m256 hi = _mm256_set1_ps(kF16Max), lo = _mm256_set1_ps(-kF16Max);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    // max/min pass NaN through from the second operand, as the scalar clamp.
    const __m256 x = _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(src + i), lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  SaturatedScalar(src + i, dst + i, n - i);
}
#endif

}  // namespace

void Fp32ToFp16Saturated(const float* src, uint16_t* dst, int64_t n) {
#if defined(__x86_64__)
  static const bool f16c = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  if (f16c) return SaturatedF16c(src, dst, n);
#endif
  SaturatedScalar(src, dst, n);
}

}  // namespace kvserve
