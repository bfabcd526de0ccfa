// MatMul: picks the instruction-set path once, quantises the activations once
// per call into the scratch, and splits the output columns (weight rows) over
// the pool's threads in contiguous ranges. The reduction dimension is never
// split, so each output element is computed by one thread with one fixed
// sequence of operations (matmul_internal.h), whatever m or the thread count.
#include "engine/kernels/matmul.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "common/check.h"
#include "engine/kernels/blocks.h"
#include "engine/kernels/matmul_internal.h"

namespace kvserve::kernels {
namespace {

using internal::ActBlock;
using internal::IsaKernels;

const IsaKernels& AutoKernels() {
  static const IsaKernels* const chosen = [] {
    if (const IsaKernels* k = internal::Avx512Kernels()) return k;
    if (const IsaKernels* k = internal::Avx2Kernels()) return k;
    return &internal::ScalarKernels();
  }();
  return *chosen;
}

// A forced path for tests, or nullptr for the automatic one.
std::atomic<const IsaKernels*> g_forced{nullptr};

const IsaKernels& ActiveKernels() {
  const IsaKernels* forced = g_forced.load(std::memory_order_relaxed);
  return forced != nullptr ? *forced : AutoKernels();
}

// Output columns per work unit: the SIMD kernels' tile width, so that no
// tile straddles two threads (not needed for correctness, only speed).
constexpr int64_t kColumnGrain = 16;

void ParallelFor(ThreadPool* pool, int64_t n, int64_t grain,
                 const std::function<void(int64_t, int64_t)>& fn) {
  if (pool == nullptr) {
    if (n > 0) fn(0, n);
    return;
  }
  pool->ParallelFor(n, grain, fn);
}

}  // namespace

bool MatMulSupports(gguf::GgmlType type) {
  switch (type) {
    case gguf::GgmlType::kF32:
    case gguf::GgmlType::kF16:
    case gguf::GgmlType::kBF16:
    case gguf::GgmlType::kQ4_0:
    case gguf::GgmlType::kQ4_1:
    case gguf::GgmlType::kQ8_0:
      return true;
    default:
      return false;
  }
}

void MatMul(const WeightView& w, const float* x, int64_t m, float* y, ThreadPool* pool,
            MatMulScratch* scratch) {
  KV_CHECK_MSG(MatMulSupports(w.type), "MatMul: unsupported weight type");
  KV_CHECK(w.n_in > 0 && w.n_out >= 0 && m >= 0);
  KV_CHECK(w.data != nullptr || w.n_out == 0);
  if (m == 0 || w.n_out == 0) return;
  const IsaKernels& k = ActiveKernels();

  if (!internal::IsQuantizedWeight(w.type)) {
    KV_CHECK_GE(w.row_bytes, internal::WeightRowBytes(w.type, w.n_in));
    ParallelFor(pool, w.n_out, kColumnGrain,
                [&](int64_t c0, int64_t c1) { k.matmul_f(w, x, m, c0, c1, y); });
    return;
  }

  KV_CHECK_MSG(w.n_in % internal::kQK == 0, "MatMul: n_in must be a multiple of 32");
  KV_CHECK_GE(w.row_bytes, internal::WeightRowBytes(w.type, w.n_in));
  // The SIMD kernels gather with 32-bit offsets of up to 16 rows.
  KV_CHECK_LT(w.row_bytes, size_t{1} << 26);
  KV_CHECK(scratch != nullptr);
  const int64_t nb = w.n_in / internal::kQK;
  const size_t act_bytes = static_cast<size_t>(nb * m) * sizeof(ActBlock);
  constexpr size_t kAlign = 64;
  if (scratch->bytes.size() < act_bytes + kAlign) scratch->bytes.resize(act_bytes + kAlign);
  const uintptr_t raw = reinterpret_cast<uintptr_t>(scratch->bytes.data());
  auto* act = reinterpret_cast<ActBlock*>((raw + kAlign - 1) & ~uintptr_t{kAlign - 1});

  const internal::ActKind kind = internal::ActKindFor(w.type);
  // Activation rows are independent, so quantising them in parallel keeps
  // every byte identical to a serial pass.
  ParallelFor(pool, m, 8,
              [&](int64_t r0, int64_t r1) { k.quantize_rows(x, w.n_in, m, r0, r1, kind, act); });
  ParallelFor(pool, w.n_out, kColumnGrain,
              [&](int64_t c0, int64_t c1) { k.matmul_q(w, act, m, c0, c1, y); });
}

const char* MatMulIsa() { return ActiveKernels().name; }

void MatMulForceScalarForTesting(bool force) {
  g_forced.store(force ? &internal::ScalarKernels() : nullptr);
}

bool MatMulForceIsaForTesting(const char* isa) {
  if (isa == nullptr) {
    g_forced.store(nullptr);
    return true;
  }
  const IsaKernels* k = nullptr;
  if (std::strcmp(isa, "scalar") == 0) {
    k = &internal::ScalarKernels();
  } else if (std::strcmp(isa, "avx2") == 0) {
    k = internal::Avx2Kernels();
  } else if (std::strcmp(isa, "avx512vnni") == 0) {
    k = internal::Avx512Kernels();
  }
  if (k == nullptr) return false;
  g_forced.store(k);
  return true;
}

}  // namespace kvserve::kernels
