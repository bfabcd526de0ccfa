#include "engine/tokenizer/vocab.h"

#include <algorithm>
#include <array>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/gguf/gguf_file.h"
#include "engine/tokenizer/string_view_compat.h"
#include "engine/tokenizer/tokenizer.h"

namespace kvserve::tokenizer {
namespace {

// Token texts that end a turn in common chat formats; llama.cpp recognises
// them by text because converters do not record them consistently.
constexpr std::array<std::string_view, 12> kEndOfTurnTexts = {
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|return|>",
    "<end_of_utterance>",
    "<｜end▁of▁sentence｜>",
};

absl::Status Annotate(const absl::Status& s, std::string_view key) {
  return absl::Status(s.code(),
                      absl::StrCat("tokenizer metadata '", AbslSv(key), "': ", s.message()));
}

// Reads an optional token id; absent -> -1.
absl::Status ReadOptionalId(const gguf::GgufFile& file, std::string_view key, int32_t* id) {
  if (!file.Has(key)) {
    *id = -1;
    return absl::OkStatus();
  }
  absl::StatusOr<uint64_t> v = file.GetUint(key);
  if (!v.ok()) return Annotate(v.status(), key);
  if (*v > static_cast<uint64_t>(INT32_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer metadata '", AbslSv(key), "' = ", *v, " is not a valid token id"));
  }
  *id = static_cast<int32_t>(*v);
  return absl::OkStatus();
}

absl::Status ReadOptionalBool(const gguf::GgufFile& file, std::string_view key, bool* value) {
  if (!file.Has(key)) return absl::OkStatus();
  absl::StatusOr<bool> v = file.GetBool(key);
  if (!v.ok()) return Annotate(v.status(), key);
  *value = *v;
  return absl::OkStatus();
}

}  // namespace

void AddEndOfTurnTokens(Vocab* vocab) {
  if (vocab->token_types.empty()) {
    vocab->token_types.assign(vocab->tokens.size(), static_cast<int32_t>(TokenType::kNormal));
  }
  for (size_t id = 0; id < vocab->tokens.size(); ++id) {
    const std::string& text = vocab->tokens[id];
    const bool end_of_turn =
        std::find(kEndOfTurnTexts.begin(), kEndOfTurnTexts.end(), text) != kEndOfTurnTexts.end();
    if (!end_of_turn) continue;
    if (id < vocab->token_types.size()) {
      vocab->token_types[id] = static_cast<int32_t>(TokenType::kControl);
    }
    const int32_t i = static_cast<int32_t>(id);
    if (i != vocab->eos_id &&
        std::find(vocab->eot_ids.begin(), vocab->eot_ids.end(), i) == vocab->eot_ids.end()) {
      vocab->eot_ids.push_back(i);
    }
  }
}

absl::StatusOr<Vocab> VocabFromGguf(const gguf::GgufFile& file) {
  Vocab v;
  absl::StatusOr<std::string> model = file.GetString("tokenizer.ggml.model");
  if (!model.ok()) return Annotate(model.status(), "tokenizer.ggml.model");
  v.model = *std::move(model);

  absl::StatusOr<std::vector<std::string>> tokens = file.GetStringArray("tokenizer.ggml.tokens");
  if (!tokens.ok()) return Annotate(tokens.status(), "tokenizer.ggml.tokens");
  v.tokens = *std::move(tokens);
  if (v.tokens.empty()) {
    return absl::InvalidArgumentError("tokenizer metadata 'tokenizer.ggml.tokens' is empty");
  }
  // As llama.cpp does, give empty texts a unique placeholder.
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    if (v.tokens[i].empty()) v.tokens[i] = absl::StrCat("[EMPTY_", i, "]");
  }

  if (file.Has("tokenizer.ggml.token_type")) {
    absl::StatusOr<std::vector<int64_t>> types = file.GetIntArray("tokenizer.ggml.token_type");
    if (!types.ok()) return Annotate(types.status(), "tokenizer.ggml.token_type");
    if (types->size() != v.tokens.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer metadata 'tokenizer.ggml.token_type' has ", types->size(),
                       " entries for ", v.tokens.size(), " tokens"));
    }
    v.token_types.reserve(types->size());
    for (int64_t t : *types) v.token_types.push_back(static_cast<int32_t>(t));
  } else {
    v.token_types.assign(v.tokens.size(), static_cast<int32_t>(TokenType::kNormal));
  }

  if (file.Has("tokenizer.ggml.merges")) {
    absl::StatusOr<std::vector<std::string>> merges = file.GetStringArray("tokenizer.ggml.merges");
    if (!merges.ok()) return Annotate(merges.status(), "tokenizer.ggml.merges");
    v.merges = *std::move(merges);
  } else if (v.model == "gpt2") {
    return absl::InvalidArgumentError(
        "tokenizer metadata 'tokenizer.ggml.merges' is required for model 'gpt2'");
  }

  if (file.Has("tokenizer.ggml.pre")) {
    absl::StatusOr<std::string> pre = file.GetString("tokenizer.ggml.pre");
    if (!pre.ok()) return Annotate(pre.status(), "tokenizer.ggml.pre");
    v.pre = *std::move(pre);
  } else {
    v.pre = "default";  // llama.cpp's name for a missing pre-tokenizer
  }

  for (const auto& [key, id] :
       {std::pair<std::string_view, int32_t*>{"tokenizer.ggml.bos_token_id", &v.bos_id},
        {"tokenizer.ggml.eos_token_id", &v.eos_id},
        {"tokenizer.ggml.unknown_token_id", &v.unk_id},
        {"tokenizer.ggml.padding_token_id", &v.pad_id}}) {
    if (absl::Status s = ReadOptionalId(file, key, id); !s.ok()) return s;
    if (*id >= static_cast<int64_t>(v.tokens.size())) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer metadata '", AbslSv(key),
                                                     "' = ", *id, " is outside the vocab of ",
                                                     v.tokens.size()));
    }
  }
  for (std::string_view key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    int32_t id = -1;
    if (absl::Status s = ReadOptionalId(file, key, &id); !s.ok()) return s;
    if (id >= static_cast<int64_t>(v.tokens.size())) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer metadata '", AbslSv(key),
                                                     "' = ", id, " is outside the vocab of ",
                                                     v.tokens.size()));
    }
    if (id >= 0 && id != v.eos_id) v.eot_ids.push_back(id);
  }

  // llama.cpp's defaults when the keys are absent: llama-3 vocabularies add
  // BOS, other byte-level BPE ones add nothing.
  v.add_bos = v.pre == "llama-bpe" || v.pre == "llama3" || v.pre == "llama-v3";
  v.add_eos = false;
  if (absl::Status s = ReadOptionalBool(file, "tokenizer.ggml.add_bos_token", &v.add_bos);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ReadOptionalBool(file, "tokenizer.ggml.add_eos_token", &v.add_eos);
      !s.ok()) {
    return s;
  }

  if (file.Has("tokenizer.chat_template")) {
    absl::StatusOr<std::string> tmpl = file.GetString("tokenizer.chat_template");
    if (!tmpl.ok()) return Annotate(tmpl.status(), "tokenizer.chat_template");
    v.chat_template = *std::move(tmpl);
  }
  AddEndOfTurnTokens(&v);
  return v;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const gguf::GgufFile& file) {
  absl::StatusOr<Vocab> vocab = VocabFromGguf(file);
  if (!vocab.ok()) return vocab.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Create(*std::move(vocab));
  if (!tok.ok()) {
    return absl::Status(tok.status().code(),
                        absl::StrCat(file.path(), ": ", tok.status().message()));
  }
  return tok;
}

}  // namespace kvserve::tokenizer
