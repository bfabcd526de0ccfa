#include "engine/tokenizer/bpe_model.h"

#include <algorithm>
#include <array>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/string_view_compat.h"
#include "engine/tokenizer/unicode.h"

namespace kvserve::tokenizer {
namespace {

bool StandsForItself(int b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct ByteAlphabet {
  std::array<char32_t, 256> code_point;
  std::array<std::string, 256> utf8;
  ByteAlphabet() {
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      code_point[b] = StandsForItself(b) ? static_cast<char32_t>(b) : next++;
      AppendUtf8(code_point[b], &utf8[b]);
    }
  }
};

const ByteAlphabet& Alphabet() {
  static const ByteAlphabet* alphabet = new ByteAlphabet();
  return *alphabet;
}

// Heap order: lowest rank first, then leftmost.
bool LaterBigram(const BpeModel::Scratch::Bigram& a, const BpeModel::Scratch::Bigram& b) {
  return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
}

}  // namespace

const std::string& ByteToSymbol(uint8_t b) { return Alphabet().utf8[b]; }

int ByteFromSymbol(char32_t cp) {
  if (cp < 0x100) return StandsForItself(static_cast<int>(cp)) ? static_cast<int>(cp) : -1;
  if (cp >= 0x100 + 68) return -1;
  // U+0100 + k is the k-th byte that does not stand for itself.
  int k = static_cast<int>(cp - 0x100);
  for (int b = 0; b < 256; ++b) {
    if (!StandsForItself(b) && k-- == 0) return b;
  }
  return -1;
}

std::string EncodeBytes(std::string_view raw) {
  std::string out;
  out.reserve(raw.size() * 2);
  for (char c : raw) out += ByteToSymbol(static_cast<uint8_t>(c));
  return out;
}

absl::StatusOr<BpeModel> BpeModel::Build(const std::vector<std::string>& tokens,
                                         const std::vector<std::string>& merges,
                                         bool ignore_merges) {
  BpeModel m;
  m.n_vocab_ = static_cast<int32_t>(tokens.size());
  m.ignore_merges_ = ignore_merges;
  m.symbols_.reserve(tokens.size() + 1024);
  for (size_t id = 0; id < tokens.size(); ++id) {
    auto [it, inserted] = m.symbols_.emplace(tokens[id], static_cast<int32_t>(id));
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate vocab token text '", tokens[id],
                                                     "' at ids ", it->second, " and ", id));
    }
  }
  auto intern = [&m](std::string_view text) -> int32_t {
    auto [it, inserted] =
        m.symbols_.try_emplace(AbslSv(text), static_cast<int32_t>(m.symbols_.size()));
    return it->second;
  };
  for (int b = 0; b < 256; ++b) m.byte_symbol_[b] = intern(ByteToSymbol(static_cast<uint8_t>(b)));

  m.merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& merge = merges[rank];
    // Split at the first space after the first byte, so that a left part
    // may itself start with a space.
    const size_t space = merge.find(' ', 1);
    if (space == std::string::npos || space + 1 >= merge.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed BPE merge #", rank, " '", merge, "': expected 'left right'"));
    }
    const std::string_view left(merge.data(), space);
    const std::string_view right(merge.data() + space + 1, merge.size() - space - 1);
    const int32_t l = intern(left);
    const int32_t r = intern(right);
    const int32_t joined = intern(absl::StrCat(AbslSv(left), AbslSv(right)));
    m.merges_.try_emplace(PairKey(l, r), Merge{static_cast<int32_t>(rank), joined});
  }
  return m;
}

int32_t BpeModel::FindToken(std::string_view text) const {
  auto it = symbols_.find(AbslSv(text));
  return (it != symbols_.end() && it->second < n_vocab_) ? it->second : -1;
}

void BpeModel::PushBigram(int32_t left, int32_t right, Scratch* scratch) const {
  if (left < 0 || right < 0) return;
  const auto& syms = scratch->symbols;
  auto it = merges_.find(PairKey(syms[left].sym, syms[right].sym));
  if (it == merges_.end()) return;
  scratch->heap.push_back(Scratch::Bigram{it->second.rank, left, right, syms[left].len,
                                          syms[right].len, it->second.merged});
  std::push_heap(scratch->heap.begin(), scratch->heap.end(), LaterBigram);
}

void BpeModel::EncodeWord(std::string_view word, Scratch* scratch,
                          std::vector<int32_t>* out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    scratch->encoded = EncodeBytes(word);
    const int32_t id = FindToken(scratch->encoded);
    if (id >= 0) {
      out->push_back(id);
      return;
    }
  }
  auto& syms = scratch->symbols;
  syms.clear();
  scratch->heap.clear();
  const int32_t n = static_cast<int32_t>(word.size());
  for (int32_t i = 0; i < n; ++i) {
    syms.push_back(Scratch::Symbol{byte_symbol_[static_cast<uint8_t>(word[i])],
                                   static_cast<uint32_t>(i), 1, i - 1, i + 1 < n ? i + 1 : -1});
  }
  for (int32_t i = 0; i + 1 < n; ++i) PushBigram(i, i + 1, scratch);

  while (!scratch->heap.empty()) {
    std::pop_heap(scratch->heap.begin(), scratch->heap.end(), LaterBigram);
    const Scratch::Bigram b = scratch->heap.back();
    scratch->heap.pop_back();
    auto& left = syms[b.left];
    auto& right = syms[b.right];
    // Stale if either side has been merged away or grown since the push.
    if (left.len != b.left_len || right.len != b.right_len) continue;
    left.len += right.len;
    left.sym = b.merged;
    right.len = 0;
    left.next = right.next;
    if (right.next >= 0) syms[right.next].prev = b.left;
    PushBigram(left.prev, b.left, scratch);
    PushBigram(b.left, left.next, scratch);
  }

  for (int32_t i = 0; i >= 0; i = syms[i].next) {
    const auto& s = syms[i];
    if (s.sym < n_vocab_) {
      out->push_back(s.sym);
      continue;
    }
    // Not a token: fall back to single-byte tokens of the symbol's text.
    const std::string text = EncodeBytes(word.substr(s.start, s.len));
    for (char c : text) {
      const int32_t id = FindToken(std::string_view(&c, 1));
      if (id >= 0) out->push_back(id);
    }
  }
}

}  // namespace kvserve::tokenizer
