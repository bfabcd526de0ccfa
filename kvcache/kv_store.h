// The forward pass's view of a KV cache: where the keys and values of each
// sequence's past tokens live, layer by layer.
//
// Keys are stored after RoPE, so a cached position never needs re-rotating.
// Storage is f16 (the full-precision tier). Keys are channel-major within a
// span and values token-major, the layouts the two halves of attention read
// with unit stride: scores sweep positions for one channel at a time
// (k[channel][position]), the weighted sum sweeps channels of one position
// (v[position][channel]).
//
// Thread-safety: Write is called by the engine thread only; Read is const and
// may run on many threads at once, provided no Write runs concurrently (the
// forward pass writes a layer's K/V before any thread reads that layer).
#pragma once

#include <cstdint>
#include <vector>

namespace kvserve::kvcache {

struct KvShape {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int row_width() const { return n_kv_heads * head_dim; }
};

// A run of consecutive cached positions [pos0, pos0 + n) of one sequence in
// one layer. Non-owning pointers, valid until the next Write to that
// sequence or a change of its blocks:
//   k: f16 [n_kv_heads * head_dim][k_stride]; key channel c of head h at
//      position pos0 + j is k[(h * head_dim + c) * k_stride + j].
//      k_stride >= RoundUp(n, kKvSpanAlign), and those padding positions are
//      readable (their values are ignored), so kernels can load whole
//      vectors of positions.
//   v: f16 [n][row_width]; head h of position pos0 + j at
//      v[j * row_width + h * head_dim].
inline constexpr int kKvSpanAlign = 16;
struct KvSpan {
  int32_t pos0 = 0;
  int32_t n = 0;
  const uint16_t* k = nullptr;
  int32_t k_stride = 0;
  const uint16_t* v = nullptr;
};

class KvStore {
 public:
  virtual ~KvStore() = default;

  virtual const KvShape& shape() const = 0;

  // Stores K and V of positions [pos, pos + n) of `seq` in `layer`.
  //   k, v: f32 [n, row_width]; rounded to f16.
  // The caller has reserved room for these positions (see the
  // implementation's allocation API); writing outside it is a bug.
  virtual void Write(int seq, int layer, int pos, int n, const float* k, const float* v) = 0;

  // Appends to *spans the spans covering positions [0, end) of `seq` in
  // `layer`, in increasing position order.
  virtual void Read(int seq, int layer, int end, std::vector<KvSpan>* spans) const = 0;
};

}  // namespace kvserve::kvcache
