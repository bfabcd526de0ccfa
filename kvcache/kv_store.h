// The forward pass's view of a KV cache: where the keys and values of each
// sequence's past tokens live, layer by layer.
//
// Keys are stored after RoPE, so a cached position never needs re-rotating,
// and positions stay absolute when some are evicted. Full-precision storage
// is f16; a compressing store (PagedKvCache) may also hand out quantized
// spans (kv_quant.h) and leave evicted positions out. Keys are channel-major within a
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

#include "kvcache/kv_tier.h"

namespace kvserve::kvcache {

struct KvShape {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int row_width() const { return n_kv_heads * head_dim; }
};

// A run of consecutive cached positions [pos0, pos0 + n) of one sequence in
// one layer. Non-owning pointers, valid until the next Write to that
// sequence or a change of its blocks. An f16 span (tier kF16) has:
//   k: f16 [n_kv_heads * head_dim][k_stride]; key channel c of head h at
//      position pos0 + j is k[(h * head_dim + c) * k_stride + j].
//      k_stride >= RoundUp(n, kKvSpanAlign), and those padding positions are
//      readable (their values are ignored), so kernels can load whole
//      vectors of positions.
//   v: f16 [n][row_width]; head h of position pos0 + j at
//      v[j * row_width + h * head_dim].
inline constexpr int kKvSpanAlign = 16;
// A quantized span (kInt8/kInt4/kInt2) has k = v = nullptr and `packed`
// pointing at one unit in the kv_quant.h layout with k_stride positions
// (the block size); DequantizeKvHead turns a head of it into the f16
// layouts above. `block` numbers the span's block within its sequence (for
// per-block attention scores), or is -1 for a store without blocks.
struct KvSpan {
  int32_t pos0 = 0;
  int32_t n = 0;
  const uint16_t* k = nullptr;
  int32_t k_stride = 0;
  const uint16_t* v = nullptr;
  KvTier tier = KvTier::kF16;
  const uint8_t* packed = nullptr;
  int32_t block = -1;
};

// Receives, from the attention kernel, how much attention each cached block
// got. For one forward pass, per (sequence, layer, block) and per KV head
// and query tile: `mass` is the softmax weight that the block's positions
// received, summed over the observed query rows and the query heads sharing
// the KV head; `n_queries` counts the (row, head) pairs that could see the
// block (rows at or after its first position). Called on the thread that
// runs the forward pass, after each layer's attention, never concurrently.
class AttentionMassSink {
 public:
  virtual ~AttentionMassSink() = default;
  virtual void OnBlockMass(int seq, int layer, int block, double mass, double n_queries) = 0;
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
  // `layer`, in increasing position order; evicted positions are covered by
  // no span.
  virtual void Read(int seq, int layer, int end, std::vector<KvSpan>* spans) const = 0;
};

}  // namespace kvserve::kvcache
