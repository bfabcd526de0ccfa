// MatMul throughput on SmolLM2-135M shapes (n_in x n_out), for Q4_1 (all
// transformer matrices of the Q4_1 model) and Q8_0 (its tied embedding /
// output matrix), at m = 1 (decode), 2 and 4 (small batches), 8 and 512
// (prefill), with 1 and 2 threads. Reports GFLOP/s (2 m n_in n_out per call)
// and GB/s of weights read. Both count the activation quantisation.
//
// When CMake finds the llama.cpp peer build (bench/build_llamacpp.sh), the
// same cases also run through ggml_mul_mat (BM_Ggml/...) with a persistent
// ggml thread pool, which is what llama.cpp's CPU backend does per matmul.
//
//   build-*/bench/matmul_bench --benchmark_filter='Q4_1/n_in:576/n_out:1536/'
//   KVSERVE_MATMUL_ISA=avx2 build-*/bench/matmul_bench   (force a path)
// On a shared machine compare CPU time for 1 thread; real time is what the
// counters use.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/fp16.h"
#include "common/thread_pool.h"
#include "engine/kernels/matmul.h"

#ifdef KVSERVE_BENCH_GGML
#include "ggml-cpu.h"
#include "ggml.h"
#endif

namespace kvserve::kernels {
namespace {

using gguf::GgmlType;

// Random but well-formed blocks: the kernels' speed does not depend on the
// values, only on the encoding.
std::vector<uint8_t> RandomWeights(GgmlType type, int64_t n_in, int64_t n_out, size_t* row_bytes) {
  const int64_t nb = n_in / 32;
  const size_t bb = type == GgmlType::kQ4_1 ? 20 : 34;
  *row_bytes = nb * bb;
  std::vector<uint8_t> data(*row_bytes * n_out);
  std::mt19937 rng(42);
  for (auto& v : data) v = static_cast<uint8_t>(rng());
  const uint16_t d = Fp32ToFp16(0.01f);
  const uint16_t mn = Fp32ToFp16(-0.07f);
  for (int64_t r = 0; r < n_out; ++r) {
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* blk = data.data() + r * *row_bytes + b * bb;
      std::memcpy(blk, &d, 2);
      if (type == GgmlType::kQ4_1) std::memcpy(blk + 2, &mn, 2);
    }
  }
  return data;
}

ThreadPool* Pool(int threads) {
  static std::unique_ptr<ThreadPool> pools[3];
  if (!pools[threads]) pools[threads] = std::make_unique<ThreadPool>(threads);
  return pools[threads].get();
}

void BM_MatMul(benchmark::State& state, GgmlType type) {
  const int64_t n_in = state.range(0);
  const int64_t n_out = state.range(1);
  const int64_t m = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  WeightView w;
  w.type = type;
  w.n_in = n_in;
  w.n_out = n_out;
  std::vector<uint8_t> data = RandomWeights(type, n_in, n_out, &w.row_bytes);
  w.data = data.data();
  std::vector<float> x(m * n_in);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : x) v = nd(rng);
  std::vector<float> y(m * n_out);
  MatMulScratch scratch;
  ThreadPool* pool = Pool(threads);
  for (auto _ : state) {
    MatMul(w, x.data(), m, y.data(), pool, &scratch);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2e-9 * m * n_in * n_out, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] =
      benchmark::Counter(1e-9 * data.size(), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(MatMulIsa());
}

void Shapes(benchmark::internal::Benchmark* b) {
  const int64_t shapes[][2] = {{576, 576}, {576, 1536}, {1536, 576}, {576, 49152}};
  for (const auto& s : shapes) {
    for (int64_t m : {1, 2, 4, 8, 512}) {
      for (int64_t t : {1, 2}) b->Args({s[0], s[1], m, t});
    }
  }
  b->ArgNames({"n_in", "n_out", "m", "threads"});
  b->UseRealTime();
}

BENCHMARK_CAPTURE(BM_MatMul, Q4_1, GgmlType::kQ4_1)->Apply(Shapes);
BENCHMARK_CAPTURE(BM_MatMul, Q8_0, GgmlType::kQ8_0)->Apply(Shapes);

#ifdef KVSERVE_BENCH_GGML
// The same product through ggml: W [n_out rows of n_in] times x [m rows].
void BM_Ggml(benchmark::State& state, ggml_type type) {
  const int64_t n_in = state.range(0);
  const int64_t n_out = state.range(1);
  const int64_t m = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  const size_t w_bytes = ggml_row_size(type, n_in) * n_out;
  ggml_init_params params = {};
  params.mem_size = w_bytes + (m * n_in + m * n_out) * sizeof(float) + (16 << 20);
  ggml_context* ctx = ggml_init(params);
  ggml_tensor* w = ggml_new_tensor_2d(ctx, type, n_in, n_out);
  ggml_tensor* x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_in, m);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> src(n_in * n_out);
  for (auto& v : src) v = 0.02f * nd(rng);
  ggml_quantize_chunk(type, src.data(), w->data, 0, n_out, n_in, nullptr);
  for (int64_t i = 0; i < m * n_in; ++i) static_cast<float*>(x->data)[i] = nd(rng);
  ggml_cgraph* graph = ggml_new_graph(ctx);
  ggml_build_forward_expand(graph, ggml_mul_mat(ctx, w, x));
  ggml_threadpool_params tp_params = ggml_threadpool_params_default(threads);
  ggml_threadpool* tp = ggml_threadpool_new(&tp_params);
  ggml_cplan plan = ggml_graph_plan(graph, threads, tp);
  std::vector<uint8_t> work(plan.work_size + 64);
  plan.work_data = work.data();
  for (auto _ : state) {
    ggml_graph_compute(graph, &plan);
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2e-9 * m * n_in * n_out, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] =
      benchmark::Counter(1e-9 * w_bytes, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("ggml");
  ggml_threadpool_free(tp);
  ggml_free(ctx);
}

BENCHMARK_CAPTURE(BM_Ggml, Q4_1, GGML_TYPE_Q4_1)->Apply(Shapes);
BENCHMARK_CAPTURE(BM_Ggml, Q8_0, GGML_TYPE_Q8_0)->Apply(Shapes);
#endif

}  // namespace
}  // namespace kvserve::kernels

int main(int argc, char** argv) {
  if (const char* isa = std::getenv("KVSERVE_MATMUL_ISA")) {
    if (!kvserve::kernels::MatMulForceIsaForTesting(isa)) {
      std::fprintf(stderr, "matmul_bench: ISA %s not available\n", isa);
      return 1;
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
