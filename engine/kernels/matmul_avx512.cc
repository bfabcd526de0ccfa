// AVX-512 (F, BW, VL, DQ) + VNNI path. Compiled with function-level target
// options (the pragma below), so the library still runs on any x86-64; it is
// only called after a run-time CPU check.
//
// Quantised weights (see matmul_internal.h for the exact numerics):
//  - m == 1 (decode): GemvQ streams 16 weight rows at a time. Four rows share
//    a zmm (one row per 128-bit lane), VPDPBUSD multiplies them by the
//    activation block broadcast to every lane, and an in-register reduction
//    turns the per-lane partial sums into one exact block sum per row, so
//    the f32 per-block scaling runs on 16 rows at once.
//  - m > 1 (prefill, batches): the weights of 16 rows x 16 blocks are
//    unpacked once into a small L1 buffer, transposed so that a zmm holds 4
//    consecutive k-values of 16 rows; a tile of up to kTileRows activation
//    rows then runs VPDPBUSD with the activation's 4 bytes broadcast from
//    memory. Every lane ends a block with the exact block sum of one
//    (weight row, activation row) pair.
// Both give each output element its own f32 accumulator updated once per
// block in block order, so the result is bit-identical to the scalar path
// and independent of m and of the thread split.
//
// Float weights: 16-lane f32 accumulators over k in register tiles.
#include "engine/kernels/matmul_internal.h"

#if defined(__x86_64__)

#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace kvserve::kernels::internal {
namespace {
bool CpuHasAvx512Vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx2") &&
         __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
}  // namespace
}  // namespace kvserve::kernels::internal

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")

// Loops over compile-time tile sizes must be unrolled for the accumulators
// to live in registers; -O2 does not do it on its own.
#define KV_UNROLL _Pragma("GCC unroll 16")

namespace kvserve::kernels::internal {
namespace {

using gguf::GgmlType;

// ---------------------------------------------------------------------------
// Quantised weights.

// f16 values in the low / high halves of 16 int32 lanes, as f32.
inline __m512 F16LowToF32(__m512i g) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g)); }
inline __m512 F16HighToF32(__m512i g) {
  return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16)));
}

// Four 16-byte pieces, one per 128-bit lane.
inline __m512i Load4x16(const uint8_t* p0, const uint8_t* p1, const uint8_t* p2,
                        const uint8_t* p3) {
  const __m256i lo = _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p0))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(p1)), 1);
  const __m256i hi = _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p2))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(p3)), 1);
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// The 16 weight rows of a group. A full group addresses row 4e + L as
// quad[e] + L * rb, which x86 addressing modes express directly; a pointer
// per row would not stay in registers. The partial group at the end of a
// column range repeats its last row (those lanes are never stored).
template <bool kFull>
struct RowGroup {
  const uint8_t* quad[4];
  size_t rb, rb3;
  const uint8_t* row[16];

  RowGroup(const uint8_t* base, size_t row_bytes, int nrows) : rb(row_bytes), rb3(3 * row_bytes) {
    if constexpr (kFull) {
      KV_UNROLL
      for (int e = 0; e < 4; ++e) quad[e] = base + 4 * e * rb;
    } else {
      KV_UNROLL
      for (int i = 0; i < 16; ++i) row[i] = base + std::min(i, nrows - 1) * rb;
    }
  }
  // 16 bytes at offset off of rows 4e .. 4e+3, one row per 128-bit lane.
  __m512i Load4(int e, size_t off) const {
    if constexpr (kFull) {
      const uint8_t* p = quad[e] + off;
      return Load4x16(p, p + rb, p + 2 * rb, p + rb3);
    } else {
      return Load4x16(row[4 * e] + off, row[4 * e + 1] + off, row[4 * e + 2] + off,
                      row[4 * e + 3] + off);
    }
  }
};

// a_e holds 4 partial sums of row 4e + L in 128-bit lane L. Returns the row
// sums with row 4e + L in lane 4L + e (kLaneRow below).
inline __m512i Reduce4x4(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
  const __m512i u01 =
      _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
  const __m512i u23 =
      _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
  return _mm512_add_epi32(_mm512_unpacklo_epi64(u01, u23), _mm512_unpackhi_epi64(u01, u23));
}

// Row (within a 16-row group) held by each lane after Reduce4x4. The map is
// its own inverse, so permuting by it also restores row order.
alignas(64) constexpr int32_t kLaneRow[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};

// ---------------------------------------------------------------------------
// Activation quantisation (same bytes as QuantizeActBlockScalar). Blocks go
// in groups of 16, so that the per-block maximum and sum come out of
// transposed reduction trees as one vector (lane j = block j) instead of a
// horizontal reduction per block, and the scale arithmetic (two divisions,
// f16 rounding) runs on 16 blocks at once.

// Lane j of the result is op over all 16 lanes of v[j].
template <typename Op>
inline __m512i ReduceTransposed16(__m512i* v, Op op) {
  __m512i r1[8], r2[4];
  KV_UNROLL
  for (int i = 0; i < 8; ++i) {  // lanes 0-7: v[2i] folded once; 8-15: v[2i+1]
    r1[i] = op(_mm512_shuffle_i64x2(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
               _mm512_shuffle_i64x2(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  KV_UNROLL
  for (int k = 0; k < 4; ++k) {  // 128-bit lane L: 4 partials of v[4k + L]
    r2[k] = op(_mm512_shuffle_i64x2(r1[2 * k], r1[2 * k + 1], _MM_SHUFFLE(2, 0, 2, 0)),
               _mm512_shuffle_i64x2(r1[2 * k], r1[2 * k + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  // As Reduce4x4: lane 4L + e now holds v[4e + L]; kLaneRow restores order.
  const __m512i u01 = op(_mm512_unpacklo_epi32(r2[0], r2[1]), _mm512_unpackhi_epi32(r2[0], r2[1]));
  const __m512i u23 = op(_mm512_unpacklo_epi32(r2[2], r2[3]), _mm512_unpackhi_epi32(r2[2], r2[3]));
  const __m512i t = op(_mm512_unpacklo_epi64(u01, u23), _mm512_unpackhi_epi64(u01, u23));
  return _mm512_permutexvar_epi32(_mm512_load_si512(kLaneRow), t);
}

// Blocks 0..15 of one row at x into out[j * m], j = 0..15.
inline void QuantizeGroup16(const float* x, ActKind kind, ActBlock* out, int64_t m) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  const auto load = [&](int j, int h) { return _mm512_loadu_si512(x + 32 * j + 16 * h); };
  __m512i t[16];
  KV_UNROLL
  for (int j = 0; j < 16; ++j) {
    // |x| compares like unsigned integers (finite values and inf).
    t[j] = _mm512_max_epu32(_mm512_and_si512(load(j, 0), abs_mask),
                            _mm512_and_si512(load(j, 1), abs_mask));
  }
  const __m512 amax = _mm512_castsi512_ps(
      ReduceTransposed16(t, [](__m512i a, __m512i b) { return _mm512_max_epu32(a, b); }));
  const __m512 k127 = _mm512_set1_ps(127.0f);
  const __m512 d = _mm512_div_ps(amax, k127);
  const __m512 id =
      _mm512_maskz_div_ps(_mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_NEQ_UQ), k127, amax);
  alignas(64) float ids[16];
  _mm512_store_ps(ids, id);
  KV_UNROLL
  for (int j = 0; j < 16; ++j) {
    const __m512 vid = _mm512_set1_ps(ids[j]);
    const __m512i q0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_castsi512_ps(load(j, 0)), vid),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i q1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_castsi512_ps(load(j, 1)), vid),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out[j * m].qs), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out[j * m].qs + 16), _mm512_cvtepi32_epi8(q1));
    t[j] = _mm512_add_epi32(q0, q1);
  }
  const __m512i sum =
      ReduceTransposed16(t, [](__m512i a, __m512i b) { return _mm512_add_epi32(a, b); });
  const auto round_f16 = [](__m512 v) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  };
  __m512i aux;
  switch (kind) {
    case ActKind::kQ8_0ForQ4_0:
      aux = _mm512_mullo_epi32(sum, _mm512_set1_epi32(-8));
      break;
    case ActKind::kQ8_0ForQ8_0:
      aux = _mm512_mullo_epi32(sum, _mm512_set1_epi32(-128));
      break;
    default:  // kQ8_1
      aux = _mm512_castps_si512(round_f16(_mm512_mul_ps(d, _mm512_cvtepi32_ps(sum))));
      break;
  }
  alignas(64) float dh[16];
  alignas(64) int32_t auxs[16];
  _mm512_store_ps(dh, round_f16(d));
  _mm512_store_si512(auxs, aux);
  KV_UNROLL
  for (int j = 0; j < 16; ++j) {
    out[j * m].d = dh[j];
    out[j * m].aux = auxs[j];
  }
}

// One block of 32 values at x into *o.
inline void QuantizeBlock(const float* x, ActKind kind, ActBlock* o) {
  const __m512 v0 = _mm512_loadu_ps(x);
  const __m512 v1 = _mm512_loadu_ps(x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
  const float d = amax / 127.0f;
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  const __m512 vid = _mm512_set1_ps(id);
  const __m512i q0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v0, vid),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512i q1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v1, vid),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(o->qs), _mm512_cvtepi32_epi8(q0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(o->qs + 16), _mm512_cvtepi32_epi8(q1));
  o->d = _cvtsh_ss(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
  const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
  switch (kind) {
    case ActKind::kQ8_0ForQ4_0:
      o->aux = -8 * sum;
      break;
    case ActKind::kQ8_0ForQ8_0:
      o->aux = -128 * sum;
      break;
    case ActKind::kQ8_1:
      o->aux =
          FloatAsAux(_cvtsh_ss(_cvtss_sh(d * static_cast<float>(sum), _MM_FROUND_TO_NEAREST_INT)));
      break;
  }
}

void QuantizeRowsAvx512(const float* x, int64_t n_in, int64_t m, int64_t r0, int64_t r1,
                        ActKind kind, ActBlock* act) {
  const int64_t nb = n_in / kQK;
  // Rows innermost: the scratch is block-major, so consecutive rows of one
  // block are adjacent and the stores stream.
  int64_t b = 0;
  for (; b + 16 <= nb; b += 16) {
    for (int64_t i = r0; i < r1; ++i) {
      QuantizeGroup16(x + i * n_in + b * kQK, kind, act + b * m + i, m);
    }
  }
  for (; b < nb; ++b) {
    for (int64_t i = r0; i < r1; ++i) QuantizeBlock(x + i * n_in + b * kQK, kind, act + b * m + i);
  }
}

// m == 1: y[r0 .. r0+nrows) for one group of 16 weight rows at `base`;
// `next` (nullable) is prefetched, next_bytes of it spread over the blocks.
template <GgmlType T, bool kFull>
void GemvGroup(const uint8_t* base, size_t rb, int nrows, int64_t nb, const ActBlock* act,
               const uint8_t* next, int64_t next_bytes, float* y) {
  using Tr = QuantTraits<T>;
  const __m512i nib = _mm512_set1_epi8(0x0F);
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const RowGroup<kFull> rows(base + Tr::kQsOffset, rb, nrows);
  const int64_t next_lines = (next_bytes + 63) / 64;
  const int64_t lines_per_block = (next_lines + nb - 1) / nb;
  // Offsets of the row each lane accumulates (kLaneRow order), for the
  // gather of the block heads (f16 scale, and for Q4_1 the f16 minimum). A
  // gather measured faster here than scalar copies of the heads.
  const __m512i head_idx = _mm512_mullo_epi32(
      _mm512_min_epi32(_mm512_load_si512(kLaneRow), _mm512_set1_epi32(nrows - 1)),
      _mm512_set1_epi32(static_cast<int>(rb)));
  __m512 acc = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t l_end = std::min(next_lines, (b + 1) * lines_per_block);
    for (int64_t l = b * lines_per_block; l < l_end; ++l) {
      _mm_prefetch(reinterpret_cast<const char*>(next + l * 64), _MM_HINT_T0);
    }
    const ActBlock& a = act[b];
    const size_t off = b * Tr::kBlockBytes;
    const __m512i xlo =
        _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.qs)));
    const __m512i xhi =
        _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.qs + 16)));
    __m512i s[4];
    KV_UNROLL
    for (int e = 0; e < 4; ++e) {
      __m512i lo, hi;
      if constexpr (Tr::kNibbles) {
        const __m512i t = rows.Load4(e, off);
        lo = _mm512_and_si512(t, nib);
        hi = _mm512_and_si512(_mm512_srli_epi16(t, 4), nib);
      } else {
        lo = _mm512_xor_si512(rows.Load4(e, off), flip);
        hi = _mm512_xor_si512(rows.Load4(e, off + 16), flip);
      }
      s[e] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xlo), hi, xhi);
    }
    __m512i isum = Reduce4x4(s[0], s[1], s[2], s[3]);
    if constexpr (!Tr::kHasMin) isum = _mm512_add_epi32(isum, _mm512_set1_epi32(a.aux));
    const __m512i g = _mm512_i32gather_epi32(head_idx, base + off, 1);
    const __m512 scale = _mm512_mul_ps(F16LowToF32(g), _mm512_set1_ps(a.d));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc);
    if constexpr (Tr::kHasMin) {
      acc = _mm512_fmadd_ps(F16HighToF32(g), _mm512_set1_ps(AuxAsFloat(a.aux)), acc);
    }
  }
  const __m512 out = _mm512_permutexvar_ps(_mm512_load_si512(kLaneRow), acc);
  _mm512_mask_storeu_ps(y, static_cast<__mmask16>((1u << nrows) - 1), out);
}

// m == 1: y[c0..c1) = W[c0..c1) x, streaming groups of 16 rows.
template <GgmlType T>
void GemvQ(const WeightView& w, const ActBlock* act, int64_t c0, int64_t c1, float* y) {
  const int64_t nb = w.n_in / kQK;
  const size_t rb = w.row_bytes;
  for (int64_t r0 = c0; r0 < c1; r0 += 16) {
    const int nrows = static_cast<int>(std::min<int64_t>(16, c1 - r0));
    const uint8_t* base = w.data + r0 * rb;
    // Prefetch the next group while working on this one.
    const int64_t next_bytes =
        r0 + 16 < c1 ? std::min<int64_t>(16, c1 - r0 - 16) * static_cast<int64_t>(rb) : 0;
    if (nrows == 16) {
      GemvGroup<T, true>(base, rb, nrows, nb, act, base + 16 * rb, next_bytes, y + r0);
    } else {
      GemvGroup<T, false>(base, rb, nrows, nb, act, base + 16 * rb, next_bytes, y + r0);
    }
  }
}

// m > 1. The unpacked-weight buffer holds, per block, 8 vectors of 16 rows x
// 4 bytes (k = 4c .. 4c+3 of every row), then dw[16] and mw[16] as f32.
constexpr int kBufBlockBytes = 8 * 64 + 64 + 64;
constexpr int kChunkBlocks = 16;  // blocks per buffer fill: 10 KiB, L1-resident
constexpr int kTileRows = 12;     // activation rows per register tile

// In-lane 4x4 transpose of 32-bit elements: afterwards t_d holds, in
// 128-bit lane L, element d of lane L of r_0 .. r_3.
inline void Transpose4x4(__m512i r0, __m512i r1, __m512i r2, __m512i r3, __m512i* t) {
  const __m512i a0 = _mm512_unpacklo_epi32(r0, r1);
  const __m512i a1 = _mm512_unpackhi_epi32(r0, r1);
  const __m512i a2 = _mm512_unpacklo_epi32(r2, r3);
  const __m512i a3 = _mm512_unpackhi_epi32(r2, r3);
  t[0] = _mm512_unpacklo_epi64(a0, a2);
  t[1] = _mm512_unpackhi_epi64(a0, a2);
  t[2] = _mm512_unpacklo_epi64(a1, a3);
  t[3] = _mm512_unpackhi_epi64(a1, a3);
}

// Unpacks blocks [0, nblk) of 16 rows starting at `base` (rows rb bytes
// apart; only the first nrows are real, the rest repeat the last one) into
// buf. Rows are read with contiguous loads, four to a zmm (one per 128-bit
// lane), and transposed in registers, which leaves row 4e + L in lane
// 4L + e (kLaneRow); the scales are stored in the same order.
template <GgmlType T, bool kFull>
void UnpackTile(const uint8_t* base, size_t rb, int nrows, int nblk, const uint8_t* prefetch,
                uint8_t* buf) {
  using Tr = QuantTraits<T>;
  const __m512i head_idx = _mm512_mullo_epi32(
      _mm512_min_epi32(_mm512_load_si512(kLaneRow), _mm512_set1_epi32(nrows - 1)),
      _mm512_set1_epi32(static_cast<int>(rb)));
  const __m512i nib = _mm512_set1_epi8(0x0F);
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const RowGroup<kFull> rows(base + Tr::kQsOffset, rb, nrows);
  for (int b = 0; b < nblk; ++b) {
    const size_t off = b * Tr::kBlockBytes;
    uint8_t* o = buf + b * kBufBlockBytes;
    if (prefetch != nullptr) {
      KV_UNROLL
      for (int i = 0; i < 16; ++i) {
        _mm_prefetch(reinterpret_cast<const char*>(prefetch + i * rb + off), _MM_HINT_T0);
      }
    }
    __m512i lo[4], hi[4];
    KV_UNROLL
    for (int e = 0; e < 4; ++e) {
      const __m512i t = rows.Load4(e, off);
      if constexpr (Tr::kNibbles) {
        lo[e] = _mm512_and_si512(t, nib);
        hi[e] = _mm512_and_si512(_mm512_srli_epi16(t, 4), nib);
      } else {
        lo[e] = _mm512_xor_si512(t, flip);
        hi[e] = _mm512_xor_si512(rows.Load4(e, off + 16), flip);
      }
    }
    __m512i t[4];
    Transpose4x4(lo[0], lo[1], lo[2], lo[3], t);
    KV_UNROLL
    for (int c = 0; c < 4; ++c) _mm512_store_si512(o + 64 * c, t[c]);
    Transpose4x4(hi[0], hi[1], hi[2], hi[3], t);
    KV_UNROLL
    for (int c = 0; c < 4; ++c) _mm512_store_si512(o + 64 * (c + 4), t[c]);
    const __m512i g = _mm512_i32gather_epi32(head_idx, base + off, 1);
    _mm512_store_ps(o + 512, F16LowToF32(g));
    if constexpr (Tr::kHasMin) _mm512_store_ps(o + 576, F16HighToF32(g));
  }
}

// Rows i0 .. i0+C-1 of the activations (a points at block kb0 of row i0;
// consecutive blocks are m ActBlocks apart) times the 16 unpacked rows in
// buf; accumulates into y (row stride n_out), starting from zero if first.
template <GgmlType T, int C>
void TileQ(const uint8_t* buf, int nblk, const ActBlock* a, int64_t m, float* y, int64_t n_out,
           bool first, __mmask16 cols) {
  using Tr = QuantTraits<T>;
  // Lanes hold the buffer's row order (kLaneRow); y is in natural order.
  const __m512i lane_row = _mm512_load_si512(kLaneRow);
  __m512 acc[C];
  KV_UNROLL
  for (int j = 0; j < C; ++j) {
    acc[j] = first ? _mm512_setzero_ps()
                   : _mm512_permutexvar_ps(lane_row, _mm512_maskz_loadu_ps(cols, y + j * n_out));
  }
  for (int b = 0; b < nblk; ++b) {
    const uint8_t* wb = buf + b * kBufBlockBytes;
    const ActBlock* ab = a + b * m;
    __m512i ia[C];
    KV_UNROLL
    for (int j = 0; j < C; ++j) {
      ia[j] = Tr::kHasMin ? _mm512_setzero_si512() : _mm512_set1_epi32(ab[j].aux);
    }
    KV_UNROLL
    for (int c = 0; c < 8; ++c) {
      const __m512i wv = _mm512_load_si512(wb + 64 * c);
      KV_UNROLL
      for (int j = 0; j < C; ++j) {
        ia[j] = _mm512_dpbusd_epi32(ia[j], wv, _mm512_set1_epi32(LoadI32(ab[j].qs + 4 * c)));
      }
    }
    const __m512 dw = _mm512_load_ps(wb + 512);
    KV_UNROLL
    for (int j = 0; j < C; ++j) {
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[j]),
                               _mm512_mul_ps(dw, _mm512_set1_ps(ab[j].d)), acc[j]);
    }
    if constexpr (Tr::kHasMin) {
      const __m512 mw = _mm512_load_ps(wb + 576);
      KV_UNROLL
      for (int j = 0; j < C; ++j) {
        acc[j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(AuxAsFloat(ab[j].aux)), acc[j]);
      }
    }
  }
  KV_UNROLL
  for (int j = 0; j < C; ++j) {
    _mm512_mask_storeu_ps(y + j * n_out, cols, _mm512_permutexvar_ps(lane_row, acc[j]));
  }
}

template <GgmlType T, int C = kTileRows>
void TileQDispatch(int rows, const uint8_t* buf, int nblk, const ActBlock* a, int64_t m, float* y,
                   int64_t n_out, bool first, __mmask16 cols) {
  if constexpr (C >= 1) {
    if (rows == C) return TileQ<T, C>(buf, nblk, a, m, y, n_out, first, cols);
    return TileQDispatch<T, C - 1>(rows, buf, nblk, a, m, y, n_out, first, cols);
  }
}

template <GgmlType T>
void MatMulQT(const WeightView& w, const ActBlock* act, int64_t m, int64_t c0, int64_t c1,
              float* y) {
  if (m == 1) return GemvQ<T>(w, act, c0, c1, y);
  using Tr = QuantTraits<T>;
  const int64_t nb = w.n_in / kQK;
  alignas(64) uint8_t buf[kChunkBlocks * kBufBlockBytes];
  for (int64_t r0 = c0; r0 < c1; r0 += 16) {
    const int nrows = static_cast<int>(std::min<int64_t>(16, c1 - r0));
    const __mmask16 cols = static_cast<__mmask16>((1u << nrows) - 1);
    for (int64_t kb0 = 0; kb0 < nb; kb0 += kChunkBlocks) {
      const int nblk = static_cast<int>(std::min<int64_t>(kChunkBlocks, nb - kb0));
      // Prefetch the same blocks of the next 16 rows while unpacking.
      const uint8_t* tile = w.data + r0 * w.row_bytes + kb0 * Tr::kBlockBytes;
      const uint8_t* prefetch = r0 + 32 <= c1 ? tile + 16 * w.row_bytes : nullptr;
      if (nrows == 16) {
        UnpackTile<T, true>(tile, w.row_bytes, nrows, nblk, prefetch, buf);
      } else {
        UnpackTile<T, false>(tile, w.row_bytes, nrows, nblk, prefetch, buf);
      }
      for (int64_t i0 = 0; i0 < m; i0 += kTileRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - i0));
        TileQDispatch<T>(rows, buf, nblk, act + kb0 * m + i0, m, y + i0 * w.n_out + r0, w.n_out,
                         kb0 == 0, cols);
      }
    }
  }
}

void MatMulQAvx512(const WeightView& w, const ActBlock* act, int64_t m, int64_t c0, int64_t c1,
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
// Float weights.

template <GgmlType T>
inline __m512 LoadW16(const uint8_t* row, int64_t k) {
  if constexpr (T == GgmlType::kF32) {
    return _mm512_loadu_ps(row + 4 * k);
  } else if constexpr (T == GgmlType::kF16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k)));
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

template <GgmlType T>
inline __m512 LoadW16Masked(const uint8_t* row, int64_t k, __mmask16 mask) {
  if constexpr (T == GgmlType::kF32) {
    return _mm512_maskz_loadu_ps(mask, row + 4 * k);
  } else if constexpr (T == GgmlType::kF16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, row + 2 * k));
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(mask, row + 2 * k);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// ReduceLanes16 in registers.
inline float Reduce16(__m512 v) {
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
  return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

// Output columns j0 .. j0+R-1 for activation rows i0 .. i0+C-1.
template <GgmlType T, int R, int C>
void TileF(const WeightView& w, const float* x, int64_t i0, int64_t j0, float* y) {
  const int64_t n = w.n_in;
  const uint8_t* rows[R];
  KV_UNROLL
  for (int r = 0; r < R; ++r) rows[r] = w.data + (j0 + r) * w.row_bytes;
  const float* xs[C];
  KV_UNROLL
  for (int c = 0; c < C; ++c) xs[c] = x + (i0 + c) * n;
  __m512 acc[R][C];
  KV_UNROLL
  for (int r = 0; r < R; ++r) {
    KV_UNROLL
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    __m512 xv[C];
    KV_UNROLL
    for (int c = 0; c < C; ++c) xv[c] = _mm512_loadu_ps(xs[c] + k);
    KV_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 wv = LoadW16<T>(rows[r], k);
      KV_UNROLL
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
    }
  }
  if (k < n) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (n - k)) - 1);
    __m512 xv[C];
    KV_UNROLL
    for (int c = 0; c < C; ++c) xv[c] = _mm512_maskz_loadu_ps(mask, xs[c] + k);
    KV_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 wv = LoadW16Masked<T>(rows[r], k, mask);
      KV_UNROLL
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_mask3_fmadd_ps(wv, xv[c], acc[r][c], mask);
    }
  }
  KV_UNROLL
  for (int r = 0; r < R; ++r) {
    KV_UNROLL
    for (int c = 0; c < C; ++c) y[(i0 + c) * w.n_out + j0 + r] = Reduce16(acc[r][c]);
  }
}

template <GgmlType T>
void MatMulFT(const WeightView& w, const float* x, int64_t m, int64_t c0, int64_t c1, float* y) {
  if (m == 1) {
    int64_t j = c0;
    for (; j + 8 <= c1; j += 8) TileF<T, 8, 1>(w, x, 0, j, y);
    for (; j < c1; ++j) TileF<T, 1, 1>(w, x, 0, j, y);
    return;
  }
  int64_t j = c0;
  for (; j + 4 <= c1; j += 4) {
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) TileF<T, 4, 4>(w, x, i, j, y);
    for (; i < m; ++i) TileF<T, 4, 1>(w, x, i, j, y);
  }
  for (; j < c1; ++j) {
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) TileF<T, 1, 4>(w, x, i, j, y);
    for (; i < m; ++i) TileF<T, 1, 1>(w, x, i, j, y);
  }
}

void MatMulFAvx512(const WeightView& w, const float* x, int64_t m, int64_t c0, int64_t c1,
                   float* y) {
  switch (w.type) {
    case GgmlType::kF32:
      return MatMulFT<GgmlType::kF32>(w, x, m, c0, c1, y);
    case GgmlType::kF16:
      return MatMulFT<GgmlType::kF16>(w, x, m, c0, c1, y);
    default:
      return MatMulFT<GgmlType::kBF16>(w, x, m, c0, c1, y);
  }
}

constexpr IsaKernels kAvx512 = {"avx512vnni", &QuantizeRowsAvx512, &MatMulQAvx512, &MatMulFAvx512};

}  // namespace
}  // namespace kvserve::kernels::internal

#undef KV_UNROLL
#pragma GCC pop_options

namespace kvserve::kernels::internal {
const IsaKernels* Avx512Kernels() {
  static const bool ok = CpuHasAvx512Vnni();
  return ok ? &kAvx512 : nullptr;
}
}  // namespace kvserve::kernels::internal

#else  // !__x86_64__

namespace kvserve::kernels::internal {
const IsaKernels* Avx512Kernels() { return nullptr; }
}  // namespace kvserve::kernels::internal

#endif
