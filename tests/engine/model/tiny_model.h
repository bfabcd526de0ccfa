// Writes small random Llama GGUF files for tests that need a real model file
// but not real weights, and keeps the f32 weights for reference math.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/gguf/ggml_type.h"

namespace kvserve::testing {

struct TinyLlamaSpec {
  int n_layers = 2;
  int n_embd = 64;
  int n_head = 4;
  int n_kv_head = 2;
  int n_ff = 96;
  int n_vocab = 64;
  int n_ctx = 256;
  float rope_base = 10000.0f;
  gguf::GgmlType matrix_type = gguf::GgmlType::kF32;  // for the 2-D weights
  bool tied_output = true;
  uint64_t seed = 1;
};

// The weights as written, in f32 after the round trip through matrix_type
// (so reference math uses exactly what the file holds). Matrices are
// [n_out rows][n_in], keyed by GGUF tensor name.
struct TinyLlamaWeights {
  std::map<std::string, std::vector<float>> tensors;
};

// Writes the model to `path`; the tokenizer is a byte-level vocabulary of
// n_vocab tokens without merges (enough for Tokenizer::FromGguf).
absl::Status WriteTinyLlama(const std::string& path, const TinyLlamaSpec& spec,
                            TinyLlamaWeights* weights);

}  // namespace kvserve::testing
