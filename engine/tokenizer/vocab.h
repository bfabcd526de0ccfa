// A tokenizer vocabulary as stored in GGUF metadata (tokenizer.ggml.*).
//
// Thread-safety: plain value type.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvserve::gguf {
class GgufFile;
}

namespace kvserve::tokenizer {

// Values of tokenizer.ggml.token_type.
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct Vocab {
  std::vector<std::string> tokens;   // by id, in the model's alphabet (byte-level for gpt2)
  std::vector<int32_t> token_types;  // TokenType values, same size as tokens (or empty: all normal)
  std::vector<std::string> merges;   // "left right", rank-ordered
  std::string model = "gpt2";        // tokenizer.ggml.model
  std::string pre = "gpt-2";         // tokenizer.ggml.pre
  int32_t bos_id = -1;               // -1 when absent
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  bool add_bos = false;       // prepend bos_id when encoding with special tokens
  bool add_eos = false;       // append eos_id likewise
  std::string chat_template;  // tokenizer.chat_template (Jinja source), may be empty
  // End-of-turn ids besides eos_id (e.g. <|im_end|>, <|eot_id|>, <|end|>);
  // generation stops at any of them.
  std::vector<int32_t> eot_ids;
};

// Reads tokenizer.ggml.* and tokenizer.chat_template. Required: model,
// tokens; merges for model "gpt2". Missing optional ids are -1. As llama.cpp
// does when loading, tokens whose text marks an end of turn ("<|im_end|>",
// "<|eot_id|>", "<|endoftext|>", ...) are listed in eot_ids and forced to
// type CONTROL; add_bos defaults to true for the llama-3 pre-tokenizer.
// Errors name the key and the problem.
absl::StatusOr<Vocab> VocabFromGguf(const gguf::GgufFile& file);

// Applies the end-of-turn conventions above to `vocab` (exposed for tests
// and for vocabularies not read from GGUF): appends ids of known
// end-of-turn texts to eot_ids (excluding eos_id, without duplicates) and
// marks them CONTROL.
void AddEndOfTurnTokens(Vocab* vocab);

}  // namespace kvserve::tokenizer
