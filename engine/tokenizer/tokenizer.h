// Text <-> token ids for byte-level BPE vocabularies (tokenizer.ggml.model
// "gpt2"), producing exactly the ids llama.cpp's llama_tokenize gives.
//
// Encoding: (1) with parse_special, CONTROL / UNKNOWN tokens found in the
// text become single ids; USER_DEFINED tokens always do. Candidates are tried
// longest text first, each splitting every remaining text fragment at all of
// its occurrences (llama.cpp's order, which differs from leftmost-longest
// only for overlapping special texts). (2) Each remaining fragment is decoded
// leniently (unicode.h), pre-tokenized (pre_tokenizer.h) and (3) every word
// is BPE-merged (bpe_model.h). Invalid UTF-8 bytes are encoded as U+FFFD.
//
// Decoding is byte-exact: each token contributes its piece (the raw bytes
// behind its byte-level text; special tokens their text).
//
// Thread-safety: Tokenizer is immutable after Create(); all const methods may
// be called concurrently (the internal word cache is sharded and locked).
// StreamingDecoder is per request and not thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/tokenizer/bpe_model.h"
#include "engine/tokenizer/pre_tokenizer.h"
#include "engine/tokenizer/vocab.h"

namespace kvserve::gguf {
class GgufFile;
}

namespace kvserve::tokenizer {

class Tokenizer {
 public:
  // Validates `vocab` (ids in range, token_types sized like tokens, unique
  // token texts, well-formed merges) and builds the tokenizer. Models other
  // than "gpt2" (e.g. "llama" SentencePiece) and unknown pre-tokenizer names
  // are Unimplemented errors.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(Vocab vocab);
  // VocabFromGguf() followed by Create().
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const gguf::GgufFile& file);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids of `text`. `add_bos` is llama_tokenize's add_special: it adds
  // bos_id if the vocab's add_bos is set and eos_id if its add_eos is set.
  // `parse_special` lets control tokens written in the text become ids.
  std::vector<int32_t> Encode(std::string_view text, bool add_bos, bool parse_special) const;

  // The bytes token `id` stands for: raw bytes for normal tokens, the text
  // for control / user-defined / unknown tokens, empty for unused or
  // undefined ones and for ids outside [0, n_vocab).
  const std::string& TokenToPiece(int32_t id) const;

  // Concatenated pieces; with `skip_special`, control and unknown tokens
  // contribute nothing. Decode(Encode(s)) == s for valid UTF-8 `s` (without
  // added bos/eos) whenever every byte of `s` has a byte token: bytes
  // without one (SmolLM2 has none for e.g. 0x04 or 0xF1) are dropped by
  // encoding, as in llama.cpp. The result may contain invalid UTF-8 where
  // the ids split a character; see StreamingDecoder for incremental output.
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const;

  int32_t n_vocab() const { return static_cast<int32_t>(vocab_.tokens.size()); }
  int32_t bos_id() const { return vocab_.bos_id; }
  int32_t eos_id() const { return vocab_.eos_id; }
  int32_t unk_id() const { return vocab_.unk_id; }
  int32_t pad_id() const { return vocab_.pad_id; }
  bool add_bos() const { return vocab_.add_bos; }
  bool add_eos() const { return vocab_.add_eos; }
  bool IsValid(int32_t id) const { return id >= 0 && id < n_vocab(); }
  // End of generation: eos_id or one of the vocab's eot_ids.
  bool IsEog(int32_t id) const;
  const std::vector<int32_t>& eog_ids() const { return eog_ids_; }

  // kUndefined for invalid ids.
  TokenType token_type(int32_t id) const;
  bool IsControl(int32_t id) const { return token_type(id) == TokenType::kControl; }
  // Control, user-defined or unknown: rendered as text, matched whole.
  bool IsSpecial(int32_t id) const;

  // Id of the token whose piece is exactly `piece`: a special token's text
  // (e.g. "<|im_end|>") or the raw bytes of a normal token (e.g. " hello").
  // -1 if there is none.
  int32_t Find(std::string_view piece) const;
  // Vocab text of `id` (byte-level alphabet for normal tokens); empty if invalid.
  const std::string& TokenText(int32_t id) const;

  const Vocab& vocab() const { return vocab_; }
  const std::string& chat_template() const { return vocab_.chat_template; }
  PreTokenizerType pre_tokenizer() const { return pre_; }

 private:
  struct CacheShard {
    std::mutex mu;
    absl::flat_hash_map<std::string, std::vector<int32_t>> words;  // guarded by mu
  };
  static constexpr size_t kCacheShards = 16;
  static constexpr size_t kCacheEntriesPerShard = 4096;

  Tokenizer(Vocab vocab, PreTokenizerType pre, BpeModel bpe);
  void EncodeText(std::string_view text, std::vector<int32_t>* out) const;
  void EncodeWordCached(std::string_view word, BpeModel::Scratch* scratch,
                        std::vector<int32_t>* out) const;

  Vocab vocab_;
  PreTokenizerType pre_;
  BpeModel bpe_;
  std::vector<std::string> pieces_;   // by id
  std::vector<int32_t> special_ids_;  // special tokens, longest text first
  std::vector<int32_t> eog_ids_;      // sorted
  absl::flat_hash_map<std::string, int32_t> special_by_text_;
  mutable std::array<CacheShard, kCacheShards> cache_;
};

// Turns a stream of token ids into text that is always valid UTF-8 and never
// ends inside a character: bytes of a character split across tokens are held
// back until it is complete.
//
// Thread-safety: not thread-safe; one per request.
class StreamingDecoder {
 public:
  // `tokenizer` is not owned and must outlive this object. With
  // `skip_special`, control and unknown tokens produce no text.
  explicit StreamingDecoder(const Tokenizer* tokenizer, bool skip_special = false);

  // Text completed by token `id`: whole UTF-8 characters only; ill-formed
  // bytes become U+FFFD.
  std::string Push(int32_t id);
  // Everything still held back; an incomplete trailing sequence becomes
  // U+FFFD. The decoder is empty afterwards and may be reused.
  std::string Flush();
  // Bytes currently held back (0..3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tokenizer_;  // not owned
  bool skip_special_;
  std::string pending_;
};

}  // namespace kvserve::tokenizer
