#include "engine/model/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/check.h"
#include "common/fp16.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kvserve::model {
namespace {

constexpr int kMaxGroup = 16;

// Converts n f16 values to f32.
void Fp16RowToFp32Scalar(const uint16_t* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = Fp16ToFp32(src[i]);
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) void Fp16RowToFp32Avx2(const uint16_t* src, float* dst,
                                                                 int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = Fp16ToFp32(src[i]);
}

__attribute__((target("avx2,fma"))) float DotAvx2(const float* a, const float* b, int n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  }
  __m256 acc = _mm256_add_ps(acc0, acc1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float r = _mm_cvtss_f32(s);
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

__attribute__((target("avx2,fma"))) void AxpyAvx2(float alpha, const float* x, float* y, int n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += alpha * x[i];
}
#endif

float DotScalar(const float* a, const float* b, int n) {
  float r = 0;
  for (int i = 0; i < n; ++i) r += a[i] * b[i];
  return r;
}

void AxpyScalar(float alpha, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += alpha * x[i];
}

struct Kernels {
  void (*to_f32)(const uint16_t*, float*, int);
  float (*dot)(const float*, const float*, int);
  void (*axpy)(float, const float*, float*, int);
};

const Kernels& Pick() {
  static const Kernels k = [] {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
      return Kernels{Fp16RowToFp32Avx2, DotAvx2, AxpyAvx2};
    }
#endif
    return Kernels{Fp16RowToFp32Scalar, DotScalar, AxpyScalar};
  }();
  return k;
}

}  // namespace

Attention::Attention(const ModelConfig& c)
    : n_head_(c.n_head),
      n_kv_head_(c.n_kv_head),
      head_dim_(c.head_dim),
      group_(c.group_size()),
      scale_(1.0f / std::sqrt(static_cast<float>(c.head_dim))) {
  KV_CHECK(group_ <= kMaxGroup);
}

void Attention::OneRow(const kvcache::KvStore& kv, int layer, const float* q, int32_t seq,
                       int32_t pos, int g, float* out, std::vector<float>* scratch) const {
  const Kernels& K = Pick();
  const int d = head_dim_;
  const int n_ctx = pos + 1;
  const int w = kv.shape().row_width();
  // scratch: [group][n_ctx] scores, then a K/V row in f32, then scaled q.
  const size_t need = static_cast<size_t>(group_) * n_ctx + 2 * d + group_ * d;
  if (scratch->size() < need) scratch->resize(need);
  float* scores = scratch->data();
  float* row = scores + static_cast<size_t>(group_) * n_ctx;
  float* qs = row + d;
  for (int h = 0; h < group_; ++h) {
    const float* qh = q + static_cast<int64_t>(g * group_ + h) * d;
    for (int i = 0; i < d; ++i) qs[h * d + i] = qh[i] * scale_;
  }
  std::vector<kvcache::KvSpan> spans;
  kv.Read(seq, layer, n_ctx, &spans);
  // Pass 1: scores.
  for (const auto& sp : spans) {
    for (int j = 0; j < sp.n; ++j) {
      K.to_f32(sp.k + static_cast<int64_t>(j) * w + g * d, row, d);
      const int t = sp.pos0 + j;
      for (int h = 0; h < group_; ++h) scores[h * n_ctx + t] = K.dot(qs + h * d, row, d);
    }
  }
  // Softmax per head.
  for (int h = 0; h < group_; ++h) {
    float* s = scores + h * n_ctx;
    float mx = s[0];
    for (int t = 1; t < n_ctx; ++t) mx = std::max(mx, s[t]);
    double sum = 0;
    for (int t = 0; t < n_ctx; ++t) {
      s[t] = std::exp(s[t] - mx);
      sum += s[t];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int t = 0; t < n_ctx; ++t) s[t] *= inv;
    std::memset(out + static_cast<int64_t>(g * group_ + h) * d, 0, d * sizeof(float));
  }
  // Pass 2: weighted values.
  for (const auto& sp : spans) {
    for (int j = 0; j < sp.n; ++j) {
      K.to_f32(sp.v + static_cast<int64_t>(j) * w + g * d, row, d);
      const int t = sp.pos0 + j;
      for (int h = 0; h < group_; ++h) {
        K.axpy(scores[h * n_ctx + t], row, out + static_cast<int64_t>(g * group_ + h) * d, d);
      }
    }
  }
}

void Attention::Compute(const kvcache::KvStore& kv, int layer, const float* q,
                        const int32_t* seq_ids, const int32_t* positions, int n, float* out,
                        ThreadPool* pool) {
  if (static_cast<int>(scratch_.size()) < pool->size()) scratch_.resize(pool->size());
  const int64_t items = static_cast<int64_t>(n) * n_kv_head_;
  const int64_t stride = static_cast<int64_t>(n_head_) * head_dim_;
  pool->Run([&](int t, int nt) {
    // Interleaved split: rows of very different lengths (a long prefill
    // next to short decodes) spread evenly over the threads.
    for (int64_t it = t; it < items; it += nt) {
      const int i = static_cast<int>(it / n_kv_head_);
      const int g = static_cast<int>(it % n_kv_head_);
      OneRow(kv, layer, q + i * stride, seq_ids[i], positions[i], g, out + i * stride,
             &scratch_[t]);
    }
  });
}

}  // namespace kvserve::model
