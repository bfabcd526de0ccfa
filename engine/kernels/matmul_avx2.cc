// AVX2 + FMA + F16C path, for x86-64 CPUs without AVX-512 VNNI. Same
// structure and the same numbers (bit for bit) as the AVX-512 path, at half
// the vector width and without VNNI:
//  - u8 x s8 products go through VPMADDUBSW (pairs to s16) and VPMADDWD
//    (to s32). For Q4 weights (0..15) times activations (|q| <= 127) a pair
//    is at most 3810, so the eight 4-byte chunks of a block add up in s16
//    (<= 30480) before one VPMADDWD. Q8_0 weights use |w| and move the sign
//    onto the activation (VPSIGNB); those pairs reach 32512, so they are
//    widened to s32 after every chunk.
//  - m == 1: 8 weight rows per group, one row per ymm, then a horizontal-add
//    reduction to one exact block sum per row and lane.
//  - m > 1: 8 rows x 16 blocks unpacked and transposed into an L1 buffer,
//    then register tiles of 8 rows x kTileRows activation rows.
//  - Float weights: the 16-lane accumulation of the contract as two ymm.
// Compiled with function-level target options; used only after a run-time
// CPU check.
#include "engine/kernels/matmul_internal.h"

#if defined(__x86_64__)

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/fp16.h"

namespace kvserve::kernels::internal {
namespace {
bool CpuHasAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
}  // namespace
}  // namespace kvserve::kernels::internal

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

// Loops over compile-time tile sizes must be unrolled for the accumulators
// to live in registers; -O2 does not do it on its own.
#define KV_UNROLL _Pragma("GCC unroll 16")

namespace kvserve::kernels::internal {
namespace {

using gguf::GgmlType;

// ---------------------------------------------------------------------------
// Activation quantisation (same bytes as QuantizeActBlockScalar).

inline float HMax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline int32_t HSum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}

inline float RoundF16(float f) { return _cvtsh_ss(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)); }

void QuantizeRowsAvx2(const float* x, int64_t n_in, int64_t m, int64_t r0, int64_t r1, ActKind kind,
                      ActBlock* act) {
  const int64_t nb = n_in / kQK;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (int64_t i = r0; i < r1; ++i) {
    const float* xr = x + i * n_in;
    for (int64_t b = 0; b < nb; ++b) {
      __m256 v[4];
      KV_UNROLL
      for (int k = 0; k < 4; ++k) v[k] = _mm256_loadu_ps(xr + b * kQK + 8 * k);
      const __m256 a01 =
          _mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask));
      const __m256 a23 =
          _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask));
      const float amax = HMax(_mm256_max_ps(a01, a23));
      const float d = amax / 127.0f;
      const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
      const __m256 vid = _mm256_set1_ps(id);
      __m256i q[4];
      KV_UNROLL
      for (int k = 0; k < 4; ++k) {
        // cvtps rounds half to even in the default MXCSR mode.
        q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], vid));
      }
      // Pack to bytes (values are within +-127, so saturation never acts),
      // then undo the in-lane interleaving of the packs.
      const __m256i p01 = _mm256_packs_epi32(q[0], q[1]);
      const __m256i p23 = _mm256_packs_epi32(q[2], q[3]);
      const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23),
                                                        _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      ActBlock* o = act + b * m + i;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o->qs), bytes);
      o->d = RoundF16(d);
      const int32_t sum =
          HSum(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
      switch (kind) {
        case ActKind::kQ8_0ForQ4_0:
          o->aux = -8 * sum;
          break;
        case ActKind::kQ8_0ForQ8_0:
          o->aux = -128 * sum;
          break;
        case ActKind::kQ8_1:
          o->aux = FloatAsAux(RoundF16(d * static_cast<float>(sum)));
          break;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Quantised weights.

// The low / high 16 bits of 8 int32 lanes as f16 -> f32.
inline __m256 F16LowToF32(__m256i g) {
  const __m256i lo = _mm256_and_si256(g, _mm256_set1_epi32(0xFFFF));
  return _mm256_cvtph_ps(
      _mm_packus_epi32(_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1)));
}
inline __m256 F16HighToF32(__m256i g) {
  const __m256i hi = _mm256_srli_epi32(g, 16);
  return _mm256_cvtph_ps(
      _mm_packus_epi32(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1)));
}

// The 32 weights of block `off` of one row, in element order: as u8 0..15
// (Q4) or as |w| with the signs in *sign (Q8_0).
template <GgmlType T>
inline __m256i LoadWeightBlock(const uint8_t* qs, __m256i* sign) {
  if constexpr (QuantTraits<T>::kNibbles) {
    const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m256i both =
        _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
  } else {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs));
    *sign = w;
    return _mm256_sign_epi8(w, w);
  }
}

// Integer dot products of one weight block with one activation block: 8
// s32 partial sums whose total is the block sum (for Q4_0 still without
// the -8 * sum(x) carried in ActBlock::aux; Q8_0 needs no correction here,
// unlike the AVX-512 path, which offsets the weights by 128).
template <GgmlType T>
inline __m256i BlockPartials(__m256i w, __m256i sign, __m256i x) {
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (QuantTraits<T>::kNibbles) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
  } else {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, _mm256_sign_epi8(x, sign)), ones);
  }
}

// v_r holds 8 partial sums of row r; returns the 8 row sums in row order.
inline __m256i Reduce8x8(const __m256i* v) {
  const __m256i t0 = _mm256_hadd_epi32(v[0], v[1]);
  const __m256i t1 = _mm256_hadd_epi32(v[2], v[3]);
  const __m256i t2 = _mm256_hadd_epi32(v[4], v[5]);
  const __m256i t3 = _mm256_hadd_epi32(v[6], v[7]);
  const __m256i u0 = _mm256_hadd_epi32(t0, t1);  // rows 0-3: low halves | high halves
  const __m256i u1 = _mm256_hadd_epi32(t2, t3);  // rows 4-7
  return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                          _mm256_permute2x128_si256(u0, u1, 0x31));
}

// Byte offsets of 8 rows (the last real one repeated), for the head gather.
inline __m256i RowOffsets8(size_t rb, int nrows) {
  return _mm256_mullo_epi32(
      _mm256_min_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(nrows - 1)),
      _mm256_set1_epi32(static_cast<int>(rb)));
}

// m == 1: y[c0..c1) = W[c0..c1) x, 8 rows at a time.
template <GgmlType T>
void GemvQ(const WeightView& w, const ActBlock* act, int64_t c0, int64_t c1, float* y) {
  using Tr = QuantTraits<T>;
  const int64_t nb = w.n_in / kQK;
  const size_t rb = w.row_bytes;
  for (int64_t r0 = c0; r0 < c1; r0 += 8) {
    const int nrows = static_cast<int>(std::min<int64_t>(8, c1 - r0));
    const uint8_t* base = w.data + r0 * rb;
    size_t row_off[8];
    KV_UNROLL
    for (int r = 0; r < 8; ++r) row_off[r] = std::min(r, nrows - 1) * rb + Tr::kQsOffset;
    const __m256i head_idx = RowOffsets8(rb, nrows);
    const uint8_t* next = base + 8 * rb;
    const bool prefetch = r0 + 16 <= c1;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const ActBlock& a = act[b];
      const uint8_t* blk = base + b * Tr::kBlockBytes;
      if (prefetch) {
        KV_UNROLL
        for (int r = 0; r < 8; r += 2) {
          _mm_prefetch(reinterpret_cast<const char*>(next + row_off[r] + b * Tr::kBlockBytes),
                       _MM_HINT_T0);
        }
      }
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs));
      __m256i p[8];
      KV_UNROLL
      for (int r = 0; r < 8; ++r) {
        __m256i sign = _mm256_setzero_si256();
        const __m256i wv = LoadWeightBlock<T>(blk + row_off[r], &sign);
        p[r] = BlockPartials<T>(wv, sign, x);
      }
      __m256i isum = Reduce8x8(p);
      if constexpr (T == GgmlType::kQ4_0) isum = _mm256_add_epi32(isum, _mm256_set1_epi32(a.aux));
      const __m256i g = _mm256_i32gather_epi32(reinterpret_cast<const int*>(blk), head_idx, 1);
      const __m256 scale = _mm256_mul_ps(F16LowToF32(g), _mm256_set1_ps(a.d));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc);
      if constexpr (Tr::kHasMin) {
        acc = _mm256_fmadd_ps(F16HighToF32(g), _mm256_set1_ps(AuxAsFloat(a.aux)), acc);
      }
    }
    if (nrows == 8) {
      _mm256_storeu_ps(y + r0, acc);
    } else {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, acc);
      std::memcpy(y + r0, tmp, nrows * sizeof(float));
    }
  }
}

// m > 1. The unpacked-weight buffer holds, per block, 8 vectors of 8 rows x
// 4 bytes (k = 4c .. 4c+3 of every row, as u8 for Q4 and as signed bytes
// for Q8_0), then dw[8] and mw[8] as f32.
constexpr int kBufBlockBytes = 8 * 32 + 32 + 32;
constexpr int kChunkBlocks = 16;
constexpr int kTileRows = 4;

// In-lane 4x4 transpose of 32-bit elements.
inline void Transpose4x4(__m256i r0, __m256i r1, __m256i r2, __m256i r3, __m256i* t) {
  const __m256i a0 = _mm256_unpacklo_epi32(r0, r1);
  const __m256i a1 = _mm256_unpackhi_epi32(r0, r1);
  const __m256i a2 = _mm256_unpacklo_epi32(r2, r3);
  const __m256i a3 = _mm256_unpackhi_epi32(r2, r3);
  t[0] = _mm256_unpacklo_epi64(a0, a2);
  t[1] = _mm256_unpackhi_epi64(a0, a2);
  t[2] = _mm256_unpacklo_epi64(a1, a3);
  t[3] = _mm256_unpackhi_epi64(a1, a3);
}

inline __m256i Load2x16(const uint8_t* p0, const uint8_t* p1) {
  return _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p0))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(p1)), 1);
}

// Unpacks blocks [0, nblk) of 8 rows at `base` into buf. Register e holds
// rows e and e + 4 (one per 128-bit lane), so after the transpose chunk c
// lists the rows in natural order.
template <GgmlType T>
void UnpackTile(const uint8_t* base, size_t rb, int nrows, int nblk, const uint8_t* prefetch,
                uint8_t* buf) {
  using Tr = QuantTraits<T>;
  const __m256i nib = _mm256_set1_epi8(0x0F);
  const __m256i head_idx = RowOffsets8(rb, nrows);
  size_t row_off[8];
  KV_UNROLL
  for (int r = 0; r < 8; ++r) row_off[r] = std::min(r, nrows - 1) * rb + Tr::kQsOffset;
  for (int b = 0; b < nblk; ++b) {
    const uint8_t* blk = base + b * Tr::kBlockBytes;
    uint8_t* o = buf + b * kBufBlockBytes;
    if (prefetch != nullptr) {
      KV_UNROLL
      for (int r = 0; r < 8; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(prefetch + r * rb + b * Tr::kBlockBytes),
                     _MM_HINT_T0);
      }
    }
    __m256i lo[4], hi[4];
    KV_UNROLL
    for (int e = 0; e < 4; ++e) {
      const uint8_t* pa = blk + row_off[e];
      const uint8_t* pb = blk + row_off[e + 4];
      if constexpr (Tr::kNibbles) {
        const __m256i t = Load2x16(pa, pb);
        lo[e] = _mm256_and_si256(t, nib);
        hi[e] = _mm256_and_si256(_mm256_srli_epi16(t, 4), nib);
      } else {
        lo[e] = Load2x16(pa, pb);
        hi[e] = Load2x16(pa + 16, pb + 16);
      }
    }
    __m256i t[4];
    Transpose4x4(lo[0], lo[1], lo[2], lo[3], t);
    KV_UNROLL
    for (int c = 0; c < 4; ++c) _mm256_store_si256(reinterpret_cast<__m256i*>(o + 32 * c), t[c]);
    Transpose4x4(hi[0], hi[1], hi[2], hi[3], t);
    KV_UNROLL
    for (int c = 0; c < 4; ++c) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(o + 32 * (c + 4)), t[c]);
    }
    const __m256i g = _mm256_i32gather_epi32(reinterpret_cast<const int*>(blk), head_idx, 1);
    _mm256_store_ps(reinterpret_cast<float*>(o + 256), F16LowToF32(g));
    if constexpr (Tr::kHasMin) _mm256_store_ps(reinterpret_cast<float*>(o + 288), F16HighToF32(g));
  }
}

// Rows i0 .. i0+C-1 of the activations times the 8 unpacked rows in buf;
// see the AVX-512 TileQ.
template <GgmlType T, int C>
void TileQ(const uint8_t* buf, int nblk, const ActBlock* a, int64_t m, float* y, int64_t n_out,
           bool first, int ncols) {
  using Tr = QuantTraits<T>;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[C];
  KV_UNROLL
  for (int j = 0; j < C; ++j) {
    if (first) {
      acc[j] = _mm256_setzero_ps();
    } else if (ncols == 8) {
      acc[j] = _mm256_loadu_ps(y + j * n_out);
    } else {
      alignas(32) float tmp[8] = {};
      std::memcpy(tmp, y + j * n_out, ncols * sizeof(float));
      acc[j] = _mm256_load_ps(tmp);
    }
  }
  for (int b = 0; b < nblk; ++b) {
    const uint8_t* wb = buf + b * kBufBlockBytes;
    const ActBlock* ab = a + b * m;
    __m256i ia[C];
    if constexpr (Tr::kNibbles) {
      // s16 pair sums, widened once per block.
      __m256i i16[C];
      KV_UNROLL
      for (int j = 0; j < C; ++j) i16[j] = _mm256_setzero_si256();
      KV_UNROLL
      for (int c = 0; c < 8; ++c) {
        const __m256i wv = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + 32 * c));
        KV_UNROLL
        for (int j = 0; j < C; ++j) {
          const __m256i xv = _mm256_set1_epi32(LoadI32(ab[j].qs + 4 * c));
          i16[j] = _mm256_add_epi16(i16[j], _mm256_maddubs_epi16(wv, xv));
        }
      }
      KV_UNROLL
      for (int j = 0; j < C; ++j) {
        ia[j] = _mm256_madd_epi16(i16[j], ones);
        if constexpr (T == GgmlType::kQ4_0) {
          ia[j] = _mm256_add_epi32(ia[j], _mm256_set1_epi32(ab[j].aux));
        }
      }
    } else {
      KV_UNROLL
      for (int j = 0; j < C; ++j) ia[j] = _mm256_setzero_si256();
      KV_UNROLL
      for (int c = 0; c < 8; ++c) {
        const __m256i wv = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + 32 * c));
        const __m256i wabs = _mm256_sign_epi8(wv, wv);
        KV_UNROLL
        for (int j = 0; j < C; ++j) {
          const __m256i xv = _mm256_sign_epi8(_mm256_set1_epi32(LoadI32(ab[j].qs + 4 * c)), wv);
          ia[j] = _mm256_add_epi32(ia[j], _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, xv), ones));
        }
      }
    }
    const __m256 dw = _mm256_load_ps(reinterpret_cast<const float*>(wb + 256));
    KV_UNROLL
    for (int j = 0; j < C; ++j) {
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[j]),
                               _mm256_mul_ps(dw, _mm256_set1_ps(ab[j].d)), acc[j]);
    }
    if constexpr (Tr::kHasMin) {
      const __m256 mw = _mm256_load_ps(reinterpret_cast<const float*>(wb + 288));
      KV_UNROLL
      for (int j = 0; j < C; ++j) {
        acc[j] = _mm256_fmadd_ps(mw, _mm256_set1_ps(AuxAsFloat(ab[j].aux)), acc[j]);
      }
    }
  }
  KV_UNROLL
  for (int j = 0; j < C; ++j) {
    if (ncols == 8) {
      _mm256_storeu_ps(y + j * n_out, acc[j]);
    } else {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, acc[j]);
      std::memcpy(y + j * n_out, tmp, ncols * sizeof(float));
    }
  }
}

template <GgmlType T, int C = kTileRows>
void TileQDispatch(int rows, const uint8_t* buf, int nblk, const ActBlock* a, int64_t m, float* y,
                   int64_t n_out, bool first, int ncols) {
  if constexpr (C >= 1) {
    if (rows == C) return TileQ<T, C>(buf, nblk, a, m, y, n_out, first, ncols);
    return TileQDispatch<T, C - 1>(rows, buf, nblk, a, m, y, n_out, first, ncols);
  }
}

template <GgmlType T>
void MatMulQT(const WeightView& w, const ActBlock* act, int64_t m, int64_t c0, int64_t c1,
              float* y) {
  if (m == 1) return GemvQ<T>(w, act, c0, c1, y);
  using Tr = QuantTraits<T>;
  const int64_t nb = w.n_in / kQK;
  alignas(64) uint8_t buf[kChunkBlocks * kBufBlockBytes];
  for (int64_t r0 = c0; r0 < c1; r0 += 8) {
    const int nrows = static_cast<int>(std::min<int64_t>(8, c1 - r0));
    for (int64_t kb0 = 0; kb0 < nb; kb0 += kChunkBlocks) {
      const int nblk = static_cast<int>(std::min<int64_t>(kChunkBlocks, nb - kb0));
      const uint8_t* tile = w.data + r0 * w.row_bytes + kb0 * Tr::kBlockBytes;
      const uint8_t* prefetch = r0 + 16 <= c1 ? tile + 8 * w.row_bytes : nullptr;
      UnpackTile<T>(tile, w.row_bytes, nrows, nblk, prefetch, buf);
      for (int64_t i0 = 0; i0 < m; i0 += kTileRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - i0));
        TileQDispatch<T>(rows, buf, nblk, act + kb0 * m + i0, m, y + i0 * w.n_out + r0, w.n_out,
                         kb0 == 0, nrows);
      }
    }
  }
}

void MatMulQAvx2(const WeightView& w, const ActBlock* act, int64_t m, int64_t c0, int64_t c1,
                 float* y) {
  switch (w.type) {
    case GgmlType::kQ4_0:
      return MatMulQT<GgmlType::kQ4_0>(w, act, m, c0, c1, y);
    case GgmlType::kQ4_1:
      return MatMulQT<GgmlType::kQ4_1>(w, act, m, c0, c1, y);
    default:
      return MatMulQT<GgmlType::kQ8_0>(w, act, m, c0, c1, y);
  }
}

// ---------------------------------------------------------------------------
// Float weights: 16 lanes as two ymm (lanes 0-7, 8-15).

template <GgmlType T>
inline __m256 LoadW8(const uint8_t* row, int64_t k) {
  if constexpr (T == GgmlType::kF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row + 4 * k));
  } else if constexpr (T == GgmlType::kF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k)));
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

// One weight converted to f32 (for the zero-padded tail).
template <GgmlType T>
inline float LoadW1(const uint8_t* row, int64_t k) {
  if constexpr (T == GgmlType::kF32) {
    float v;
    std::memcpy(&v, row + 4 * k, 4);
    return v;
  } else {
    uint16_t h;
    std::memcpy(&h, row + 2 * k, 2);
    return T == GgmlType::kF16 ? Fp16ToFp32(h) : Bf16ToFp32(h);
  }
}

// ReduceLanes16 of lanes lo (0-7) and hi (8-15).
inline float Reduce16(__m256 lo, __m256 hi) {
  const __m256 a = _mm256_add_ps(lo, hi);
  const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
  return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

template <GgmlType T, int R, int C>
void TileF(const WeightView& w, const float* x, int64_t i0, int64_t j0, float* y) {
  const int64_t n = w.n_in;
  const uint8_t* rows[R];
  KV_UNROLL
  for (int r = 0; r < R; ++r) rows[r] = w.data + (j0 + r) * w.row_bytes;
  const float* xs[C];
  KV_UNROLL
  for (int c = 0; c < C; ++c) xs[c] = x + (i0 + c) * n;
  __m256 lo[R][C], hi[R][C];
  KV_UNROLL
  for (int r = 0; r < R; ++r) {
    KV_UNROLL
    for (int c = 0; c < C; ++c) lo[r][c] = hi[r][c] = _mm256_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    __m256 xl[C], xh[C];
    KV_UNROLL
    for (int c = 0; c < C; ++c) {
      xl[c] = _mm256_loadu_ps(xs[c] + k);
      xh[c] = _mm256_loadu_ps(xs[c] + k + 8);
    }
    KV_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m256 wl = LoadW8<T>(rows[r], k);
      const __m256 wh = LoadW8<T>(rows[r], k + 8);
      KV_UNROLL
      for (int c = 0; c < C; ++c) {
        lo[r][c] = _mm256_fmadd_ps(wl, xl[c], lo[r][c]);
        hi[r][c] = _mm256_fmadd_ps(wh, xh[c], hi[r][c]);
      }
    }
  }
  if (k < n) {
    // Lanes past n_in keep their value (as the AVX-512 masked fma does).
    const int t = static_cast<int>(n - k);
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 ml = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(t), idx));
    const __m256 mh = _mm256_castsi256_ps(
        _mm256_cmpgt_epi32(_mm256_set1_epi32(t), _mm256_add_epi32(idx, _mm256_set1_epi32(8))));
    __m256 xl[C], xh[C];
    KV_UNROLL
    for (int c = 0; c < C; ++c) {
      alignas(32) float tmp[16] = {};
      std::memcpy(tmp, xs[c] + k, t * sizeof(float));
      xl[c] = _mm256_load_ps(tmp);
      xh[c] = _mm256_load_ps(tmp + 8);
    }
    KV_UNROLL
    for (int r = 0; r < R; ++r) {
      alignas(32) float tmp[16] = {};
      for (int e = 0; e < t; ++e) tmp[e] = LoadW1<T>(rows[r], k + e);
      const __m256 wl = _mm256_load_ps(tmp);
      const __m256 wh = _mm256_load_ps(tmp + 8);
      KV_UNROLL
      for (int c = 0; c < C; ++c) {
        lo[r][c] = _mm256_blendv_ps(lo[r][c], _mm256_fmadd_ps(wl, xl[c], lo[r][c]), ml);
        hi[r][c] = _mm256_blendv_ps(hi[r][c], _mm256_fmadd_ps(wh, xh[c], hi[r][c]), mh);
      }
    }
  }
  KV_UNROLL
  for (int r = 0; r < R; ++r) {
    KV_UNROLL
    for (int c = 0; c < C; ++c) y[(i0 + c) * w.n_out + j0 + r] = Reduce16(lo[r][c], hi[r][c]);
  }
}

template <GgmlType T>
void MatMulFT(const WeightView& w, const float* x, int64_t m, int64_t c0, int64_t c1, float* y) {
  if (m == 1) {
    int64_t j = c0;
    for (; j + 4 <= c1; j += 4) TileF<T, 4, 1>(w, x, 0, j, y);
    for (; j < c1; ++j) TileF<T, 1, 1>(w, x, 0, j, y);
    return;
  }
  int64_t j = c0;
  for (; j + 2 <= c1; j += 2) {
    int64_t i = 0;
    for (; i + 2 <= m; i += 2) TileF<T, 2, 2>(w, x, i, j, y);
    for (; i < m; ++i) TileF<T, 2, 1>(w, x, i, j, y);
  }
  for (; j < c1; ++j) {
    int64_t i = 0;
    for (; i + 2 <= m; i += 2) TileF<T, 1, 2>(w, x, i, j, y);
    for (; i < m; ++i) TileF<T, 1, 1>(w, x, i, j, y);
  }
}

void MatMulFAvx2(const WeightView& w, const float* x, int64_t m, int64_t c0, int64_t c1, float* y) {
  switch (w.type) {
    case GgmlType::kF32:
      return MatMulFT<GgmlType::kF32>(w, x, m, c0, c1, y);
    case GgmlType::kF16:
      return MatMulFT<GgmlType::kF16>(w, x, m, c0, c1, y);
    default:
      return MatMulFT<GgmlType::kBF16>(w, x, m, c0, c1, y);
  }
}

constexpr IsaKernels kAvx2 = {"avx2", &QuantizeRowsAvx2, &MatMulQAvx2, &MatMulFAvx2};

}  // namespace
}  // namespace kvserve::kernels::internal

#undef KV_UNROLL
#pragma GCC pop_options

namespace kvserve::kernels::internal {
const IsaKernels* Avx2Kernels() {
  static const bool ok = CpuHasAvx2();
  return ok ? &kAvx2 : nullptr;
}
}  // namespace kvserve::kernels::internal

#else  // !__x86_64__

namespace kvserve::kernels::internal {
const IsaKernels* Avx2Kernels() { return nullptr; }
}  // namespace kvserve::kernels::internal

#endif
