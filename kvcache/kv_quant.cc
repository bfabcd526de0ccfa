#include "kvcache/kv_quant.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/check.h"
#include "common/fp16.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kvserve::kvcache {
namespace {

constexpr float kF16Max = 65504.0f;
// Adding and subtracting 1.5 * 2^23 rounds a float in [0, 2^22) to the
// nearest integer, ties to even: what cvtps2dq does under the default MXCSR.
constexpr float kRoundMagic = 12582912.0f;
constexpr int kMaxGroup = 64;

// Value groups: 64 channels at 8 and 4 bits, where the scale overhead is
// what keeps int4 from fitting a 1/4 budget and wider groups measured no
// worse (WikiText-2 perplexity, docs/compression.md); 32 at 2 bits, where
// the coarser step makes narrow groups pay off. Smaller powers of two for
// head dims they do not divide; a head_dim below 8 is one group.
int GroupSize(int head_dim, KvTier tier) {
  for (int g : {64, 32, 16, 8}) {
    if (g == 64 && tier == KvTier::kInt2) continue;
    if (head_dim % g == 0) return g;
  }
  return head_dim;
}

// The f16 params of one group and the reciprocal scale codes are computed
// with. Shared by every instruction set, so all write the same bytes.
struct GroupFit {
  uint16_t scale_h = 0;
  uint16_t min_h = 0;
  float min = 0;
  float inv = 0;  // 1 / scale, 0 for a constant group
};

// lo, hi: the group's range after Sanitize.
GroupFit FitGroup(float lo, float hi, int qmax) {
  GroupFit f;
  // -0 and +0 compare equal, so which one a min/max reduction returns
  // depends on its order; adding +0 makes both +0 and the stored bytes
  // independent of the reduction.
  lo += 0.0f;
  hi += 0.0f;
  f.min = lo;
  f.min_h = Fp32ToFp16(lo);  // exact: lo is an f16 value
  if (!(hi > lo)) return f;
  uint16_t s = Fp32ToFp16((hi - lo) / static_cast<float>(qmax));
  // Distinct f16 values differ by at least 2^-24, the smallest subnormal
  // scale: with it every code is exact, so an underflowing scale takes it.
  if (s == 0) s = 1;
  // The top code must decode to a finite f16 (the scale may have rounded
  // up past the range's end); a smaller scale only clamps the top codes.
  while ((Fp32ToFp16(lo + static_cast<float>(qmax) * Fp16ToFp32(s)) & 0x7C00u) == 0x7C00u) --s;
  f.scale_h = s;
  f.inv = 1.0f / Fp16ToFp32(s);
  return f;
}

// NaN -> 0, +-inf -> +-65504; finite f16 values unchanged.
inline float Sanitize(float x) {
  if (x != x) x = 0.0f;
  return std::min(std::max(x, -kF16Max), kF16Max);
}

inline int Code(float x, const GroupFit& f, int qmax) {
  float y = (x - f.min) * f.inv;
  y = std::min(std::max(y, 0.0f), static_cast<float>(qmax));
  return static_cast<int>((y + kRoundMagic) - kRoundMagic);
}

inline void StoreParams(const GroupFit& f, uint8_t* p) {
  std::memcpy(p, &f.scale_h, 2);
  std::memcpy(p + 2, &f.min_h, 2);
}

// Packs n codes (n * bits a multiple of 8) into the bit stream at dst.
void PackCodes(const uint8_t* codes, int n, int bits, uint8_t* dst) {
  const int per_byte = 8 / bits;
  for (int b = 0; b < n / per_byte; ++b) {
    unsigned byte = 0;
    for (int e = 0; e < per_byte; ++e) byte |= unsigned{codes[b * per_byte + e]} << (e * bits);
    dst[b] = static_cast<uint8_t>(byte);
  }
}

inline int CodeAt(const uint8_t* p, int e, int bits) {
  return (p[e * bits / 8] >> ((e * bits) % 8)) & ((1 << bits) - 1);
}

inline uint16_t Decode(int code, float scale, float min) {
  // code * scale is exact (11 + 8 significant bits), so this rounds once,
  // as an fma would: the vector kernels match it bit for bit.
  return Fp32ToFp16(min + static_cast<float>(code) * scale);
}

inline float LoadF16Param(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return Fp16ToFp32(h);
}

// ---------------------------------------------------------------------------
// Scalar kernels.

void QuantizeScalar(const KvShape& shape, int bt, const KvQuantLayout& L, int n_valid,
                    const uint16_t* k, const uint16_t* v, uint8_t* dst) {
  const int D = shape.head_dim, rw = shape.row_width(), g = L.group, bits = L.bits;
  const int qmax = (1 << bits) - 1;
  // Scratch for one group: bt tokens of a K channel or g channels of V.
  std::vector<uint8_t> codes(std::max(bt, g));
  std::vector<float> x(std::max(bt, g));
  for (int h = 0; h < shape.n_kv_heads; ++h) {
    uint8_t* head = dst + h * L.head_bytes;
    for (int i = 0; i < D; ++i) {
      const uint16_t* row = k + static_cast<size_t>(h * D + i) * bt;
      for (int j = 0; j < n_valid; ++j) x[j] = Sanitize(Fp16ToFp32(row[j]));
      float lo = x[0], hi = x[0];
      for (int j = 1; j < n_valid; ++j) {
        lo = std::min(lo, x[j]);
        hi = std::max(hi, x[j]);
      }
      const GroupFit f = FitGroup(lo, hi, qmax);
      for (int j = 0; j < n_valid; ++j) codes[j] = static_cast<uint8_t>(Code(x[j], f, qmax));
      std::fill(codes.begin() + n_valid, codes.end(), uint8_t{0});
      PackCodes(codes.data(), bt, bits, head + i * L.k_code_bytes);
      StoreParams(f, head + L.k_params_offset + 4 * i);
    }
    for (int j = 0; j < bt; ++j) {
      uint8_t* vc = head + L.v_codes_offset + j * L.v_code_bytes;
      uint8_t* vp = head + L.v_params_offset + static_cast<size_t>(j) * (D / g) * 4;
      if (j >= n_valid) {
        std::memset(vc, 0, L.v_code_bytes);
        std::memset(vp, 0, (D / g) * 4);
        continue;
      }
      const uint16_t* row = v + static_cast<size_t>(j) * rw + h * D;
      for (int q = 0; q < D / g; ++q) {
        for (int i = 0; i < g; ++i) x[i] = Sanitize(Fp16ToFp32(row[q * g + i]));
        float lo = x[0], hi = x[0];
        for (int i = 1; i < g; ++i) {
          lo = std::min(lo, x[i]);
          hi = std::max(hi, x[i]);
        }
        const GroupFit f = FitGroup(lo, hi, qmax);
        for (int i = 0; i < g; ++i) codes[i] = static_cast<uint8_t>(Code(x[i], f, qmax));
        PackCodes(codes.data(), g, bits, vc + q * g * bits / 8);
        StoreParams(f, vp + 4 * q);
      }
    }
  }
}

void DequantHeadScalar(const KvShape& shape, int bt, const KvQuantLayout& L, const uint8_t* head,
                       uint16_t* k_out, uint16_t* v_out, int v_stride) {
  const int D = shape.head_dim, g = L.group, bits = L.bits;
  for (int i = 0; i < D; ++i) {
    const uint8_t* codes = head + i * L.k_code_bytes;
    const float s = LoadF16Param(head + L.k_params_offset + 4 * i);
    const float m = LoadF16Param(head + L.k_params_offset + 4 * i + 2);
    for (int j = 0; j < bt; ++j) k_out[i * bt + j] = Decode(CodeAt(codes, j, bits), s, m);
  }
  for (int j = 0; j < bt; ++j) {
    const uint8_t* codes = head + L.v_codes_offset + j * L.v_code_bytes;
    const uint8_t* params = head + L.v_params_offset + static_cast<size_t>(j) * (D / g) * 4;
    for (int q = 0; q < D / g; ++q) {
      const float s = LoadF16Param(params + 4 * q);
      const float m = LoadF16Param(params + 4 * q + 2);
      for (int i = q * g; i < (q + 1) * g; ++i) {
        v_out[j * v_stride + i] = Decode(CodeAt(codes, i, bits), s, m);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// AVX2 + F16C kernels.

#if defined(__x86_64__)
#define KVSERVE_QUANT_AVX2 __attribute__((target("avx2,fma,f16c")))
#define KVSERVE_QUANT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

// Eight codes starting at element 0 of p, one per 32-bit lane.
template <int kBits>
KVSERVE_QUANT_AVX2 inline __m256i Codes8(const uint8_t* p) {
  if constexpr (kBits == 8) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  } else if constexpr (kBits == 4) {
    uint32_t w;
    std::memcpy(&w, p, 4);
    const __m256i sh = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(w)), sh),
                            _mm256_set1_epi32(0xF));
  } else {
    uint16_t w;
    std::memcpy(&w, p, 2);
    const __m256i sh = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(w), sh), _mm256_set1_epi32(3));
  }
}

KVSERVE_QUANT_AVX2 inline void Decode8(__m256i codes, __m256 s, __m256 m, uint16_t* out) {
  const __m256 x = _mm256_fmadd_ps(_mm256_cvtepi32_ps(codes), s, m);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                   _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// {scale, min} of the f16 pair at p, each broadcast.
KVSERVE_QUANT_AVX2 inline void LoadParams8(const uint8_t* p, __m256* s, __m256* m) {
  uint32_t w;
  std::memcpy(&w, p, 4);
  const __m128 sm = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(w)));
  *s = _mm256_broadcastss_ps(sm);
  *m = _mm256_broadcastss_ps(_mm_movehdup_ps(sm));
}

template <int kBits>
KVSERVE_QUANT_AVX2 void DequantHeadAvx2T(int D, int bt, const KvQuantLayout& L, const uint8_t* head,
                                         uint16_t* k_out, uint16_t* v_out, int v_stride) {
  const int g = L.group;
  for (int i = 0; i < D; ++i) {
    const uint8_t* codes = head + i * L.k_code_bytes;
    __m256 s, m;
    LoadParams8(head + L.k_params_offset + 4 * i, &s, &m);
    for (int j = 0; j < bt; j += 8) {
      Decode8(Codes8<kBits>(codes + j * kBits / 8), s, m, k_out + i * bt + j);
    }
  }
  for (int j = 0; j < bt; ++j) {
    const uint8_t* codes = head + L.v_codes_offset + j * L.v_code_bytes;
    const uint8_t* params = head + L.v_params_offset + static_cast<size_t>(j) * (D / g) * 4;
    for (int q = 0; q < D / g; ++q) {
      __m256 s, m;
      LoadParams8(params + 4 * q, &s, &m);
      for (int i = q * g; i < (q + 1) * g; i += 8) {
        Decode8(Codes8<kBits>(codes + i * kBits / 8), s, m, v_out + j * v_stride + i);
      }
    }
  }
}

// GCC 12 reports the intrinsics' internal _mm512_undefined_* operands as
// maybe-uninitialized once inlined here; they are placeholders for masked
// lanes that these unmasked forms never read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Sixteen codes starting at element 0 of p, one per 32-bit lane.
template <int kBits>
KVSERVE_QUANT_AVX512 inline __m512i Codes16(const uint8_t* p) {
  if constexpr (kBits == 8) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else if constexpr (kBits == 4) {
    // Lanes 0..7 take the first 32-bit word, 8..15 the second.
    const __m512i words = _mm512_permutexvar_epi32(
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
        _mm512_castsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    const __m512i sh = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    return _mm512_and_si512(_mm512_srlv_epi32(words, sh), _mm512_set1_epi32(0xF));
  } else {
    uint32_t w;
    std::memcpy(&w, p, 4);
    const __m512i sh = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(w)), sh),
                            _mm512_set1_epi32(3));
  }
}

KVSERVE_QUANT_AVX512 inline void Decode16(__m512i codes, __m512 s, __m512 m, uint16_t* out) {
  const __m512 x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(codes), s, m);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                      _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

KVSERVE_QUANT_AVX512 inline void LoadParams16(const uint8_t* p, __m512* s, __m512* m) {
  uint32_t w;
  std::memcpy(&w, p, 4);
  const __m128 sm = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(w)));
  *s = _mm512_broadcastss_ps(sm);
  *m = _mm512_broadcastss_ps(_mm_movehdup_ps(sm));
}

template <int kBits>
KVSERVE_QUANT_AVX512 void DequantHeadAvx512T(int D, int bt, const KvQuantLayout& L,
                                             const uint8_t* head, uint16_t* k_out, uint16_t* v_out,
                                             int v_stride) {
  const int g = L.group;
  for (int i = 0; i < D; ++i) {
    const uint8_t* codes = head + i * L.k_code_bytes;
    __m512 s, m;
    LoadParams16(head + L.k_params_offset + 4 * i, &s, &m);
    for (int j = 0; j < bt; j += 16) {
      Decode16(Codes16<kBits>(codes + j * kBits / 8), s, m, k_out + i * bt + j);
    }
  }
  for (int j = 0; j < bt; ++j) {
    const uint8_t* codes = head + L.v_codes_offset + j * L.v_code_bytes;
    const uint8_t* params = head + L.v_params_offset + static_cast<size_t>(j) * (D / g) * 4;
    for (int q = 0; q < D / g; ++q) {
      __m512 s, m;
      LoadParams16(params + 4 * q, &s, &m);
      for (int i = q * g; i < (q + 1) * g; i += 16) {
        Decode16(Codes16<kBits>(codes + i * kBits / 8), s, m, v_out + j * v_stride + i);
      }
    }
  }
}

#pragma GCC diagnostic pop

// Quantization, 8 values at a time.

// Loads 8 f16 values as sanitized floats (as Sanitize).
KVSERVE_QUANT_AVX2 inline __m256 LoadSanitized8(const uint16_t* p) {
  __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  x = _mm256_and_ps(x, _mm256_cmp_ps(x, x, _CMP_ORD_Q));
  return _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-kF16Max)), _mm256_set1_ps(kF16Max));
}

KVSERVE_QUANT_AVX2 inline float HMin(__m256 x) {
  __m128 r = _mm_min_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  r = _mm_min_ps(r, _mm_movehl_ps(r, r));
  r = _mm_min_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}

KVSERVE_QUANT_AVX2 inline float HMax(__m256 x) {
  __m128 r = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  r = _mm_max_ps(r, _mm_movehl_ps(r, r));
  r = _mm_max_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}

// FitGroup with F16C conversions (the same rounding, so the same bytes).
KVSERVE_QUANT_AVX2 GroupFit FitGroupAvx2(float lo, float hi, int qmax) {
  GroupFit f;
  lo += 0.0f;
  hi += 0.0f;
  f.min = lo;
  f.min_h = _cvtss_sh(lo, _MM_FROUND_TO_NEAREST_INT);
  if (!(hi > lo)) return f;
  uint16_t s = _cvtss_sh((hi - lo) / static_cast<float>(qmax), _MM_FROUND_TO_NEAREST_INT);
  if (s == 0) s = 1;
  while ((_cvtss_sh(lo + static_cast<float>(qmax) * _cvtsh_ss(s), _MM_FROUND_TO_NEAREST_INT) &
          0x7C00u) == 0x7C00u) {
    --s;
  }
  f.scale_h = s;
  f.inv = 1.0f / _cvtsh_ss(s);
  return f;
}

// Codes of 8 sanitized values as the low 8 bytes of the result (as Code).
KVSERVE_QUANT_AVX2 inline __m128i Codes8Of(__m256 x, __m256 min, __m256 inv, __m256 qmax) {
  __m256 y = _mm256_mul_ps(_mm256_sub_ps(x, min), inv);
  y = _mm256_min_ps(_mm256_max_ps(y, _mm256_setzero_ps()), qmax);
  const __m256i c = _mm256_cvtps_epi32(y);
  const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
  return _mm_packus_epi16(w, w);
}

// Packs 8 one-byte codes (in u, first code in the low byte) into 8 * kBits
// bits of the stream at dst.
template <int kBits>
inline void Pack8(uint64_t u, uint8_t* dst) {
  if constexpr (kBits == 8) {
    std::memcpy(dst, &u, 8);
  } else if constexpr (kBits == 4) {
    u = (u | (u >> 4)) & 0x00FF00FF00FF00FFull;
    u = (u | (u >> 8)) & 0x0000FFFF0000FFFFull;
    const uint32_t w = static_cast<uint32_t>(u | (u >> 16));
    std::memcpy(dst, &w, 4);
  } else {
    u = (u | (u >> 6)) & 0x00FF00FF00FF00FFull;
    u = (u | (u >> 12)) & 0x0000FFFF0000FFFFull;
    const uint16_t w = static_cast<uint16_t>(u | (u >> 24));
    std::memcpy(dst, &w, 2);
  }
}

template <int kBits>
KVSERVE_QUANT_AVX2 void QuantizeAvx2T(const KvShape& shape, int bt, const KvQuantLayout& L,
                                      int n_valid, const uint16_t* k, const uint16_t* v,
                                      uint8_t* dst) {
  const int D = shape.head_dim, rw = shape.row_width(), g = L.group;
  constexpr int kQmax = (1 << kBits) - 1;
  const __m256 qmax = _mm256_set1_ps(static_cast<float>(kQmax));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int h = 0; h < shape.n_kv_heads; ++h) {
    uint8_t* head = dst + h * L.head_bytes;
    for (int i = 0; i < D; ++i) {
      const uint16_t* row = k + static_cast<size_t>(h * D + i) * bt;
      uint8_t* codes = head + i * L.k_code_bytes;
      // Invalid tokens take the first token's value, so they do not widen
      // the range; their codes are zeroed below.
      const __m256 first = _mm256_set1_ps(Sanitize(Fp16ToFp32(row[0])));
      __m256 lo = first, hi = first;
      for (int j = 0; j < n_valid; j += 8) {
        const __m256 valid =
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n_valid - j), lane));
        const __m256 x = _mm256_blendv_ps(first, LoadSanitized8(row + j), valid);
        lo = _mm256_min_ps(lo, x);
        hi = _mm256_max_ps(hi, x);
      }
      const GroupFit f = FitGroupAvx2(HMin(lo), HMax(hi), kQmax);
      const __m256 min = _mm256_set1_ps(f.min), inv = _mm256_set1_ps(f.inv);
      for (int j = 0; j < bt; j += 8) {
        uint64_t u = 0;
        if (j < n_valid) {
          const __m128i c = Codes8Of(LoadSanitized8(row + j), min, inv, qmax);
          u = static_cast<uint64_t>(_mm_cvtsi128_si64(c));
          if (n_valid - j < 8) u &= ~0ull >> (8 * (8 - (n_valid - j)));
        }
        Pack8<kBits>(u, codes + j * kBits / 8);
      }
      StoreParams(f, head + L.k_params_offset + 4 * i);
    }
    for (int j = 0; j < bt; ++j) {
      uint8_t* vc = head + L.v_codes_offset + j * L.v_code_bytes;
      uint8_t* vp = head + L.v_params_offset + static_cast<size_t>(j) * (D / g) * 4;
      if (j >= n_valid) {
        std::memset(vc, 0, L.v_code_bytes);
        std::memset(vp, 0, (D / g) * 4);
        continue;
      }
      const uint16_t* row = v + static_cast<size_t>(j) * rw + h * D;
      for (int q = 0; q < D / g; ++q) {
        __m256 x[kMaxGroup / 8] = {};
        const int nv = g / 8;
        for (int t = 0; t < nv; ++t) x[t] = LoadSanitized8(row + q * g + 8 * t);
        __m256 lo = x[0], hi = x[0];
        for (int t = 1; t < nv; ++t) {
          lo = _mm256_min_ps(lo, x[t]);
          hi = _mm256_max_ps(hi, x[t]);
        }
        const GroupFit f = FitGroupAvx2(HMin(lo), HMax(hi), kQmax);
        const __m256 min = _mm256_set1_ps(f.min), inv = _mm256_set1_ps(f.inv);
        for (int t = 0; t < nv; ++t) {
          const __m128i c = Codes8Of(x[t], min, inv, qmax);
          Pack8<kBits>(static_cast<uint64_t>(_mm_cvtsi128_si64(c)),
                       vc + (q * g + 8 * t) * kBits / 8);
        }
        StoreParams(f, vp + 4 * q);
      }
    }
  }
}
#endif  // __x86_64__

bool CpuHasAvx2() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

bool CpuHasAvx512() {
#if defined(__x86_64__)
  static const bool has = CpuHasAvx2() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return has;
#else
  return false;
#endif
}

KvQuantIsa BestIsa(int head_dim) {
  if (KvQuantIsaUsable(KvQuantIsa::kAvx512, head_dim)) return KvQuantIsa::kAvx512;
  if (KvQuantIsaUsable(KvQuantIsa::kAvx2, head_dim)) return KvQuantIsa::kAvx2;
  return KvQuantIsa::kScalar;
}

void DequantHead(KvQuantIsa isa, const KvShape& shape, int bt, const KvQuantLayout& L,
                 const uint8_t* src, int head, uint16_t* k_out, uint16_t* v_out, int v_stride) {
  KV_CHECK(head >= 0 && head < shape.n_kv_heads);
  const uint8_t* h = src + head * L.head_bytes;
  const int D = shape.head_dim;
#if defined(__x86_64__)
  if (isa == KvQuantIsa::kAvx512) {
    switch (L.bits) {
      case 8:
        return DequantHeadAvx512T<8>(D, bt, L, h, k_out, v_out, v_stride);
      case 4:
        return DequantHeadAvx512T<4>(D, bt, L, h, k_out, v_out, v_stride);
      default:
        return DequantHeadAvx512T<2>(D, bt, L, h, k_out, v_out, v_stride);
    }
  }
  if (isa == KvQuantIsa::kAvx2) {
    switch (L.bits) {
      case 8:
        return DequantHeadAvx2T<8>(D, bt, L, h, k_out, v_out, v_stride);
      case 4:
        return DequantHeadAvx2T<4>(D, bt, L, h, k_out, v_out, v_stride);
      default:
        return DequantHeadAvx2T<2>(D, bt, L, h, k_out, v_out, v_stride);
    }
  }
#endif
  DequantHeadScalar(shape, bt, L, h, k_out, v_out, v_stride);
}

}  // namespace

KvQuantLayout MakeKvQuantLayout(const KvShape& shape, int block_tokens, KvTier tier) {
  KV_CHECK_MSG(IsQuantized(tier), "MakeKvQuantLayout needs a quantized tier");
  KV_CHECK_MSG(block_tokens > 0 && block_tokens % 16 == 0,
               "block_tokens must be a positive multiple of 16");
  KV_CHECK(shape.n_kv_heads > 0 && shape.head_dim > 0);
  KvQuantLayout L;
  L.bits = KvTierBits(tier);
  L.group = GroupSize(shape.head_dim, tier);
  KV_CHECK_MSG(L.group <= kMaxGroup, "head_dim above 64 must be a multiple of 8");
  const int D = shape.head_dim;
  // head_dim * bits must fill whole bytes for per-token V runs.
  KV_CHECK_MSG(D * L.bits % 8 == 0, "head_dim * bits must be a multiple of 8");
  L.k_code_bytes = block_tokens * L.bits / 8;
  L.v_code_bytes = D * L.bits / 8;
  L.k_params_offset = static_cast<size_t>(D) * L.k_code_bytes;
  L.v_codes_offset = L.k_params_offset + 4 * static_cast<size_t>(D);
  L.v_params_offset = L.v_codes_offset + static_cast<size_t>(block_tokens) * L.v_code_bytes;
  L.head_bytes = L.v_params_offset + static_cast<size_t>(block_tokens) * (D / L.group) * 4;
  L.unit_bytes = (shape.n_kv_heads * L.head_bytes + 63) / 64 * 64;
  return L;
}

size_t KvUnitBytes(const KvShape& shape, int block_tokens, KvTier tier) {
  switch (tier) {
    case KvTier::kF16:
      return 2 * 2 * static_cast<size_t>(block_tokens) * shape.row_width();
    case KvTier::kEvicted:
      return 0;
    default:
      return MakeKvQuantLayout(shape, block_tokens, tier).unit_bytes;
  }
}

bool KvQuantIsaUsable(KvQuantIsa isa, int head_dim) {
  switch (isa) {
    case KvQuantIsa::kScalar:
      return true;
    case KvQuantIsa::kAvx2:
      return CpuHasAvx2() && head_dim % 8 == 0;
    case KvQuantIsa::kAvx512:
      return CpuHasAvx512() && head_dim % 16 == 0;
  }
  return false;
}

void QuantizeKvUnitWithIsa(KvQuantIsa isa, const KvShape& shape, int block_tokens, KvTier tier,
                           int n_valid, const uint16_t* k, const uint16_t* v, uint8_t* dst) {
  const KvQuantLayout L = MakeKvQuantLayout(shape, block_tokens, tier);
  KV_CHECK(n_valid >= 1 && n_valid <= block_tokens);
  KV_CHECK(KvQuantIsaUsable(isa, shape.head_dim));
  const size_t used = shape.n_kv_heads * L.head_bytes;
  std::memset(dst + used, 0, L.unit_bytes - used);
#if defined(__x86_64__)
  if (isa != KvQuantIsa::kScalar) {
    switch (L.bits) {
      case 8:
        return QuantizeAvx2T<8>(shape, block_tokens, L, n_valid, k, v, dst);
      case 4:
        return QuantizeAvx2T<4>(shape, block_tokens, L, n_valid, k, v, dst);
      default:
        return QuantizeAvx2T<2>(shape, block_tokens, L, n_valid, k, v, dst);
    }
  }
#endif
  QuantizeScalar(shape, block_tokens, L, n_valid, k, v, dst);
}

void QuantizeKvUnit(const KvShape& shape, int block_tokens, KvTier tier, int n_valid,
                    const uint16_t* k, const uint16_t* v, uint8_t* dst) {
  QuantizeKvUnitWithIsa(BestIsa(shape.head_dim), shape, block_tokens, tier, n_valid, k, v, dst);
}

void DequantizeKvHeadWithIsa(KvQuantIsa isa, const KvShape& shape, int block_tokens, KvTier tier,
                             const uint8_t* src, int head, uint16_t* k_out, uint16_t* v_out) {
  const KvQuantLayout L = MakeKvQuantLayout(shape, block_tokens, tier);
  KV_CHECK(KvQuantIsaUsable(isa, shape.head_dim));
  DequantHead(isa, shape, block_tokens, L, src, head, k_out, v_out, shape.head_dim);
}

void DequantizeKvHead(const KvShape& shape, int block_tokens, KvTier tier, const uint8_t* src,
                      int head, uint16_t* k_out, uint16_t* v_out) {
  const KvQuantLayout L = MakeKvQuantLayout(shape, block_tokens, tier);
  DequantHead(BestIsa(shape.head_dim), shape, block_tokens, L, src, head, k_out, v_out,
              shape.head_dim);
}

void DequantizeKvUnit(const KvShape& shape, int block_tokens, KvTier tier, const uint8_t* src,
                      uint16_t* k, uint16_t* v) {
  const KvQuantLayout L = MakeKvQuantLayout(shape, block_tokens, tier);
  const KvQuantIsa isa = BestIsa(shape.head_dim);
  const int D = shape.head_dim;
  for (int h = 0; h < shape.n_kv_heads; ++h) {
    DequantHead(isa, shape, block_tokens, L, src, h, k + static_cast<size_t>(h) * D * block_tokens,
                v + h * D, shape.row_width());
  }
}

}  // namespace kvserve::kvcache
