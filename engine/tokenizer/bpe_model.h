// Byte-level BPE (GPT-2 style): the byte alphabet and rank-ordered merges.
//
// A word's UTF-8 bytes are first mapped one-to-one onto printable code points
// (GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
// other 68 bytes map to U+0100..U+0143 in byte order); vocab token texts are
// written in that alphabet ("Ġhello" is " hello"). Merging then repeatedly
// joins the adjacent pair of lowest merge rank (leftmost on ties) until no
// pair has a rank, as llama.cpp does.
//
// Thread-safety: immutable after Build(); const methods may be called
// concurrently (each caller passes its own Scratch).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace kvserve::tokenizer {

// UTF-8 text of the code point that stands for byte `b`.
const std::string& ByteToSymbol(uint8_t b);
// The byte code point `cp` stands for, or -1 if it is not in the alphabet.
int ByteFromSymbol(char32_t cp);
// Maps every byte of `raw` to its symbol, e.g. " hi" -> "Ġhi".
std::string EncodeBytes(std::string_view raw);

class BpeModel {
 public:
  // Per-caller working memory, reused across words to avoid allocations.
  struct Scratch {
    struct Symbol {
      int32_t sym;     // symbol-table id (== token id when < n_vocab)
      uint32_t start;  // first byte within the word
      uint32_t len;    // bytes; 0 once merged into the left neighbour
      int32_t prev, next;
    };
    struct Bigram {
      int32_t rank;
      int32_t left, right;  // symbol indices
      uint32_t left_len, right_len;
      int32_t merged;  // symbol-table id of the joined text
    };
    std::vector<Symbol> symbols;
    std::vector<Bigram> heap;
    std::string encoded;
  };

  // `tokens` are vocab texts by id (in the byte alphabet, unique); `merges`
  // are "left right" strings, rank = index (the first of duplicate pairs
  // wins). With `ignore_merges` a word that is itself a token is emitted
  // whole without merging (llama-3's tokenizer option).
  static absl::StatusOr<BpeModel> Build(const std::vector<std::string>& tokens,
                                        const std::vector<std::string>& merges, bool ignore_merges);

  // Appends the token ids of one pre-tokenized word, given as raw UTF-8
  // bytes. A final symbol that is not a token falls back to single-byte
  // tokens for each byte of its byte-alphabet text, dropping bytes that have
  // none (llama.cpp's behaviour; cannot happen with a consistent vocab).
  void EncodeWord(std::string_view word, Scratch* scratch, std::vector<int32_t>* out) const;

  // Token id whose vocab text is exactly `text`, or -1.
  int32_t FindToken(std::string_view text) const;
  int32_t n_vocab() const { return n_vocab_; }
  size_t n_merges() const { return merges_.size(); }

 private:
  struct Merge {
    int32_t rank;
    int32_t merged;
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  void PushBigram(int32_t left, int32_t right, Scratch* scratch) const;

  int32_t n_vocab_ = 0;
  bool ignore_merges_ = false;
  // Text -> symbol id. Ids below n_vocab_ are the tokens; above are texts
  // that occur only as merge parts or results.
  absl::flat_hash_map<std::string, int32_t> symbols_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  int32_t byte_symbol_[256] = {};
};

}  // namespace kvserve::tokenizer
