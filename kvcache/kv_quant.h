// KIVI-style quantization of one (block, layer) unit of the paged KV cache:
// keys per channel, values per token, with f16 group scales and minimums.
//
// An f16 unit (the kF16 tier) holds, for block_tokens (bt) consecutive
// positions of one layer:
//   k: f16 [row_width][bt], channel c = h * head_dim + i of KV head h at
//      k[c * bt + j] for token j (channel-major, as KvSpan with k_stride bt);
//   v: f16 [bt][row_width], v[j * row_width + c] (token-major).
// Keys have outlier channels with a stable scale across tokens, values do
// not, hence the two grouping directions:
//   - K: each channel's bt values (only the first n_valid tokens count
//     towards its range) form one group;
//   - V: each token's head_dim channels of a head split into groups of
//     g consecutive channels: 64 at int8/int4 and 32 at int2 when head_dim
//     is a multiple, else the largest of 32, 16, 8 that divides it (a
//     head_dim below 8: one group).
// Each group is quantized asymmetrically: scale = (max - min) / (2^bits - 1)
// rounded to f16, min stored exactly as f16, code = round((x - min) / scale)
// clamped to [0, 2^bits - 1], and x' = min + code * scale (f32 arithmetic,
// rounded to f16 once). A constant group has scale 0 and decodes exactly.
//
// Byte layout of a quantized unit (b = bits per code, D = head_dim):
//   n_kv_heads head slices of head_bytes each, head h at h * head_bytes, then
//   zero padding up to a multiple of 64 bytes. Within a head slice:
//     K codes   [D][bt * b / 8]          channel i's codes, token-ordered
//     K params  [D] {f16 scale, f16 min} one pair per channel
//     V codes   [bt][D * b / 8]          token j's codes, channel-ordered
//     V params  [bt][D / g] {f16 scale, f16 min}
//   Codes are a little-endian bit stream: code e of a run sits in byte
//   e * b / 8 at bit (e * b) % 8, so a byte holds 1, 2 or 4 codes, the first
//   in its low bits. Params are little-endian f16, scale first.
//   A head's data is one contiguous slice, so attention (which works per KV
//   head) dequantizes a head touching nothing else; sections start at
//   4-byte offsets (bt is a multiple of 16).
// Tokens at or beyond n_valid store K code 0 (they decode to their
// channel's min) and V scale = min = 0 (they decode to 0): finite, ignored.
//
// Non-finite f16 inputs are not expected (the cache saturates); if present,
// NaN is treated as 0 and +-inf as +-65504. Decoding never produces
// non-finite values: the quantizer shrinks a scale by an f16 ulp where the
// top code would otherwise round beyond the f16 range.
//
// Thread-safety: pure functions; concurrent calls on disjoint outputs are safe.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcache/kv_store.h"
#include "kvcache/kv_tier.h"

namespace kvserve::kvcache {

// Byte offsets and sizes of the layout above for one shape and tier.
struct KvQuantLayout {
  int bits = 0;
  int group = 0;               // V group size g, channels
  int k_code_bytes = 0;        // per channel: bt * bits / 8
  int v_code_bytes = 0;        // per token: head_dim * bits / 8
  size_t k_params_offset = 0;  // within a head slice
  size_t v_codes_offset = 0;   // within a head slice
  size_t v_params_offset = 0;  // within a head slice
  size_t head_bytes = 0;       // one head slice
  size_t unit_bytes = 0;       // n_kv_heads * head_bytes rounded up to 64
};

// The layout of a quantized tier (kInt8/kInt4/kInt2). Aborts on any other
// tier, on block_tokens not a positive multiple of 16, or on a head_dim that
// is not positive, or above 64 and not a multiple of 8.
KvQuantLayout MakeKvQuantLayout(const KvShape& shape, int block_tokens, KvTier tier);

// Bytes of one (block, layer) unit at tier t: kF16 = 2 * 2 * bt * row_width;
// kEvicted = 0; quantized tiers = MakeKvQuantLayout(...).unit_bytes (codes
// plus params, a multiple of 64).
size_t KvUnitBytes(const KvShape& shape, int block_tokens, KvTier tier);

// Quantizes an f16 unit into dst (KvUnitBytes(shape, block_tokens, tier)
// bytes, every byte written). tier must be quantized; 1 <= n_valid <=
// block_tokens is the number of meaningful leading tokens.
//   k: f16 [row_width][block_tokens], v: f16 [block_tokens][row_width].
void QuantizeKvUnit(const KvShape& shape, int block_tokens, KvTier tier, int n_valid,
                    const uint16_t* k, const uint16_t* v, uint8_t* dst);

// Dequantizes KV head `head` of a quantized unit into the f16 tier's layouts
// restricted to that head (all block_tokens tokens written, finite):
//   k_out: f16 [head_dim][block_tokens], v_out: f16 [block_tokens][head_dim].
// The attention hot path: uses AVX-512 or AVX2+F16C where the CPU has them,
// with results bit-identical to the scalar code.
void DequantizeKvHead(const KvShape& shape, int block_tokens, KvTier tier, const uint8_t* src,
                      int head, uint16_t* k_out, uint16_t* v_out);

// All heads into full-unit f16 layouts: k [row_width][block_tokens],
// v [block_tokens][row_width]. For tests and copy paths.
void DequantizeKvUnit(const KvShape& shape, int block_tokens, KvTier tier, const uint8_t* src,
                      uint16_t* k, uint16_t* v);

// Instruction sets of the kernels, exposed so tests can compare them.
enum class KvQuantIsa { kScalar, kAvx2, kAvx512 };

// Whether `isa` is compiled in, supported by this CPU and usable for
// head_dim (AVX2 needs head_dim % 8 == 0, AVX-512 head_dim % 16 == 0).
bool KvQuantIsaUsable(KvQuantIsa isa, int head_dim);

// DequantizeKvHead with a given instruction set; `isa` must be usable.
void DequantizeKvHeadWithIsa(KvQuantIsa isa, const KvShape& shape, int block_tokens, KvTier tier,
                             const uint8_t* src, int head, uint16_t* k_out, uint16_t* v_out);

// QuantizeKvUnit with a given instruction set (kAvx512 runs the AVX2 code);
// every usable isa writes identical bytes.
void QuantizeKvUnitWithIsa(KvQuantIsa isa, const KvShape& shape, int block_tokens, KvTier tier,
                           int n_valid, const uint16_t* k, const uint16_t* v, uint8_t* dst);

}  // namespace kvserve::kvcache
