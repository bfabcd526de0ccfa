#include "tests/engine/cuda/weight_fixtures.h"

#include <random>

#include "common/check.h"
#include "common/fp16.h"
#include "engine/gguf/dequantize.h"

namespace kvserve::testing {
namespace {

float RoundF16(float v) { return Fp16ToFp32(Fp32ToFp16(v)); }

}  // namespace

Matrix RandomMatrix(gguf::GgmlType t, int64_t n_out, int64_t n_in, uint64_t seed, size_t pad) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  Matrix m;
  const size_t row = gguf::RowBytes(t, n_in);
  m.bytes.assign((row + pad) * static_cast<size_t>(n_out), 0);
  std::vector<float> v(static_cast<size_t>(n_in));
  for (int64_t r = 0; r < n_out; ++r) {
    for (float& x : v) x = d(rng);
    KV_CHECK(gguf::QuantizeRow(t, v.data(), &m.bytes[(row + pad) * r], n_in).ok());
  }
  m.view = {t, n_in, n_out, m.bytes.data(), row + pad};
  return m;
}

std::vector<float> RandomRows(int64_t m, int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(m * n));
  for (float& v : x) v = d(rng);
  return x;
}

std::vector<double> F16Reference(const kernels::WeightView& w, const std::vector<float>& x,
                                 int64_t m) {
  std::vector<float> row(static_cast<size_t>(w.n_in));
  std::vector<double> y(static_cast<size_t>(m * w.n_out));
  for (int64_t o = 0; o < w.n_out; ++o) {
    KV_CHECK(gguf::DequantizeRow(w.type, w.data + o * w.row_bytes, row.data(), w.n_in).ok());
    for (int64_t i = 0; i < m; ++i) {
      double acc = 0;
      for (int64_t k = 0; k < w.n_in; ++k) {
        acc += static_cast<double>(RoundF16(row[k])) * RoundF16(x[i * w.n_in + k]);
      }
      y[i * w.n_out + o] = acc;
    }
  }
  return y;
}

}  // namespace kvserve::testing
