#include "engine/model/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/check.h"
#include "common/fp16.h"
#include "engine/model/simd_exp.h"
#include "kvcache/kv_quant.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kvserve::model {
namespace {

constexpr int kMaxGroup = 16;
// Query rows of one sequence handled together, so each cached K/V row is
// read once per tile rather than once per query.
constexpr int kTileRows = 16;
// Positions per kernel call: one aligned vector group of the K layout.
constexpr int kLanes = kvcache::kKvSpanAlign;
static_assert(kLanes == 16);

// scores[q * ld + j] = sum_c q[q][c] * k[c * k_stride + j] for j < 16, for
// every query q < nq; the sum runs over c in increasing order.
using ScoreFn = void (*)(const float* q, int nq, int d, const uint16_t* k, int k_stride,
                         float* scores, int ld);
// out[q][c] += sum_{j < m} w[q * ld + j] * v[j * v_stride + c], j increasing.
using WeightedSumFn = void (*)(const float* w, int ld, int nq, const uint16_t* v, int v_stride,
                               int m, int d, float* out);
// In-place softmax of s[0, len).
using SoftmaxFn = void (*)(float* s, int len);

void ScoreScalar(const float* q, int nq, int d, const uint16_t* k, int k_stride, float* scores,
                 int ld) {
  for (int qi = 0; qi < nq; ++qi) {
    float acc[kLanes] = {};
    for (int c = 0; c < d; ++c) {
      for (int j = 0; j < kLanes; ++j) acc[j] += q[qi * d + c] * Fp16ToFp32(k[c * k_stride + j]);
    }
    std::memcpy(scores + qi * ld, acc, sizeof acc);
  }
}

void WeightedSumScalar(const float* w, int ld, int nq, const uint16_t* v, int v_stride, int m,
                       int d, float* out) {
  for (int qi = 0; qi < nq; ++qi) {
    for (int j = 0; j < m; ++j) {
      const float wj = w[qi * ld + j];
      for (int c = 0; c < d; ++c) out[qi * d + c] += wj * Fp16ToFp32(v[j * v_stride + c]);
    }
  }
}

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
#define KVSERVE_AVX2 __attribute__((target("avx2,fma,f16c")))

KVSERVE_AVX2 inline __m256 LoadF16x8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// G queries (1..4) against 16 positions: 2G accumulators stay in registers.
template <int G>
KVSERVE_AVX2 void ScoreGroupAvx2(const float* q, int d, const uint16_t* k, int k_stride,
                                 float* scores, int ld) {
  __m256 lo[G], hi[G];
  for (int g = 0; g < G; ++g) lo[g] = hi[g] = _mm256_setzero_ps();
  for (int c = 0; c < d; ++c) {
    const __m256 k0 = LoadF16x8(k + c * k_stride);
    const __m256 k1 = LoadF16x8(k + c * k_stride + 8);
    for (int g = 0; g < G; ++g) {
      const __m256 qc = _mm256_broadcast_ss(q + g * d + c);
      lo[g] = _mm256_fmadd_ps(qc, k0, lo[g]);
      hi[g] = _mm256_fmadd_ps(qc, k1, hi[g]);
    }
  }
  for (int g = 0; g < G; ++g) {
    _mm256_storeu_ps(scores + g * ld, lo[g]);
    _mm256_storeu_ps(scores + g * ld + 8, hi[g]);
  }
}

KVSERVE_AVX2 void ScoreAvx2(const float* q, int nq, int d, const uint16_t* k, int k_stride,
                            float* scores, int ld) {
  int qi = 0;
  for (; qi + 4 <= nq; qi += 4) ScoreGroupAvx2<4>(q + qi * d, d, k, k_stride, scores + qi * ld, ld);
  switch (nq - qi) {
    case 3:
      ScoreGroupAvx2<3>(q + qi * d, d, k, k_stride, scores + qi * ld, ld);
      break;
    case 2:
      ScoreGroupAvx2<2>(q + qi * d, d, k, k_stride, scores + qi * ld, ld);
      break;
    case 1:
      ScoreGroupAvx2<1>(q + qi * d, d, k, k_stride, scores + qi * ld, ld);
      break;
    default:
      break;
  }
}

// G queries (1..4) x 16 channels per pass over the m positions.
template <int G>
KVSERVE_AVX2 void WeightedSumGroupAvx2(const float* w, int ld, const uint16_t* v, int v_stride,
                                       int m, int d, float* out) {
  for (int c0 = 0; c0 < d; c0 += 16) {
    __m256 lo[G], hi[G];
    for (int g = 0; g < G; ++g) {
      lo[g] = _mm256_loadu_ps(out + g * d + c0);
      hi[g] = _mm256_loadu_ps(out + g * d + c0 + 8);
    }
    for (int j = 0; j < m; ++j) {
      const __m256 v0 = LoadF16x8(v + j * v_stride + c0);
      const __m256 v1 = LoadF16x8(v + j * v_stride + c0 + 8);
      for (int g = 0; g < G; ++g) {
        const __m256 wj = _mm256_broadcast_ss(w + g * ld + j);
        lo[g] = _mm256_fmadd_ps(wj, v0, lo[g]);
        hi[g] = _mm256_fmadd_ps(wj, v1, hi[g]);
      }
    }
    for (int g = 0; g < G; ++g) {
      _mm256_storeu_ps(out + g * d + c0, lo[g]);
      _mm256_storeu_ps(out + g * d + c0 + 8, hi[g]);
    }
  }
}

KVSERVE_AVX2 void WeightedSumAvx2(const float* w, int ld, int nq, const uint16_t* v, int v_stride,
                                  int m, int d, float* out) {
  int qi = 0;
  for (; qi + 4 <= nq; qi += 4) {
    WeightedSumGroupAvx2<4>(w + qi * ld, ld, v, v_stride, m, d, out + qi * d);
  }
  switch (nq - qi) {
    case 3:
      WeightedSumGroupAvx2<3>(w + qi * ld, ld, v, v_stride, m, d, out + qi * d);
      break;
    case 2:
      WeightedSumGroupAvx2<2>(w + qi * ld, ld, v, v_stride, m, d, out + qi * d);
      break;
    case 1:
      WeightedSumGroupAvx2<1>(w + qi * ld, ld, v, v_stride, m, d, out + qi * d);
      break;
    default:
      break;
  }
}

KVSERVE_AVX2 void SoftmaxAvx2(float* s, int len) {
  float mx = s[0];
  int t = 0;
  if (len >= 8) {
    __m256 vmx = _mm256_loadu_ps(s);
    for (t = 8; t + 8 <= len; t += 8) vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(s + t));
    float lanes[8];
    _mm256_storeu_ps(lanes, vmx);
    mx = *std::max_element(lanes, lanes + 8);
  }
  for (; t < len; ++t) mx = std::max(mx, s[t]);
  const __m256 m = _mm256_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  for (t = 0; t + 8 <= len; t += 8) {
    const __m256 e = ExpNonPositiveAvx2(_mm256_sub_ps(_mm256_loadu_ps(s + t), m));
    _mm256_storeu_ps(s + t, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, vsum);
  double sum = 0;
  for (float x : lanes) sum += x;
  if (t < len) {
    float tail[8];
    const int rest = len - t;
    for (int i = 0; i < 8; ++i) tail[i] = i < rest ? s[t + i] - mx : -100.0f;
    _mm256_storeu_ps(tail, ExpNonPositiveAvx2(_mm256_loadu_ps(tail)));
    for (int i = 0; i < rest; ++i) {
      s[t + i] = tail[i];
      sum += tail[i];
    }
  }
  const float inv = static_cast<float>(1.0 / sum);
  const __m256 vinv = _mm256_set1_ps(inv);
  for (t = 0; t + 8 <= len; t += 8)
    _mm256_storeu_ps(s + t, _mm256_mul_ps(_mm256_loadu_ps(s + t), vinv));
  for (; t < len; ++t) s[t] *= inv;
}

#define KVSERVE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

KVSERVE_AVX512 inline __m512 LoadF16x16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// As ScoreGroupAvx2, one 16-lane register per query: the same per-lane
// fma chain over c, so the results equal the AVX2 path's bit for bit.
template <int G>
KVSERVE_AVX512 void ScoreGroupAvx512(const float* q, int d, const uint16_t* k, int k_stride,
                                     float* scores, int ld) {
  __m512 acc[G];
  for (int g = 0; g < G; ++g) acc[g] = _mm512_setzero_ps();
  for (int c = 0; c < d; ++c) {
    const __m512 kc = LoadF16x16(k + c * k_stride);
    for (int g = 0; g < G; ++g) acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(q[g * d + c]), kc, acc[g]);
  }
  for (int g = 0; g < G; ++g) _mm512_storeu_ps(scores + g * ld, acc[g]);
}

KVSERVE_AVX512 void ScoreAvx512(const float* q, int nq, int d, const uint16_t* k, int k_stride,
                                float* scores, int ld) {
  int qi = 0;
  for (; qi + 6 <= nq; qi += 6) {
    ScoreGroupAvx512<6>(q + qi * d, d, k, k_stride, scores + qi * ld, ld);
  }
  switch (nq - qi) {
    case 5:
      ScoreGroupAvx512<5>(q + qi * d, d, k, k_stride, scores + qi * ld, ld);
      break;
    case 4:
      ScoreGroupAvx512<4>(q + qi * d, d, k, k_stride, scores + qi * ld, ld);
      break;
    case 3:
      ScoreGroupAvx512<3>(q + qi * d, d, k, k_stride, scores + qi * ld, ld);
      break;
    case 2:
      ScoreGroupAvx512<2>(q + qi * d, d, k, k_stride, scores + qi * ld, ld);
      break;
    case 1:
      ScoreGroupAvx512<1>(q + qi * d, d, k, k_stride, scores + qi * ld, ld);
      break;
    default:
      break;
  }
}

// G queries (1..4) x up to 64 channels (4 registers each) per pass.
template <int G>
KVSERVE_AVX512 void WeightedSumGroupAvx512(const float* w, int ld, const uint16_t* v, int v_stride,
                                           int m, int d, float* out) {
  for (int c0 = 0; c0 < d; c0 += 64) {
    const int nv = std::min(64, d - c0) / 16;
    __m512 acc[G][4];
    for (int g = 0; g < G; ++g) {
      for (int i = 0; i < nv; ++i) acc[g][i] = _mm512_loadu_ps(out + g * d + c0 + 16 * i);
    }
    for (int j = 0; j < m; ++j) {
      __m512 vr[4];
      for (int i = 0; i < nv; ++i) vr[i] = LoadF16x16(v + j * v_stride + c0 + 16 * i);
      for (int g = 0; g < G; ++g) {
        const __m512 wj = _mm512_set1_ps(w[g * ld + j]);
        for (int i = 0; i < nv; ++i) acc[g][i] = _mm512_fmadd_ps(wj, vr[i], acc[g][i]);
      }
    }
    for (int g = 0; g < G; ++g) {
      for (int i = 0; i < nv; ++i) _mm512_storeu_ps(out + g * d + c0 + 16 * i, acc[g][i]);
    }
  }
}

KVSERVE_AVX512 void WeightedSumAvx512(const float* w, int ld, int nq, const uint16_t* v,
                                      int v_stride, int m, int d, float* out) {
  int qi = 0;
  for (; qi + 4 <= nq; qi += 4) {
    WeightedSumGroupAvx512<4>(w + qi * ld, ld, v, v_stride, m, d, out + qi * d);
  }
  switch (nq - qi) {
    case 3:
      WeightedSumGroupAvx512<3>(w + qi * ld, ld, v, v_stride, m, d, out + qi * d);
      break;
    case 2:
      WeightedSumGroupAvx512<2>(w + qi * ld, ld, v, v_stride, m, d, out + qi * d);
      break;
    case 1:
      WeightedSumGroupAvx512<1>(w + qi * ld, ld, v, v_stride, m, d, out + qi * d);
      break;
    default:
      break;
  }
}
#endif  // __x86_64__

struct Isa {
  ScoreFn score;
  WeightedSumFn weighted_sum;
  SoftmaxFn softmax;
};

const Isa& PickIsa(int head_dim) {
  static const Isa scalar{ScoreScalar, WeightedSumScalar, SoftmaxScalar};
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c");
  static const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                             __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl");
  static const Isa vec{ScoreAvx2, WeightedSumAvx2, SoftmaxAvx2};
  static const Isa vec512{ScoreAvx512, WeightedSumAvx512, SoftmaxAvx2};
  if (avx512 && head_dim % 16 == 0) return vec512;
  if (avx2 && head_dim % 16 == 0) return vec;
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
}

void Attention::Compute(const kvcache::KvStore& kv, int layer, const float* q,
                        const int32_t* seq_ids, const int32_t* positions, int n, float* out,
                        ThreadPool* pool, const uint8_t* observe,
                        kvcache::AttentionMassSink* sink) {
  if (static_cast<int>(scratch_.size()) < pool->size()) {
    scratch_.resize(pool->size());
    dequant_.resize(pool->size());
  }
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
  const int d = head_dim_, G = group_, w = kv.shape().row_width();
  const int64_t stride = static_cast<int64_t>(n_head_) * d;
  const int64_t items = static_cast<int64_t>(tiles.size()) * n_kv_head_;
  const bool report = sink != nullptr && observe != nullptr;
  if (report) {
    masses_.resize(items);
    for (auto& m : masses_) m.clear();
  }
  const Isa& isa = PickIsa(d);
  // One KV head's view of a span: f16 pointers already offset to the head.
  struct HeadSpan {
    int32_t pos0, n, block;
    const uint16_t* k;
    int32_t k_stride;
    const uint16_t* v;
    int32_t v_stride;
  };
  pool->Run([&](int t, int nt) {
    std::vector<float>& buf = scratch_[t];
    std::vector<uint16_t>& deq = dequant_[t];
    std::vector<kvcache::KvSpan> spans;
    std::vector<HeadSpan> hspans;
    // Interleaved split: tiles of very different lengths (a long prefill
    // next to short decodes) spread evenly over the threads.
    for (int64_t it = t; it < items; it += nt) {
      const Tile& tile = tiles[it / n_kv_head_];
      const int g = static_cast<int>(it % n_kv_head_);
      const int nq = tile.rows * G;
      // Score rows have room for a whole vector group past the last
      // position, since kernels store 16 lanes at a time.
      const int ld = (tile.n_ctx + 2 * kLanes - 1) / kLanes * kLanes;
      const size_t need = static_cast<size_t>(nq) * ld + 2 * static_cast<size_t>(nq) * d;
      if (buf.size() < need) buf.resize(need);
      float* scores = buf.data();
      float* qs = scores + static_cast<size_t>(nq) * ld;
      float* os = qs + static_cast<size_t>(nq) * d;
      const int32_t* pos = positions + tile.first;
      for (int r = 0; r < tile.rows; ++r) {
        for (int h = 0; h < G; ++h) {
          const float* src = q + (tile.first + r) * stride + static_cast<int64_t>(g * G + h) * d;
          for (int i = 0; i < d; ++i) qs[(r * G + h) * d + i] = src[i] * scale_;
        }
      }
      spans.clear();
      kv.Read(seq_ids[tile.first], layer, tile.n_ctx, &spans);
      // Quantized spans are dequantized (this head only) into `deq` once
      // per tile, then read like f16 ones.
      size_t deq_need = 0;
      for (const auto& sp : spans) {
        if (sp.packed != nullptr) deq_need += 2 * static_cast<size_t>(d) * sp.k_stride;
      }
      if (deq.size() < deq_need) deq.resize(deq_need);
      hspans.clear();
      size_t deq_off = 0;
      int covered = 0;  // positions [0, covered) are accounted for
      for (const auto& sp : spans) {
        // Evicted positions before this span: weight 0 after the softmax.
        for (int qi = 0; qi < nq && covered < sp.pos0; ++qi) {
          std::fill(scores + static_cast<size_t>(qi) * ld + covered,
                    scores + static_cast<size_t>(qi) * ld + sp.pos0, -1e30f);
        }
        covered = sp.pos0 + sp.n;
        if (sp.packed == nullptr) {
          hspans.push_back({sp.pos0, sp.n, sp.block,
                            sp.k + static_cast<int64_t>(g) * d * sp.k_stride, sp.k_stride,
                            sp.v + static_cast<int64_t>(g) * d, w});
        } else {
          uint16_t* kd = deq.data() + deq_off;
          uint16_t* vd = kd + static_cast<size_t>(d) * sp.k_stride;
          deq_off += 2 * static_cast<size_t>(d) * sp.k_stride;
          kvcache::DequantizeKvHead(kv.shape(), sp.k_stride, sp.tier, sp.packed, g, kd, vd);
          hspans.push_back({sp.pos0, sp.n, sp.block, kd, sp.k_stride, vd, d});
        }
      }
      KV_CHECK_MSG(covered >= tile.n_ctx, "attention over a query position that is not cached");
      // Scores for every query over every position the tile can see.
      for (const HeadSpan& sp : hspans) {
        for (int j0 = 0; j0 < sp.n; j0 += kLanes) {
          isa.score(qs, nq, d, sp.k + j0, sp.k_stride, scores + sp.pos0 + j0, ld);
        }
      }
      // Softmax over each query's own causal range; positions after it
      // (visible to later rows of the tile) get weight exactly 0, which adds
      // nothing to the weighted sum.
      for (int qi = 0; qi < nq; ++qi) {
        const int len = pos[qi / G] + 1;
        float* s = scores + static_cast<size_t>(qi) * ld;
        isa.softmax(s, len);
        std::fill(s + len, s + ld, 0.0f);
      }
      if (report) {
        // Mass per block from the observed rows. Weights past a row's own
        // position are 0, so summing whole spans is exact.
        std::vector<BlockMass>& out_mass = masses_[it];
        for (const HeadSpan& sp : hspans) {
          if (sp.block < 0) continue;
          double mass = 0, seen = 0;
          for (int r = 0; r < tile.rows; ++r) {
            if (!observe[tile.first + r] || pos[r] < sp.pos0) continue;
            for (int h = 0; h < G; ++h) {
              const float* s = scores + static_cast<size_t>(r * G + h) * ld + sp.pos0;
              float acc = 0;
              for (int j = 0; j < sp.n; ++j) acc += s[j];
              mass += acc;
              seen += 1;
            }
          }
          if (seen > 0) out_mass.push_back({sp.block, mass, seen});
        }
      }
      std::memset(os, 0, sizeof(float) * nq * d);
      for (const HeadSpan& sp : hspans) {
        for (int j0 = 0; j0 < sp.n; j0 += kLanes) {
          const int m = std::min(kLanes, std::min(sp.n - j0, tile.n_ctx - (sp.pos0 + j0)));
          if (m <= 0) break;
          isa.weighted_sum(scores + sp.pos0 + j0, ld, nq,
                           sp.v + static_cast<int64_t>(j0) * sp.v_stride, sp.v_stride, m, d, os);
        }
      }
      for (int r = 0; r < tile.rows; ++r) {
        for (int h = 0; h < G; ++h) {
          std::memcpy(out + (tile.first + r) * stride + static_cast<int64_t>(g * G + h) * d,
                      os + (r * G + h) * d, d * sizeof(float));
        }
      }
    }
  });
  if (report) {
    for (int64_t it = 0; it < items; ++it) {
      const int seq = seq_ids[tiles[it / n_kv_head_].first];
      for (const BlockMass& m : masses_[it])
        sink->OnBlockMass(seq, layer, m.block, m.mass, m.n_queries);
    }
  }
}

}  // namespace kvserve::model
