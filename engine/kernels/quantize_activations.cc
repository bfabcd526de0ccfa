#include "engine/kernels/quantize_activations.h"

#include <cmath>

#include "common/fp16.h"

namespace kvserve::kernels::internal {

void QuantizeActBlockScalar(const float* x, ActKind kind, ActBlock* out) {
  float amax = 0.0f;
  for (int k = 0; k < kQK; ++k) amax = std::fmax(amax, std::fabs(x[k]));
  const float d = amax / 127.0f;
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  int32_t sum = 0;
  for (int k = 0; k < kQK; ++k) {
    // nearbyint rounds half to even in the default rounding mode, like the
    // SIMD conversions (and llama.cpp's _mm256_round_ps(_MM_ROUND_NEAREST)).
    const float v = std::nearbyint(x[k] * id);
    // |v| <= 127 for finite input; the test keeps NaN / inf (garbage in any
    // case) from reaching an undefined float-to-int conversion.
    const int32_t q = std::fabs(v) <= 127.0f ? static_cast<int32_t>(v) : 0;
    out->qs[k] = static_cast<int8_t>(q);
    sum += q;
  }
  out->d = Fp16ToFp32(Fp32ToFp16(d));
  switch (kind) {
    case ActKind::kQ8_0ForQ4_0:
      out->aux = -8 * sum;
      break;
    case ActKind::kQ8_0ForQ8_0:
      out->aux = -128 * sum;
      break;
    case ActKind::kQ8_1:
      out->aux = FloatAsAux(Fp16ToFp32(Fp32ToFp16(d * static_cast<float>(sum))));
      break;
  }
}

void QuantizeActRowsScalar(const float* x, int64_t n_in, int64_t m, int64_t r0, int64_t r1,
                           ActKind kind, ActBlock* act) {
  const int64_t nb = n_in / kQK;
  for (int64_t i = r0; i < r1; ++i) {
    for (int64_t b = 0; b < nb; ++b) {
      QuantizeActBlockScalar(x + i * n_in + b * kQK, kind, &act[b * m + i]);
    }
  }
}

}  // namespace kvserve::kernels::internal
