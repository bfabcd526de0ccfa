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
// Query rows of one sequence handled together: each cached K/V row is
// converted from f16 once per tile instead of once per query.
constexpr int kTileRows = 16;
// Cached positions converted at a time.
constexpr int kChunk = 64;

void Fp16RowToFp32Scalar(const uint16_t* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = Fp16ToFp32(src[i]);
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) void Fp16RowToFp32F16c(const uint16_t* src, float* dst,
                                                                 int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = Fp16ToFp32(src[i]);
}
#endif

using ConvertFn = void (*)(const uint16_t*, float*, int);
// acc[j] = sum_t q[t] * kt[t][j] for j < kChunk (t in increasing order).
using ScoreFn = void (*)(const float* q, const float* kt, int d, float* acc);
// o[t] += sum_j w[j] * vf[j][t] for j < m (j in increasing order).
using WeightedSumFn = void (*)(const float* w, const float* vf, int m, int d, float* o);

void ScoreScalar(const float* q, const float* kt, int d, float* acc) {
  for (int j = 0; j < kChunk; ++j) acc[j] = 0.0f;
  for (int t = 0; t < d; ++t) {
    for (int j = 0; j < kChunk; ++j) acc[j] += q[t] * kt[t * kChunk + j];
  }
}

void WeightedSumScalar(const float* w, const float* vf, int m, int d, float* o) {
  for (int j = 0; j < m; ++j) {
    for (int t = 0; t < d; ++t) o[t] += w[j] * vf[j * d + t];
  }
}

// In-place softmax of s[0, len).
using SoftmaxFn = void (*)(float* s, int len);

void SoftmaxScalar(float* s, int len) {
  float mx = s[0];
  for (int t = 1; t < len; ++t) mx = std::max(mx, s[t]);
  double sum = 0;
  for (int t = 0; t < len; ++t) {
    s[t] = std::exp(s[t] - mx);
    sum += s[t];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int t = 0; t < len; ++t) s[t] *= inv;
}

#if defined(__x86_64__)
// exp(x) for x <= 0 (arguments are score - max): Cody-Waite range reduction
// x = n ln2 + r, |r| <= ln2/2, then a degree-6 polynomial for e^r (relative
// error below 2e-7, as accurate as the f32 scores it exponentiates).
// Results below e^-87 flush to zero, as they do not change a softmax.
__attribute__((target("avx2,fma"))) inline __m256 ExpNonPositiveAvx2(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma"))) void SoftmaxAvx2(float* s, int len) {
  __m256 vmx = _mm256_set1_ps(s[0]);
  int t = 0;
  for (; t + 8 <= len; t += 8) vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(s + t));
  float lanes[8];
  _mm256_storeu_ps(lanes, vmx);
  float mx = lanes[0];
  for (int i = 1; i < 8; ++i) mx = std::max(mx, lanes[i]);
  for (; t < len; ++t) mx = std::max(mx, s[t]);
  const __m256 m = _mm256_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  t = 0;
  for (; t + 8 <= len; t += 8) {
    const __m256 e = ExpNonPositiveAvx2(_mm256_sub_ps(_mm256_loadu_ps(s + t), m));
    _mm256_storeu_ps(s + t, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  _mm256_storeu_ps(lanes, vsum);
  double sum = 0;
  for (int i = 0; i < 8; ++i) sum += lanes[i];
  if (t < len) {
    float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int rest = len - t;
    for (int i = 0; i < 8; ++i) tail[i] = i < rest ? s[t + i] - mx : -100.0f;
    _mm256_storeu_ps(tail, ExpNonPositiveAvx2(_mm256_loadu_ps(tail)));
    for (int i = 0; i < rest; ++i) {
      s[t + i] = tail[i];
      sum += tail[i];
    }
  }
  const __m256 inv = _mm256_set1_ps(static_cast<float>(1.0 / sum));
  t = 0;
  for (; t + 8 <= len; t += 8) _mm256_storeu_ps(s + t, _mm256_mul_ps(_mm256_loadu_ps(s + t), inv));
  const float finv = static_cast<float>(1.0 / sum);
  for (; t < len; ++t) s[t] *= finv;
}

__attribute__((target("avx2,fma"))) void ScoreAvx2(const float* q, const float* kt, int d,
                                                    float* acc) {
  static_assert(kChunk == 64);
  __m256 a[8];
  for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
  for (int t = 0; t < d; ++t) {
    const __m256 qt = _mm256_set1_ps(q[t]);
    const float* kr = kt + t * kChunk;
    for (int i = 0; i < 8; ++i) a[i] = _mm256_fmadd_ps(qt, _mm256_loadu_ps(kr + 8 * i), a[i]);
  }
  for (int i = 0; i < 8; ++i) _mm256_storeu_ps(acc + 8 * i, a[i]);
}

// d must be a multiple of 8 (checked by the caller's dispatch).
__attribute__((target("avx2,fma"))) void WeightedSumAvx2(const float* w, const float* vf, int m,
                                                          int d, float* o) {
  for (int t0 = 0; t0 < d; t0 += 64) {
    const int nv = std::min(64, d - t0) / 8;
    __m256 a[8];
    for (int i = 0; i < nv; ++i) a[i] = _mm256_loadu_ps(o + t0 + 8 * i);
    for (int j = 0; j < m; ++j) {
      const __m256 wj = _mm256_set1_ps(w[j]);
      const float* vr = vf + j * d + t0;
      for (int i = 0; i < nv; ++i) a[i] = _mm256_fmadd_ps(wj, _mm256_loadu_ps(vr + 8 * i), a[i]);
    }
    for (int i = 0; i < nv; ++i) _mm256_storeu_ps(o + t0 + 8 * i, a[i]);
  }
}
#endif

// The arithmetic of one tile. Every query's scores, softmax and weighted sum
// follow the same sequence of operations whatever else the tile holds, so
// results do not depend on batching.
struct TileArgs {
  const float* q;       // [rows][group][d], pre-scaled
  const int32_t* pos;   // [rows]
  int rows, group, d;
  const kvcache::KvSpan* spans;
  int n_spans;
  int row_width, head_offset;
  ConvertFn convert;
  ScoreFn score;
  WeightedSumFn weighted_sum;
  SoftmaxFn softmax;
  float* scores;  // [rows * group][n_ctx]
  int n_ctx;      // max pos + 1
  float* kt;      // [d][kChunk] transposed keys
  float* vf;      // [kChunk][d]
  float* out;     // [rows][group][d]
};

void TileBody(const TileArgs& a) {
  const int d = a.d, nq = a.rows * a.group;
  // Pass 1: scores = q . k for every visible position.
  for (int s = 0; s < a.n_spans; ++s) {
    const kvcache::KvSpan& sp = a.spans[s];
    for (int c0 = 0; c0 < sp.n; c0 += kChunk) {
      const int n = std::min(kChunk, sp.n - c0);
      const int t0 = sp.pos0 + c0;
      if (t0 >= a.n_ctx) break;
      for (int j = 0; j < n; ++j) {
        float row[512];
        a.convert(sp.k + static_cast<int64_t>(c0 + j) * a.row_width + a.head_offset, row, d);
        for (int t = 0; t < d; ++t) a.kt[t * kChunk + j] = row[t];
      }
      for (int qi = 0; qi < nq; ++qi) {
        const int p = a.pos[qi / a.group];
        const int m = std::min(n, p + 1 - t0);  // causal: positions <= p
        if (m <= 0) continue;
        float acc[kChunk];
        a.score(a.q + static_cast<int64_t>(qi) * d, a.kt, d, acc);
        float* sc = a.scores + static_cast<int64_t>(qi) * a.n_ctx + t0;
        for (int j = 0; j < m; ++j) sc[j] = acc[j];
      }
    }
  }
  // Softmax of each query over positions [0, p].
  for (int qi = 0; qi < nq; ++qi) {
    const int len = a.pos[qi / a.group] + 1;
    a.softmax(a.scores + static_cast<int64_t>(qi) * a.n_ctx, len);
    std::memset(a.out + static_cast<int64_t>(qi) * d, 0, d * sizeof(float));
  }
  // Pass 2: out = sum_t p_t v_t, in increasing t.
  for (int s = 0; s < a.n_spans; ++s) {
    const kvcache::KvSpan& sp = a.spans[s];
    for (int c0 = 0; c0 < sp.n; c0 += kChunk) {
      const int n = std::min(kChunk, sp.n - c0);
      const int t0 = sp.pos0 + c0;
      if (t0 >= a.n_ctx) break;
      for (int j = 0; j < n; ++j) {
        a.convert(sp.v + static_cast<int64_t>(c0 + j) * a.row_width + a.head_offset,
                  a.vf + j * d, d);
      }
      for (int qi = 0; qi < nq; ++qi) {
        const int p = a.pos[qi / a.group];
        const int m = std::min(n, p + 1 - t0);
        if (m <= 0) continue;
        const float* sc = a.scores + static_cast<int64_t>(qi) * a.n_ctx + t0;
        a.weighted_sum(sc, a.vf, m, d, a.out + static_cast<int64_t>(qi) * d);
      }
    }
  }
}

struct Isa {
  ConvertFn convert;
  ScoreFn score;
  WeightedSumFn weighted_sum;
  SoftmaxFn softmax;
};

const Isa& PickIsa(int head_dim) {
  static const Isa scalar{Fp16RowToFp32Scalar, ScoreScalar, WeightedSumScalar, SoftmaxScalar};
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c");
  static const Isa vec{Fp16RowToFp32F16c, ScoreAvx2, WeightedSumAvx2, SoftmaxAvx2};
  if (avx2 && head_dim % 8 == 0) return vec;
#endif
  return scalar;
}

}  // namespace

Attention::Attention(const ModelConfig& c)
    : n_head_(c.n_head),
      n_kv_head_(c.n_kv_head),
      head_dim_(c.head_dim),
      group_(c.group_size()),
      scale_(1.0f / std::sqrt(static_cast<float>(c.head_dim))) {
  KV_CHECK(group_ <= kMaxGroup);
  KV_CHECK(head_dim_ <= 512);
}

void Attention::Compute(const kvcache::KvStore& kv, int layer, const float* q,
                        const int32_t* seq_ids, const int32_t* positions, int n, float* out,
                        ThreadPool* pool) {
  if (static_cast<int>(scratch_.size()) < pool->size()) scratch_.resize(pool->size());
  // Tiles: runs of up to kTileRows consecutive rows of one sequence.
  struct Tile {
    int first, rows, n_ctx;
  };
  std::vector<Tile> tiles;
  for (int i = 0; i < n;) {
    int j = i + 1;
    int n_ctx = positions[i] + 1;
    while (j < n && j - i < kTileRows && seq_ids[j] == seq_ids[i]) {
      n_ctx = std::max(n_ctx, positions[j] + 1);
      ++j;
    }
    tiles.push_back({i, j - i, n_ctx});
    i = j;
  }
  const int d = head_dim_, G = group_;
  const int64_t stride = static_cast<int64_t>(n_head_) * d;
  const int64_t items = static_cast<int64_t>(tiles.size()) * n_kv_head_;
  const Isa& isa = PickIsa(d);
  pool->Run([&](int t, int nt) {
    std::vector<float>& buf = scratch_[t];
    std::vector<kvcache::KvSpan> spans;
    // Interleaved split: tiles of very different lengths (a long prefill
    // next to short decodes) spread evenly over the threads.
    for (int64_t it = t; it < items; it += nt) {
      const Tile& tile = tiles[it / n_kv_head_];
      const int g = static_cast<int>(it % n_kv_head_);
      const int nq = tile.rows * G;
      const size_t need = static_cast<size_t>(nq) * tile.n_ctx + 2 * nq * d + 2 * kChunk * d;
      if (buf.size() < need) buf.resize(need);
      float* scores = buf.data();
      float* qs = scores + static_cast<size_t>(nq) * tile.n_ctx;
      float* os = qs + nq * d;
      float* kt = os + nq * d;
      float* vf = kt + kChunk * d;
      for (int r = 0; r < tile.rows; ++r) {
        for (int h = 0; h < G; ++h) {
          const float* src = q + (tile.first + r) * stride + static_cast<int64_t>(g * G + h) * d;
          for (int i = 0; i < d; ++i) qs[(r * G + h) * d + i] = src[i] * scale_;
        }
      }
      spans.clear();
      kv.Read(seq_ids[tile.first], layer, tile.n_ctx, &spans);
      TileArgs a{qs,
                 positions + tile.first,
                 tile.rows,
                 G,
                 d,
                 spans.data(),
                 static_cast<int>(spans.size()),
                 kv.shape().row_width(),
                 g * d,
                 isa.convert,
                 isa.score,
                 isa.weighted_sum,
                 isa.softmax,
                 scores,
                 tile.n_ctx,
                 kt,
                 vf,
                 os};
      TileBody(a);
      for (int r = 0; r < tile.rows; ++r) {
        for (int h = 0; h < G; ++h) {
          std::memcpy(out + (tile.first + r) * stride + static_cast<int64_t>(g * G + h) * d,
                      os + (r * G + h) * d, d * sizeof(float));
        }
      }
    }
  });
}

}  // namespace kvserve::model
