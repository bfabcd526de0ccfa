// The scalar reference path: the numeric contract of matmul_internal.h
// written as directly as possible. Slow; used where no SIMD path exists and
// by the tests as the ground truth for the SIMD paths.
#include <cmath>
#include <cstring>

#include "common/fp16.h"
#include "engine/kernels/matmul_internal.h"
#include "engine/kernels/quantize_activations.h"

namespace kvserve::kernels::internal {
namespace {

using gguf::GgmlType;

// Integer dot product of one weight block with one activation block, plus the
// weight block's scale (dw) and minimum (mw, Q4_1 only).
int32_t BlockDot(GgmlType type, const uint8_t* wb, const ActBlock& a, float* dw, float* mw) {
  int32_t sum = 0;
  switch (type) {
    case GgmlType::kQ4_0: {
      BlockQ4_0 blk;
      std::memcpy(&blk, wb, sizeof blk);
      for (int j = 0; j < kQK / 2; ++j) {
        sum += ((blk.qs[j] & 0x0F) - 8) * a.qs[j];
        sum += ((blk.qs[j] >> 4) - 8) * a.qs[j + kQK / 2];
      }
      *dw = Fp16ToFp32(blk.d);
      *mw = 0.0f;
      break;
    }
    case GgmlType::kQ4_1: {
      BlockQ4_1 blk;
      std::memcpy(&blk, wb, sizeof blk);
      for (int j = 0; j < kQK / 2; ++j) {
        sum += (blk.qs[j] & 0x0F) * a.qs[j];
        sum += (blk.qs[j] >> 4) * a.qs[j + kQK / 2];
      }
      *dw = Fp16ToFp32(blk.d);
      *mw = Fp16ToFp32(blk.m);
      break;
    }
    default: {  // kQ8_0
      BlockQ8_0 blk;
      std::memcpy(&blk, wb, sizeof blk);
      for (int j = 0; j < kQK; ++j) sum += blk.qs[j] * a.qs[j];
      *dw = Fp16ToFp32(blk.d);
      *mw = 0.0f;
      break;
    }
  }
  return sum;
}

void MatMulQScalar(const WeightView& w, const ActBlock* act, int64_t m, int64_t c0, int64_t c1,
                   float* y) {
  const int64_t nb = w.n_in / kQK;
  const size_t bb = WeightRowBytes(w.type, kQK);
  const bool has_min = w.type == GgmlType::kQ4_1;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = c0; j < c1; ++j) {
      const uint8_t* row = w.data + j * w.row_bytes;
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const ActBlock& a = act[b * m + i];
        float dw, mw;
        const int32_t isum = BlockDot(w.type, row + b * bb, a, &dw, &mw);
        acc = std::fma(static_cast<float>(isum), dw * a.d, acc);
        if (has_min) acc = std::fma(mw, AuxAsFloat(a.aux), acc);
      }
      y[i * w.n_out + j] = acc;
    }
  }
}

float LoadWeight(GgmlType type, const uint8_t* row, int64_t k) {
  switch (type) {
    case GgmlType::kF32: {
      float v;
      std::memcpy(&v, row + 4 * k, 4);
      return v;
    }
    case GgmlType::kF16: {
      uint16_t h;
      std::memcpy(&h, row + 2 * k, 2);
      return Fp16ToFp32(h);
    }
    default: {  // kBF16
      uint16_t h;
      std::memcpy(&h, row + 2 * k, 2);
      return Bf16ToFp32(h);
    }
  }
}

void MatMulFScalar(const WeightView& w, const float* x, int64_t m, int64_t c0, int64_t c1,
                   float* y) {
  const int64_t n = w.n_in;
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x + i * n;
    for (int64_t j = c0; j < c1; ++j) {
      const uint8_t* row = w.data + j * w.row_bytes;
      float lanes[16] = {};
      for (int64_t k = 0; k < n; ++k) {
        lanes[k % 16] = std::fma(LoadWeight(w.type, row, k), xr[k], lanes[k % 16]);
      }
      y[i * w.n_out + j] = ReduceLanes16(lanes);
    }
  }
}

constexpr IsaKernels kScalar = {"scalar", &QuantizeActRowsScalar, &MatMulQScalar, &MatMulFScalar};

}  // namespace

const IsaKernels& ScalarKernels() { return kScalar; }

}  // namespace kvserve::kernels::internal
