// Conversion between GGML block formats and f32.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "engine/gguf/ggml_type.h"

namespace kvserve::gguf {

// Dequantises n values of type t from src into dst. n must be a multiple of
// BlockElements(t); InvalidArgument for unsupported types or bad n.
absl::Status DequantizeRow(GgmlType t, const void* src, float* dst, int64_t n);

// Quantises n f32 values into type t (F32, F16, BF16, Q8_0, Q4_0, Q4_1), with
// the rounding llama.cpp's reference quantisers use. Used to write test
// models; InvalidArgument for other types.
absl::Status QuantizeRow(GgmlType t, const float* src, void* dst, int64_t n);

}  // namespace kvserve::gguf
