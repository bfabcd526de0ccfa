// Tests for MatMul (engine/kernels/matmul.h) on every instruction-set path
// this CPU can run:
//  - activation quantisation matches the llama.cpp x86 semantics exactly;
//  - results match a double-precision reference on the dequantised weights
//    and the quantised activations tightly, and on the plain f32
//    activations within the error that activation quantisation allows;
//  - every SIMD path is bit-identical to the scalar path (the numeric
//    contract in matmul_internal.h makes that possible);
//  - row invariance: row i of an m-row product is bit-identical to the
//    product of row i alone, for several m and thread counts.
// The test has its own weight quantisers and dequantisers so that it does
// not share code with what it checks.
#include "engine/kernels/matmul.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/fp16.h"
#include "common/thread_pool.h"
#include "engine/gguf/dequantize.h"
#include "engine/gguf/ggml_type.h"
#include "engine/kernels/blocks.h"
#include "engine/kernels/matmul_internal.h"
#include "engine/kernels/quantize_activations.h"

namespace kvserve::kernels {
namespace {

using gguf::GgmlType;

constexpr GgmlType kAllTypes[] = {GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ8_0,
                                  GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16};

bool IsQuant(GgmlType t) {
  return t == GgmlType::kQ4_0 || t == GgmlType::kQ4_1 || t == GgmlType::kQ8_0;
}

const char* Name(GgmlType t) {
  switch (t) {
    case GgmlType::kQ4_0:
      return "Q4_0";
    case GgmlType::kQ4_1:
      return "Q4_1";
    case GgmlType::kQ8_0:
      return "Q8_0";
    case GgmlType::kF32:
      return "F32";
    case GgmlType::kF16:
      return "F16";
    default:
      return "BF16";
  }
}

// The paths this CPU can run; "scalar" first.
std::vector<std::string> Isas() {
  std::vector<std::string> out;
  for (const char* isa : {"scalar", "avx2", "avx512vnni"}) {
    if (MatMulForceIsaForTesting(isa)) out.push_back(isa);
  }
  MatMulForceIsaForTesting(nullptr);
  return out;
}

// Restores the automatic path when a test ends.
class IsaGuard {
 public:
  explicit IsaGuard(const std::string& isa) {
    EXPECT_TRUE(MatMulForceIsaForTesting(isa.c_str())) << isa;
  }
  ~IsaGuard() { MatMulForceIsaForTesting(nullptr); }
};

// ---------------------------------------------------------------------------
// Test-side encoders (llama.cpp reference quantiser rounding) and decoders.

uint16_t H(float f) { return Fp32ToFp16(f); }
float F(uint16_t h) { return Fp16ToFp32(h); }

void EncodeQ8_0(const float* x, uint8_t* out) {
  float amax = 0;
  for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(x[k]));
  const float d = amax / 127;
  const float id = d != 0 ? 1 / d : 0;
  const uint16_t hd = H(d);
  std::memcpy(out, &hd, 2);
  for (int k = 0; k < 32; ++k)
    out[2 + k] = static_cast<uint8_t>(static_cast<int8_t>(std::round(x[k] * id)));
}

void EncodeQ4_0(const float* x, uint8_t* out) {
  float amax = 0, max = 0;
  for (int k = 0; k < 32; ++k) {
    if (std::fabs(x[k]) > amax) {
      amax = std::fabs(x[k]);
      max = x[k];
    }
  }
  const float d = max / -8;
  const float id = d != 0 ? 1 / d : 0;
  const uint16_t hd = H(d);
  std::memcpy(out, &hd, 2);
  for (int j = 0; j < 16; ++j) {
    const int lo = std::min(15, static_cast<int>(x[j] * id + 8.5f));
    const int hi = std::min(15, static_cast<int>(x[j + 16] * id + 8.5f));
    out[2 + j] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

void EncodeQ4_1(const float* x, uint8_t* out) {
  float mn = x[0], mx = x[0];
  for (int k = 1; k < 32; ++k) {
    mn = std::min(mn, x[k]);
    mx = std::max(mx, x[k]);
  }
  const float d = (mx - mn) / 15;
  const float id = d != 0 ? 1 / d : 0;
  const uint16_t hd = H(d), hm = H(mn);
  std::memcpy(out, &hd, 2);
  std::memcpy(out + 2, &hm, 2);
  for (int j = 0; j < 16; ++j) {
    const int lo = std::min(15, static_cast<int>((x[j] - mn) * id + 0.5f));
    const int hi = std::min(15, static_cast<int>((x[j + 16] - mn) * id + 0.5f));
    out[4 + j] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

size_t TestBlockBytes(GgmlType t) {
  switch (t) {
    case GgmlType::kQ4_0:
      return 18;
    case GgmlType::kQ4_1:
      return 20;
    case GgmlType::kQ8_0:
      return 34;
    case GgmlType::kF32:
      return 4;
    default:
      return 2;
  }
}
int BlockElems(GgmlType t) { return IsQuant(t) ? 32 : 1; }

// A weight matrix encoded in `type`, rows padded by `pad` bytes, with its
// exact decoded values.
struct Weights {
  GgmlType type;
  int64_t n_in, n_out;
  size_t row_bytes;
  std::vector<uint8_t> data;
  std::vector<double> deq;  // [n_out, n_in]
  // Per row and block (quantised types): integer values, scale and minimum.
  std::vector<int> q;        // [n_out, n_in]
  std::vector<double> d, m;  // [n_out, n_in / 32]

  WeightView View() const {
    WeightView w;
    w.type = type;
    w.n_in = n_in;
    w.n_out = n_out;
    w.data = data.data();
    w.row_bytes = row_bytes;
    return w;
  }
};

Weights MakeWeights(GgmlType type, int64_t n_in, int64_t n_out, uint32_t seed, size_t pad = 0,
                    const std::vector<float>* values = nullptr) {
  Weights w;
  w.type = type;
  w.n_in = n_in;
  w.n_out = n_out;
  const int be = BlockElems(type);
  const size_t bb = TestBlockBytes(type);
  w.row_bytes = n_in / be * bb + pad;
  w.data.assign(w.row_bytes * n_out, 0xEE);
  w.deq.resize(n_in * n_out);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> src(n_in * n_out);
  for (int64_t r = 0; r < n_out; ++r) {
    // Rows of different scale and offset, as in real models.
    const float scale = 0.02f * (1 + r % 7);
    const float shift = 0.01f * static_cast<float>(r % 5) - 0.02f;
    for (int64_t k = 0; k < n_in; ++k) src[r * n_in + k] = shift + scale * nd(rng);
  }
  if (values != nullptr) src = *values;
  if (IsQuant(type)) {
    w.q.resize(n_in * n_out);
    w.d.resize(n_in / 32 * n_out);
    w.m.resize(n_in / 32 * n_out);
  }
  for (int64_t r = 0; r < n_out; ++r) {
    uint8_t* row = w.data.data() + r * w.row_bytes;
    for (int64_t b = 0; b < n_in / be; ++b) {
      const float* x = &src[r * n_in + b * be];
      uint8_t* blk = row + b * bb;
      double* deq = &w.deq[r * n_in + b * be];
      switch (type) {
        case GgmlType::kF32:
          std::memcpy(blk, x, 4);
          deq[0] = x[0];
          break;
        case GgmlType::kF16: {
          const uint16_t h = H(x[0]);
          std::memcpy(blk, &h, 2);
          deq[0] = F(h);
          break;
        }
        case GgmlType::kBF16: {
          const uint16_t h = Fp32ToBf16(x[0]);
          std::memcpy(blk, &h, 2);
          deq[0] = Bf16ToFp32(h);
          break;
        }
        default: {
          if (values == nullptr || type != GgmlType::kQ8_0) {
            if (type == GgmlType::kQ4_0) EncodeQ4_0(x, blk);
            if (type == GgmlType::kQ4_1) EncodeQ4_1(x, blk);
            if (type == GgmlType::kQ8_0) EncodeQ8_0(x, blk);
          }
          uint16_t hd, hm = 0;
          std::memcpy(&hd, blk, 2);
          if (type == GgmlType::kQ4_1) std::memcpy(&hm, blk + 2, 2);
          const size_t qoff = type == GgmlType::kQ4_1 ? 4 : 2;
          const double dd = F(hd), mm = type == GgmlType::kQ4_1 ? F(hm) : 0.0;
          w.d[r * (n_in / 32) + b] = dd;
          w.m[r * (n_in / 32) + b] = mm;
          for (int k = 0; k < 32; ++k) {
            int qv;
            if (type == GgmlType::kQ8_0) {
              qv = static_cast<int8_t>(blk[qoff + k]);
            } else {
              const uint8_t byte = blk[qoff + k % 16];
              qv = k < 16 ? (byte & 15) : (byte >> 4);
              if (type == GgmlType::kQ4_0) qv -= 8;
            }
            w.q[r * n_in + b * 32 + k] = qv;
            deq[k] = dd * qv + mm;
          }
        }
      }
    }
  }
  return w;
}

// Encodes a Q8_0 weight block directly from integers (for extreme values
// the float quantiser never produces, such as -128).
void SetQ8Block(Weights* w, int64_t r, int64_t b, float d, const int8_t* q) {
  uint8_t* blk = w->data.data() + r * w->row_bytes + b * 34;
  const uint16_t hd = H(d);
  std::memcpy(blk, &hd, 2);
  std::memcpy(blk + 2, q, 32);
  for (int k = 0; k < 32; ++k) {
    w->q[r * w->n_in + b * 32 + k] = q[k];
    w->deq[r * w->n_in + b * 32 + k] = static_cast<double>(F(hd)) * q[k];
  }
  w->d[r * (w->n_in / 32) + b] = F(hd);
}

std::vector<float> MakeActivations(int64_t m, int64_t n_in, uint32_t seed) {
  std::vector<float> x(m * n_in);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t k = 0; k < n_in; ++k) {
      // Occasional outliers, as in real hidden states.
      const float v = nd(rng) * (k % 97 == 5 ? 20.0f : 1.0f);
      x[i * n_in + k] = v;
    }
  }
  return x;
}

// The test's own activation quantisation, written from the spec in
// quantize_activations.h.
struct QuantAct {
  std::vector<int> q;        // [n_in]
  std::vector<float> d;      // f16-rounded scale per block
  std::vector<float> d_raw;  // unrounded f32 scale per block
  std::vector<float> s;      // Q8_1 block sum term per block
  std::vector<int> sum;
};

QuantAct QuantizeRef(const float* x, int64_t n_in) {
  QuantAct a;
  for (int64_t b = 0; b < n_in / 32; ++b) {
    float amax = 0;
    for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(x[b * 32 + k]));
    const float d = amax / 127.0f;
    const float id = amax == 0 ? 0.0f : 127.0f / amax;
    int sum = 0;
    for (int k = 0; k < 32; ++k) {
      const float v = x[b * 32 + k] * id;
      // Round half to even, spelled out.
      float r = std::floor(v);
      const float frac = v - r;
      if (frac > 0.5f || (frac == 0.5f && std::fmod(r, 2.0f) != 0)) r += 1;
      a.q.push_back(static_cast<int>(r));
      sum += static_cast<int>(r);
    }
    a.d.push_back(F(H(d)));
    a.d_raw.push_back(d);
    a.s.push_back(F(H(d * static_cast<float>(sum))));
    a.sum.push_back(sum);
  }
  return a;
}

// Double-precision references for output (i, j).
struct Ref {
  double on_quantized;  // dequantised W times quantised x
  double on_float;      // dequantised W times the f32 x
  double scale;         // sum of |terms| (for rounding tolerances)
  double quant_bound;   // bound on |on_quantized - on_float| from x's quantisation
};

Ref Reference(const Weights& w, const float* x, const QuantAct& qa, int64_t j) {
  Ref r{0, 0, 0, 0};
  const double* wr = &w.deq[j * w.n_in];
  for (int64_t k = 0; k < w.n_in; ++k) {
    r.on_float += wr[k] * x[k];
  }
  if (!IsQuant(w.type)) {
    for (int64_t k = 0; k < w.n_in; ++k) r.scale += std::fabs(wr[k] * x[k]);
    r.on_quantized = r.on_float;
    return r;
  }
  const int64_t nb = w.n_in / 32;
  for (int64_t b = 0; b < nb; ++b) {
    long isum = 0;
    double wabs = 0;
    for (int k = 0; k < 32; ++k) {
      isum += static_cast<long>(w.q[j * w.n_in + b * 32 + k]) * qa.q[b * 32 + k];
      wabs += std::fabs(wr[b * 32 + k]);
    }
    const double term = w.d[j * nb + b] * qa.d[b] * static_cast<double>(isum);
    const double mterm = w.type == GgmlType::kQ4_1 ? w.m[j * nb + b] * qa.s[b] : 0.0;
    r.on_quantized += term + mterm;
    r.scale += std::fabs(term) + std::fabs(mterm);
    // |x - dx q| <= d_raw / 2 (rounding of x * id, with slack for id's own
    // rounding) + |q| |d_raw - dx| (f16 rounding of the scale); for Q4_1 the
    // stored s = f16(d_raw sum q) also differs from dx sum q.
    const double dr = qa.d_raw[b], dx = qa.d[b];
    r.quant_bound += wabs * (0.5 * dr * 1.001 + 127.0 * std::fabs(dr - dx));
    if (w.type == GgmlType::kQ4_1) {
      r.quant_bound +=
          std::fabs(w.m[j * nb + b]) * (std::fabs(dr * qa.sum[b]) * std::ldexp(1.0, -10) +
                                        std::fabs(dr - dx) * std::abs(qa.sum[b]));
    }
  }
  return r;
}

// Runs MatMul with a fresh pool of `threads` threads.
std::vector<float> RunMatMul(const Weights& w, const std::vector<float>& x, int64_t m,
                             int threads) {
  std::vector<float> y(m * w.n_out, -1234.5f);
  ThreadPool pool(threads);
  MatMulScratch scratch;
  MatMul(w.View(), x.data(), m, y.data(), &pool, &scratch);
  return y;
}

bool BitEqual(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

struct Shape {
  int64_t n_in, n_out;
};
std::vector<Shape> ShapesFor(GgmlType t) {
  std::vector<Shape> s = {{32, 37}, {576, 45}, {1536, 33}, {576, 16}, {64, 1}};
  if (!IsQuant(t)) {
    s.push_back({37, 5});
    s.push_back({100, 19});
    s.push_back({15, 3});
  }
  return s;
}

// ---------------------------------------------------------------------------

TEST(MatMulTest, SupportsExactlyTheImplementedTypes) {
  for (GgmlType t : kAllTypes) EXPECT_TRUE(MatMulSupports(t)) << Name(t);
  for (GgmlType t : {GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ8_1, GgmlType::kQ4_K,
                     GgmlType::kQ6_K, GgmlType::kI8, GgmlType::kF64}) {
    EXPECT_FALSE(MatMulSupports(t)) << static_cast<int>(t);
  }
}

TEST(MatMulTest, IsaSelection) {
  const std::string automatic = MatMulIsa();
  EXPECT_TRUE(automatic == "scalar" || automatic == "avx2" || automatic == "avx512vnni");
  MatMulForceScalarForTesting(true);
  EXPECT_STREQ(MatMulIsa(), "scalar");
  MatMulForceScalarForTesting(false);
  EXPECT_EQ(MatMulIsa(), automatic);
  EXPECT_FALSE(MatMulForceIsaForTesting("sse9"));
  EXPECT_EQ(MatMulIsa(), automatic);
  // The automatic choice is the best available path.
  EXPECT_EQ(Isas().back(), automatic);
}

TEST(MatMulTest, ActivationQuantisationMatchesSpecOnEveryPath) {
  const int64_t n_in = 1536, m = 7;
  std::vector<float> x = MakeActivations(m, n_in, 11);
  // Values exactly half-way between two integers after scaling, zero blocks
  // and a block with a single non-zero value.
  // amax = 127 makes the multiplier exactly 1, so k - 15.5 are exact halves.
  for (int k = 0; k < 32; ++k) x[k] = static_cast<float>(k) - 15.5f;
  x[5] = 127.0f;
  for (int k = 32; k < 64; ++k) x[k] = 0.0f;
  for (int k = 64; k < 96; ++k) x[k] = k == 70 ? -3.0f : 0.0f;
  for (const std::string& isa : Isas()) {
    SCOPED_TRACE(isa);
    const internal::IsaKernels* k = isa == "scalar" ? &internal::ScalarKernels()
                                    : isa == "avx2" ? internal::Avx2Kernels()
                                                    : internal::Avx512Kernels();
    ASSERT_NE(k, nullptr);
    for (internal::ActKind kind : {internal::ActKind::kQ8_0ForQ4_0, internal::ActKind::kQ8_0ForQ8_0,
                                   internal::ActKind::kQ8_1}) {
      std::vector<internal::ActBlock> act(n_in / 32 * m);
      k->quantize_rows(x.data(), n_in, m, 0, m, kind, act.data());
      for (int64_t i = 0; i < m; ++i) {
        const QuantAct ref = QuantizeRef(&x[i * n_in], n_in);
        for (int64_t b = 0; b < n_in / 32; ++b) {
          const internal::ActBlock& a = act[b * m + i];
          for (int j = 0; j < 32; ++j) ASSERT_EQ(a.qs[j], ref.q[b * 32 + j]) << i << " " << b;
          ASSERT_TRUE(BitEqual(a.d, ref.d[b])) << i << " " << b;
          switch (kind) {
            case internal::ActKind::kQ8_0ForQ4_0:
              ASSERT_EQ(a.aux, -8 * ref.sum[b]);
              break;
            case internal::ActKind::kQ8_0ForQ8_0:
              ASSERT_EQ(a.aux, -128 * ref.sum[b]);
              break;
            case internal::ActKind::kQ8_1:
              ASSERT_TRUE(BitEqual(internal::AuxAsFloat(a.aux), ref.s[b]));
              break;
          }
        }
      }
    }
  }
}

// Every path against the double references.
// m = 1 and m = 5 take different kernels (streaming GEMV, register tiles).
TEST(MatMulTest, MatchesDoubleReference) {
  for (const std::string& isa : Isas()) {
    IsaGuard guard(isa);
    for (GgmlType t : kAllTypes) {
      for (const Shape& s : ShapesFor(t)) {
        for (int64_t m : {1, 5}) {
          SCOPED_TRACE(isa + " " + Name(t) + " " + std::to_string(s.n_in) + "x" +
                       std::to_string(s.n_out) + " m=" + std::to_string(m));
          const Weights w = MakeWeights(t, s.n_in, s.n_out, 1 + s.n_in + s.n_out);
          const std::vector<float> x = MakeActivations(m, s.n_in, 3);
          const std::vector<float> y = RunMatMul(w, x, m, 2);
          for (int64_t i = 0; i < m; ++i) {
            const QuantAct qa = IsQuant(t) ? QuantizeRef(&x[i * s.n_in], s.n_in) : QuantAct{};
            for (int64_t j = 0; j < s.n_out; ++j) {
              const Ref r = Reference(w, &x[i * s.n_in], qa, j);
              const float got = y[i * s.n_out + j];
              // f32 rounding of at most n_in / 16 + 4 sequential additions
              // (float types) or one fma per block (quantised): well inside
              // 1e-5 of the sum of |terms| for n_in <= 1536.
              const double tight = 1e-5 * r.scale + 1e-30;
              ASSERT_NEAR(got, r.on_quantized, tight) << "row " << i << " col " << j;
              ASSERT_NEAR(got, r.on_float, tight + r.quant_bound) << "row " << i << " col " << j;
            }
          }
        }
      }
    }
  }
}

// The quantisation bound must be meaningful, not vacuous: on typical data the
// f32-activation error is well below the output magnitude.
TEST(MatMulTest, QuantisationErrorIsSmallRelativeToOutput) {
  const int64_t n_in = 576, n_out = 64, m = 4;
  for (GgmlType t : {GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ8_0}) {
    SCOPED_TRACE(Name(t));
    const Weights w = MakeWeights(t, n_in, n_out, 5);
    const std::vector<float> x = MakeActivations(m, n_in, 6);
    const std::vector<float> y = RunMatMul(w, x, m, 1);
    double err2 = 0, ref2 = 0;
    for (int64_t i = 0; i < m; ++i) {
      const QuantAct qa = QuantizeRef(&x[i * n_in], n_in);
      for (int64_t j = 0; j < n_out; ++j) {
        const Ref r = Reference(w, &x[i * n_in], qa, j);
        err2 += (y[i * n_out + j] - r.on_float) * (y[i * n_out + j] - r.on_float);
        ref2 += r.on_float * r.on_float;
      }
    }
    // 8-bit activations: relative RMS error of about 1%.
    EXPECT_LT(std::sqrt(err2 / ref2), 0.02);
  }
}

// Extreme encodings: all-15 / all-0 nibbles, Q8_0 values of -128 and 127,
// activations at +-amax. Checks that no SIMD path overflows or saturates.
TEST(MatMulTest, ExtremeValuesAreExact) {
  const int64_t n_in = 256, n_out = 20, m = 3;
  std::vector<float> x(m * n_in);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t k = 0; k < n_in; ++k) x[i * n_in + k] = (k + i) % 3 == 0 ? -1.0f : 1.0f;
  }
  for (GgmlType t : {GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ8_0}) {
    std::vector<float> vals(n_in * n_out);
    for (int64_t r = 0; r < n_out; ++r) {
      for (int64_t k = 0; k < n_in; ++k) {
        // Large positive or negative, constant over stretches so that Q4
        // blocks hit both ends of the nibble range.
        vals[r * n_in + k] =
            ((k / 32 + r) % 2 == 0 ? 1.0f : -1.0f) * ((k + r) % 3 == 0 ? 1.0f : 0.99f);
      }
    }
    Weights w = MakeWeights(t, n_in, n_out, 9, 0, &vals);
    if (t == GgmlType::kQ8_0) {
      for (int64_t r = 0; r < n_out; ++r) {
        for (int64_t b = 0; b < n_in / 32; ++b) {
          int8_t q[32];
          for (int k = 0; k < 32; ++k) q[k] = static_cast<int8_t>((k + r + b) % 2 ? -128 : 127);
          SetQ8Block(&w, r, b, 0.5f, q);
        }
      }
    }
    for (const std::string& isa : Isas()) {
      IsaGuard guard(isa);
      SCOPED_TRACE(isa + " " + Name(t));
      const std::vector<float> y = RunMatMul(w, x, m, 2);
      for (int64_t i = 0; i < m; ++i) {
        const QuantAct qa = QuantizeRef(&x[i * n_in], n_in);
        for (int64_t j = 0; j < n_out; ++j) {
          const Ref r = Reference(w, &x[i * n_in], qa, j);
          ASSERT_NEAR(y[i * n_out + j], r.on_quantized, 1e-5 * r.scale + 1e-30) << i << " " << j;
        }
      }
    }
  }
}

// Every SIMD path computes the same bits as the scalar path.
TEST(MatMulTest, SimdPathsAreBitIdenticalToScalar) {
  const std::vector<std::string> isas = Isas();
  for (GgmlType t : kAllTypes) {
    for (const Shape& s : ShapesFor(t)) {
      for (int64_t m : {1, 5, 17}) {
        SCOPED_TRACE(std::string(Name(t)) + " " + std::to_string(s.n_in) + "x" +
                     std::to_string(s.n_out) + " m=" + std::to_string(m));
        const Weights w = MakeWeights(t, s.n_in, s.n_out, 100 + m);
        const std::vector<float> x = MakeActivations(m, s.n_in, 200 + m);
        std::vector<float> want;
        {
          IsaGuard guard("scalar");
          want = RunMatMul(w, x, m, 1);
        }
        for (size_t p = 1; p < isas.size(); ++p) {
          IsaGuard guard(isas[p]);
          const std::vector<float> got = RunMatMul(w, x, m, 2);
          for (size_t e = 0; e < want.size(); ++e) {
            ASSERT_TRUE(BitEqual(got[e], want[e]))
                << isas[p] << " element " << e << ": " << got[e] << " vs " << want[e];
          }
        }
      }
    }
  }
}

// Row i of an m-row product is bit-identical to row i computed alone, for
// every m, thread count and path.
TEST(MatMulTest, RowInvariance) {
  const int64_t kMaxM = 64;
  for (const std::string& isa : Isas()) {
    IsaGuard guard(isa);
    for (GgmlType t : kAllTypes) {
      for (const Shape& s : ShapesFor(t)) {
        if (isa == "scalar" && s.n_in > 576) continue;  // slow, and trivially row-wise
        SCOPED_TRACE(isa + " " + Name(t) + " " + std::to_string(s.n_in) + "x" +
                     std::to_string(s.n_out));
        const Weights w = MakeWeights(t, s.n_in, s.n_out, 7);
        const std::vector<float> x = MakeActivations(kMaxM, s.n_in, 8);
        // Each row alone, single-threaded.
        std::vector<float> alone(kMaxM * s.n_out);
        for (int64_t i = 0; i < kMaxM; ++i) {
          const std::vector<float> xi(x.begin() + i * s.n_in, x.begin() + (i + 1) * s.n_in);
          const std::vector<float> yi = RunMatMul(w, xi, 1, 1);
          std::copy(yi.begin(), yi.end(), alone.begin() + i * s.n_out);
        }
        for (int64_t m : {1, 3, 4, 5, 17, 64}) {
          for (int threads : {1, 2}) {
            const std::vector<float> xm(x.begin(), x.begin() + m * s.n_in);
            const std::vector<float> y = RunMatMul(w, xm, m, threads);
            for (int64_t e = 0; e < m * s.n_out; ++e) {
              ASSERT_TRUE(BitEqual(y[e], alone[e]))
                  << "m=" << m << " threads=" << threads << " row " << e / s.n_out << " col "
                  << e % s.n_out;
            }
          }
        }
      }
    }
  }
}

// Rows may be further apart than their encoded size; columns split over
// more threads than tiles; a null pool runs inline.
TEST(MatMulTest, PaddedRowsThreadsAndNullPool) {
  for (GgmlType t : kAllTypes) {
    SCOPED_TRACE(Name(t));
    const int64_t n_in = 96, n_out = 50, m = 9;
    const Weights packed = MakeWeights(t, n_in, n_out, 21);
    const Weights padded = MakeWeights(t, n_in, n_out, 21, 24);
    const std::vector<float> x = MakeActivations(m, n_in, 22);
    const std::vector<float> want = RunMatMul(packed, x, m, 1);
    const std::vector<float> got = RunMatMul(padded, x, m, 3);
    std::vector<float> inline_y(m * n_out);
    MatMulScratch scratch;
    MatMul(padded.View(), x.data(), m, inline_y.data(), nullptr, &scratch);
    for (size_t e = 0; e < want.size(); ++e) {
      ASSERT_TRUE(BitEqual(got[e], want[e])) << e;
      ASSERT_TRUE(BitEqual(inline_y[e], want[e])) << e;
    }
  }
}

// Zero activations (amax = 0) give exact zeros, never NaN.
TEST(MatMulTest, ZeroActivations) {
  for (const std::string& isa : Isas()) {
    IsaGuard guard(isa);
    for (GgmlType t : kAllTypes) {
      const Weights w = MakeWeights(t, 64, 20, 3);
      const std::vector<float> x(2 * 64, 0.0f);
      const std::vector<float> y = RunMatMul(w, x, 2, 2);
      for (float v : y) ASSERT_EQ(v, 0.0f) << isa << " " << Name(t);
    }
  }
}

// The scratch is reused across calls of different sizes and types.
TEST(MatMulTest, ScratchReuse) {
  MatMulScratch scratch;
  ThreadPool pool(2);
  for (GgmlType t : {GgmlType::kQ4_1, GgmlType::kQ8_0, GgmlType::kQ4_0}) {
    for (int64_t m : {40, 1, 7}) {
      const Weights w = MakeWeights(t, 128, 24, 4);
      const std::vector<float> x = MakeActivations(m, 128, 5);
      std::vector<float> y(m * 24);
      MatMul(w.View(), x.data(), m, y.data(), &pool, &scratch);
      const std::vector<float> want = RunMatMul(w, x, m, 1);
      for (size_t e = 0; e < want.size(); ++e) ASSERT_TRUE(BitEqual(y[e], want[e]));
    }
  }
}

// The kernels' block layouts (blocks.h) agree with engine/gguf's independent
// implementation: weights written by gguf::QuantizeRow, multiplied on every
// path, match a reference built from gguf::DequantizeRow.
TEST(MatMulTest, AgreesWithGgufCodec) {
  const int64_t n_in = 576, n_out = 23, m = 3;
  const std::vector<float> x = MakeActivations(m, n_in, 31);
  std::mt19937 rng(32);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  for (GgmlType t : kAllTypes) {
    const size_t rb = gguf::RowBytes(t, n_in);
    std::vector<uint8_t> data(rb * n_out);
    std::vector<float> deq(n_in * n_out);
    for (int64_t r = 0; r < n_out; ++r) {
      std::vector<float> src(n_in);
      for (float& v : src) v = nd(rng) + 0.01f * static_cast<float>(r % 3);
      ASSERT_TRUE(gguf::QuantizeRow(t, src.data(), data.data() + r * rb, n_in).ok());
      ASSERT_TRUE(gguf::DequantizeRow(t, data.data() + r * rb, deq.data() + r * n_in, n_in).ok());
    }
    WeightView w;
    w.type = t;
    w.n_in = n_in;
    w.n_out = n_out;
    w.data = data.data();
    w.row_bytes = rb;
    for (const std::string& isa : Isas()) {
      IsaGuard guard(isa);
      SCOPED_TRACE(isa + " " + Name(t));
      std::vector<float> y(m * n_out);
      ThreadPool pool(2);
      MatMulScratch scratch;
      MatMul(w, x.data(), m, y.data(), &pool, &scratch);
      for (int64_t i = 0; i < m; ++i) {
        const float* xi = &x[i * n_in];
        const QuantAct qa = QuantizeRef(xi, n_in);
        for (int64_t j = 0; j < n_out; ++j) {
          const float* wj = &deq[j * n_in];
          double ref = 0, scale = 0, quant_bound = 0;
          for (int64_t k = 0; k < n_in; ++k) {
            ref += static_cast<double>(wj[k]) * xi[k];
            scale += std::fabs(static_cast<double>(wj[k]) * xi[k]);
          }
          if (IsQuant(t)) {
            // As in Reference(): the error that quantising x may cause.
            for (int64_t b = 0; b < n_in / 32; ++b) {
              double wabs = 0;
              for (int k = 0; k < 32; ++k) wabs += std::fabs(wj[b * 32 + k]);
              const double dr = qa.d_raw[b], dx = qa.d[b];
              quant_bound += wabs * (0.5 * dr * 1.001 + 127.0 * std::fabs(dr - dx));
              if (t == GgmlType::kQ4_1) {
                uint16_t hm;
                std::memcpy(&hm, data.data() + j * rb + b * 20 + 2, 2);
                quant_bound +=
                    std::fabs(F(hm)) * (std::fabs(dr * qa.sum[b]) * std::ldexp(1.0, -10) +
                                        std::fabs(dr - dx) * std::abs(qa.sum[b]));
              }
            }
          }
          ASSERT_NEAR(y[i * n_out + j], ref, 1e-5 * scale + quant_bound) << i << " " << j;
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvserve::kernels
