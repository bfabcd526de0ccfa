#include "engine/gguf/dequantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/fp16.h"

namespace kvserve::gguf {
namespace {

// Abseil here is built with its own string_view type, which StrCat does not
// accept from std::string_view.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// All multi-byte fields in GGUF are little-endian; like the rest of the
// loader this code assumes a little-endian host.
uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
float LoadHalf(const uint8_t* p) { return Fp16ToFp32(LoadU16(p)); }
void StoreU16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, sizeof v); }

// ---- 32-element blocks. In all of them value j (j < 16) sits in the low
// nibble of qs[j] and value j + 16 in its high nibble.

void DequantQ4_0(const uint8_t* b, float* y) {  // {f16 d; u8 qs[16]}
  const float d = LoadHalf(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
    y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

void DequantQ4_1(const uint8_t* b, float* y) {  // {f16 d; f16 m; u8 qs[16]}
  const float d = LoadHalf(b);
  const float m = LoadHalf(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
    y[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

// Q5: bit j of the little-endian u32 qh is the fifth bit of value j.
void DequantQ5_0(const uint8_t* b, float* y) {  // {f16 d; u8 qh[4]; u8 qs[16]}
  const float d = LoadHalf(b);
  const uint32_t qh = LoadU32(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = static_cast<float>(lo - 16) * d;
    y[j + 16] = static_cast<float>(hi - 16) * d;
  }
}

void DequantQ5_1(const uint8_t* b, float* y) {  // {f16 d; f16 m; u8 qh[4]; u8 qs[16]}
  const float d = LoadHalf(b);
  const float m = LoadHalf(b + 2);
  const uint32_t qh = LoadU32(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = static_cast<float>(lo) * d + m;
    y[j + 16] = static_cast<float>(hi) * d + m;
  }
}

void DequantQ8_0(const uint8_t* b, float* y) {  // {f16 d; i8 qs[32]}
  const float d = LoadHalf(b);
  for (int j = 0; j < 32; ++j) {
    y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
  }
}

// ---- 256-element super-blocks (K-quants).

// Q2_K: {u8 scales[16]; u8 qs[64]; f16 d; f16 dmin}. 16 sub-blocks of 16;
// scales[i] holds sub-block i's 4-bit scale (low nibble) and 4-bit min (high
// nibble). Each 128-value half uses 32 qs bytes; the 2-bit field at shift 2*s
// of byte qs[l] (l < 32) belongs to sub-block 2*s + (l >= 16).
void DequantQ2_K(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = LoadHalf(b + 80);
  const float dmin = LoadHalf(b + 82);
  for (int half = 0; half < 2; ++half) {
    const uint8_t* q = qs + 32 * half;
    for (int s = 0; s < 4; ++s) {
      for (int g = 0; g < 2; ++g) {
        const uint8_t sc = scales[8 * half + 2 * s + g];
        const float dl = d * static_cast<float>(sc & 0x0F);
        const float ml = dmin * static_cast<float>(sc >> 4);
        for (int l = 0; l < 16; ++l) {
          const int v = (q[16 * g + l] >> (2 * s)) & 3;
          *y++ = dl * static_cast<float>(v) - ml;
        }
      }
    }
  }
}

// Q3_K: {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}. Values are 2 low
// bits (qs, packed as in Q2_K) plus a high bit from hmask (bit k of hmask[l]
// for the k-th 32-value group); a clear high bit subtracts 4. The sixteen
// 6-bit signed scales (offset 32) keep their low nibbles in scales[0..7]
// (sub-block i < 8: low nibble of byte i; i >= 8: high nibble of byte i-8)
// and their top two bits in scales[8..11] (byte 8 + i%4, bits 2*(i/4)).
void DequantQ3_K(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = LoadHalf(b + 108);
  int scale[16];
  for (int i = 0; i < 16; ++i) {
    const int low = i < 8 ? (sc[i] & 0x0F) : (sc[i - 8] >> 4);
    const int high = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
    scale[i] = (low | (high << 4)) - 32;
  }
  int group = 0;  // 32-value group index, selects the hmask bit
  for (int half = 0; half < 2; ++half) {
    const uint8_t* q = qs + 32 * half;
    for (int s = 0; s < 4; ++s, ++group) {
      for (int g = 0; g < 2; ++g) {
        const float dl = d * static_cast<float>(scale[8 * half + 2 * s + g]);
        for (int l = 0; l < 16; ++l) {
          const int idx = 16 * g + l;
          int v = (q[idx] >> (2 * s)) & 3;
          if ((hmask[idx] & (1u << group)) == 0) v -= 4;
          *y++ = dl * static_cast<float>(v);
        }
      }
    }
  }
}

// Q4_K / Q5_K scales: eight 6-bit scales and eight 6-bit mins in 12 bytes.
// For j < 4: scale = s[j] & 63, min = s[j+4] & 63. For j >= 4 the low four
// bits come from s[j+4] (scale: low nibble, min: high nibble) and the top two
// bits from the spare top bits of s[j-4] (scale) and s[j] (min).
void ScaleMinK4(int j, const uint8_t* s, int* scale, int* min) {
  if (j < 4) {
    *scale = s[j] & 63;
    *min = s[j + 4] & 63;
  } else {
    *scale = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q4_K: {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}. Eight sub-blocks of
// 32; each 64-value chunk uses 32 qs bytes: low nibbles for the first
// sub-block, high nibbles for the second.
void DequantQ4_K(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float dmin = LoadHalf(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  for (int chunk = 0; chunk < 4; ++chunk) {
    const uint8_t* q = qs + 32 * chunk;
    for (int g = 0; g < 2; ++g) {
      int sc, mn;
      ScaleMinK4(2 * chunk + g, scales, &sc, &mn);
      const float dl = d * static_cast<float>(sc);
      const float ml = dmin * static_cast<float>(mn);
      for (int l = 0; l < 32; ++l) {
        const int v = g == 0 ? (q[l] & 0x0F) : (q[l] >> 4);
        *y++ = dl * static_cast<float>(v) - ml;
      }
    }
  }
}

// Q5_K: {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}. As Q4_K,
// plus a fifth bit: bit k of qh[l] for value l of sub-block k.
void DequantQ5_K(const uint8_t* b, float* y) {
  const float d = LoadHalf(b);
  const float dmin = LoadHalf(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int chunk = 0; chunk < 4; ++chunk) {
    const uint8_t* q = qs + 32 * chunk;
    for (int g = 0; g < 2; ++g) {
      const int sub = 2 * chunk + g;
      int sc, mn;
      ScaleMinK4(sub, scales, &sc, &mn);
      const float dl = d * static_cast<float>(sc);
      const float ml = dmin * static_cast<float>(mn);
      for (int l = 0; l < 32; ++l) {
        int v = g == 0 ? (q[l] & 0x0F) : (q[l] >> 4);
        v |= ((qh[l] >> sub) & 1) << 4;
        *y++ = dl * static_cast<float>(v) - ml;
      }
    }
  }
}

// Q6_K: {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}. Each 128-value half
// uses 64 ql bytes and 32 qh bytes. Within a half, value 32*k + l (k < 4,
// l < 32) takes its low nibble from ql[l + 32*(k&1)] (low nibble for k < 2,
// high for k >= 2) and its top two bits from qh[l] at shift 2*k; the 6-bit
// value is offset by 32. Sub-blocks of 16 have signed 8-bit scales.
void DequantQ6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = LoadHalf(b + 208);
  for (int half = 0; half < 2; ++half) {
    const uint8_t* l4 = ql + 64 * half;
    const uint8_t* h2 = qh + 32 * half;
    const int8_t* sc = scales + 8 * half;
    for (int k = 0; k < 4; ++k) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t lo_byte = l4[l + 32 * (k & 1)];
        const int lo = k < 2 ? (lo_byte & 0x0F) : (lo_byte >> 4);
        const int hi = (h2[l] >> (2 * k)) & 3;
        const int v = (lo | (hi << 4)) - 32;
        const int sub = 2 * k + l / 16;
        y[32 * k + l] = d * static_cast<float>(sc[sub]) * static_cast<float>(v);
      }
    }
    y += 128;
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn BlockDequantizer(GgmlType t) {
  switch (t) {
    case GgmlType::kQ4_0:
      return DequantQ4_0;
    case GgmlType::kQ4_1:
      return DequantQ4_1;
    case GgmlType::kQ5_0:
      return DequantQ5_0;
    case GgmlType::kQ5_1:
      return DequantQ5_1;
    case GgmlType::kQ8_0:
      return DequantQ8_0;
    case GgmlType::kQ2_K:
      return DequantQ2_K;
    case GgmlType::kQ3_K:
      return DequantQ3_K;
    case GgmlType::kQ4_K:
      return DequantQ4_K;
    case GgmlType::kQ5_K:
      return DequantQ5_K;
    case GgmlType::kQ6_K:
      return DequantQ6_K;
    default:
      return nullptr;
  }
}

absl::Status CheckCount(std::string_view op, GgmlType t, int64_t n) {
  const int64_t block = BlockElements(t);
  if (n < 0 || block == 0 || n % block != 0) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(op), ": ", n, " values of type ",
                                                   Sv(TypeName(t)), " is not a whole number of ",
                                                   block, "-value blocks"));
  }
  return absl::OkStatus();
}

// ---- Quantisers, matching the rounding of GGML's reference quantisers. The
// float -> int conversions are clamped first so that non-finite or extreme
// inputs cannot hit undefined behaviour; in range they round identically.

// Truncation toward zero of v, clamped to [lo, hi]; NaN maps to lo.
int TruncClamp(float v, int lo, int hi) {
  if (!(v >= static_cast<float>(lo))) return lo;
  if (v >= static_cast<float>(hi)) return hi;
  return static_cast<int>(v);
}

void QuantQ8_0(const float* x, uint8_t* b) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  StoreU16(b, Fp32ToFp16(d));
  for (int j = 0; j < 32; ++j) {
    const float r = std::round(x[j] * id);  // half away from zero, like roundf
    const int q = std::isnan(r) ? 0 : static_cast<int>(std::clamp(r, -128.0f, 127.0f));
    b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(q));
  }
}

void QuantQ4_0(const float* x, uint8_t* b) {
  // The scale maps the value of largest magnitude, with its sign, to -8 so
  // that the full range -8..7 is used.
  float amax = 0.0f;
  float max = 0.0f;
  for (int j = 0; j < 32; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  const float d = max / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  StoreU16(b, Fp32ToFp16(d));
  for (int j = 0; j < 16; ++j) {
    const int q0 = TruncClamp(x[j] * id + 8.5f, 0, 15);
    const int q1 = TruncClamp(x[j + 16] * id + 8.5f, 0, 15);
    b[2 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

void QuantQ4_1(const float* x, uint8_t* b) {
  float min = std::numeric_limits<float>::max();
  float max = -std::numeric_limits<float>::max();
  for (int j = 0; j < 32; ++j) {
    if (x[j] < min) min = x[j];
    if (x[j] > max) max = x[j];
  }
  const float d = (max - min) / 15.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  StoreU16(b, Fp32ToFp16(d));
  StoreU16(b + 2, Fp32ToFp16(min));
  for (int j = 0; j < 16; ++j) {
    const int q0 = TruncClamp((x[j] - min) * id + 0.5f, 0, 15);
    const int q1 = TruncClamp((x[j + 16] - min) * id + 0.5f, 0, 15);
    b[4 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

}  // namespace

absl::Status DequantizeRow(GgmlType t, const void* src, float* dst, int64_t n) {
  if (!IsSupportedType(t)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DequantizeRow: unsupported type ", Sv(TypeName(t)), " (", static_cast<uint32_t>(t), ")"));
  }
  if (absl::Status s = CheckCount("DequantizeRow", t, n); !s.ok()) return s;
  const auto* in = static_cast<const uint8_t*>(src);
  switch (t) {
    case GgmlType::kF32:
      if (n > 0) std::memcpy(dst, in, static_cast<size_t>(n) * sizeof(float));
      return absl::OkStatus();
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Fp16ToFp32(LoadU16(in + 2 * i));
      return absl::OkStatus();
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToFp32(LoadU16(in + 2 * i));
      return absl::OkStatus();
    default:
      break;
  }
  const BlockFn fn = BlockDequantizer(t);
  const int64_t block = BlockElements(t);
  const size_t bytes = BlockBytes(t);
  for (int64_t i = 0; i < n / block; ++i) {
    fn(in + static_cast<size_t>(i) * bytes, dst + i * block);
  }
  return absl::OkStatus();
}

absl::Status QuantizeRow(GgmlType t, const float* src, void* dst, int64_t n) {
  void (*fn)(const float*, uint8_t*) = nullptr;
  auto* out = static_cast<uint8_t*>(dst);
  switch (t) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("QuantizeRow: cannot quantise to type ",
                                                     Sv(TypeName(t)), " (",
                                                     static_cast<uint32_t>(t), ")"));
  }
  if (absl::Status s = CheckCount("QuantizeRow", t, n); !s.ok()) return s;
  switch (t) {
    case GgmlType::kF32:
      if (n > 0) std::memcpy(out, src, static_cast<size_t>(n) * sizeof(float));
      return absl::OkStatus();
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) StoreU16(out + 2 * i, Fp32ToFp16(src[i]));
      return absl::OkStatus();
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) StoreU16(out + 2 * i, Fp32ToBf16(src[i]));
      return absl::OkStatus();
    case GgmlType::kQ8_0:
      fn = QuantQ8_0;
      break;
    case GgmlType::kQ4_0:
      fn = QuantQ4_0;
      break;
    default:  // kQ4_1, the only type left
      fn = QuantQ4_1;
      break;
  }
  const size_t bytes = BlockBytes(t);
  for (int64_t i = 0; i < n / 32; ++i) fn(src + 32 * i, out + static_cast<size_t>(i) * bytes);
  return absl::OkStatus();
}

}  // namespace kvserve::gguf
