#include "engine/tokenizer/tokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/string_view_compat.h"
#include "engine/tokenizer/unicode.h"

namespace kvserve::tokenizer {
namespace {

const std::string& EmptyString() {
  static const std::string* empty = new std::string();
  return *empty;
}

bool IsSpecialType(TokenType t) {
  return t == TokenType::kControl || t == TokenType::kUserDefined || t == TokenType::kUnknown;
}

// Raw bytes behind a byte-level token text. A code point outside the byte
// alphabet (no consistent vocab has one) is kept as its own UTF-8.
std::string DecodeByteLevel(std::string_view text) {
  std::string out;
  for (char32_t cp : DecodeUtf8Lenient(text)) {
    const int b = ByteFromSymbol(cp);
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
    } else {
      AppendUtf8(cp, &out);
    }
  }
  return out;
}

// "<0xAB>" -> 0xAB, else -1.
int ParseByteToken(std::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text.back() != '>') return -1;
  int v = 0;
  for (char c : text.substr(3, 2)) {
    v <<= 4;
    if (c >= '0' && c <= '9') {
      v |= c - '0';
    } else if (c >= 'A' && c <= 'F') {
      v |= c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      v |= c - 'a' + 10;
    } else {
      return -1;
    }
  }
  return v;
}

std::string PieceOf(std::string_view text, TokenType type) {
  switch (type) {
    case TokenType::kControl:
    case TokenType::kUnknown:
    case TokenType::kUserDefined:
      return std::string(text);
    case TokenType::kNormal:
      return DecodeByteLevel(text);
    case TokenType::kByte: {
      const int b = ParseByteToken(text);
      return b >= 0 ? std::string(1, static_cast<char>(b)) : DecodeByteLevel(text);
    }
    case TokenType::kUnused:
    case TokenType::kUndefined:
      break;
  }
  return std::string();
}

absl::Status CheckId(std::string_view name, int32_t id, size_t n_vocab) {
  if (id < -1 || id >= static_cast<int64_t>(n_vocab)) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer ", AbslSv(name), " id ", id,
                                                   " is outside the vocab [0, ", n_vocab, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Create(Vocab vocab) {
  if (vocab.model != "gpt2") {
    return absl::UnimplementedError(
        absl::StrCat("unsupported tokenizer model '", vocab.model,
                     "' (tokenizer.ggml.model); only 'gpt2' (byte-level BPE) is implemented",
                     vocab.model == "llama" ? "; 'llama' is SentencePiece" : ""));
  }
  absl::StatusOr<PreTokenizerType> pre = PreTokenizerTypeFromName(vocab.pre);
  if (!pre.ok()) return pre.status();
  const size_t n = vocab.tokens.size();
  if (n == 0) return absl::InvalidArgumentError("tokenizer vocab has no tokens");
  if (n > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError("tokenizer vocab is too large");
  }
  if (vocab.token_types.empty()) {
    vocab.token_types.assign(n, static_cast<int32_t>(TokenType::kNormal));
  }
  if (vocab.token_types.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer has ", vocab.token_types.size(),
                                                   " token types for ", n, " tokens"));
  }
  for (size_t i = 0; i < n; ++i) {
    if (vocab.token_types[i] < 0 || vocab.token_types[i] > 6) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", i, " has invalid token type ", vocab.token_types[i]));
    }
    if (vocab.tokens[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("token ", i, " has empty text"));
    }
  }
  for (const auto& [name, id] : {std::pair<const char*, int32_t>{"bos", vocab.bos_id},
                                 {"eos", vocab.eos_id},
                                 {"unknown", vocab.unk_id},
                                 {"padding", vocab.pad_id}}) {
    if (absl::Status s = CheckId(name, id, n); !s.ok()) return s;
  }
  for (int32_t id : vocab.eot_ids) {
    if (id < 0 || static_cast<size_t>(id) >= n) {
      return absl::InvalidArgumentError(
          absl::StrCat("end-of-turn id ", id, " is outside the vocab [0, ", n, ")"));
    }
  }
  if (vocab.add_bos && vocab.bos_id < 0) {
    return absl::InvalidArgumentError("tokenizer adds a BOS token but has no bos id");
  }
  if (vocab.add_eos && vocab.eos_id < 0) {
    return absl::InvalidArgumentError("tokenizer adds an EOS token but has no eos id");
  }
  // llama.cpp skips merging a word that is already a token for llama-3.
  const bool ignore_merges = *pre == PreTokenizerType::kLlama3;
  absl::StatusOr<BpeModel> bpe = BpeModel::Build(vocab.tokens, vocab.merges, ignore_merges);
  if (!bpe.ok()) return bpe.status();
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(vocab), *pre, *std::move(bpe)));
}

Tokenizer::Tokenizer(Vocab vocab, PreTokenizerType pre, BpeModel bpe)
    : vocab_(std::move(vocab)), pre_(pre), bpe_(std::move(bpe)) {
  const int32_t n = n_vocab();
  pieces_.reserve(n);
  for (int32_t id = 0; id < n; ++id) {
    const TokenType type = static_cast<TokenType>(vocab_.token_types[id]);
    pieces_.push_back(PieceOf(vocab_.tokens[id], type));
    if (IsSpecialType(type)) {
      special_ids_.push_back(id);
      special_by_text_.emplace(vocab_.tokens[id], id);
    }
  }
  std::stable_sort(special_ids_.begin(), special_ids_.end(), [this](int32_t a, int32_t b) {
    return vocab_.tokens[a].size() > vocab_.tokens[b].size();
  });
  if (vocab_.eos_id >= 0) eog_ids_.push_back(vocab_.eos_id);
  eog_ids_.insert(eog_ids_.end(), vocab_.eot_ids.begin(), vocab_.eot_ids.end());
  std::sort(eog_ids_.begin(), eog_ids_.end());
  eog_ids_.erase(std::unique(eog_ids_.begin(), eog_ids_.end()), eog_ids_.end());
}

Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_bos,
                                       bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && vocab_.add_bos) out.push_back(vocab_.bos_id);

  // Fragments: a special token (id >= 0) or a text span (id < 0).
  struct Fragment {
    int32_t id;
    size_t begin, end;
  };
  std::vector<Fragment> fragments;
  if (!text.empty()) fragments.push_back({-1, 0, text.size()});
  std::vector<Fragment> next;
  for (int32_t special : special_ids_) {
    const TokenType type = token_type(special);
    // User-defined tokens are matched even without parse_special, as in
    // llama.cpp and Hugging Face tokenizers.
    if (!parse_special && type != TokenType::kUserDefined) continue;
    const std::string& needle = vocab_.tokens[special];
    if (text.find(needle) == std::string_view::npos) continue;
    next.clear();
    for (const Fragment& f : fragments) {
      if (f.id >= 0) {
        next.push_back(f);
        continue;
      }
      const std::string_view window = text.substr(0, f.end);
      size_t pos = f.begin;
      for (size_t m = window.find(needle, pos); m != std::string_view::npos;
           m = window.find(needle, pos)) {
        if (m > pos) next.push_back({-1, pos, m});
        next.push_back({special, m, m + needle.size()});
        pos = m + needle.size();
      }
      if (pos < f.end) next.push_back({-1, pos, f.end});
    }
    fragments.swap(next);
  }

  for (const Fragment& f : fragments) {
    if (f.id >= 0) {
      out.push_back(f.id);
    } else {
      EncodeText(text.substr(f.begin, f.end - f.begin), &out);
    }
  }
  if (add_bos && vocab_.add_eos) out.push_back(vocab_.eos_id);
  return out;
}

void Tokenizer::EncodeText(std::string_view text, std::vector<int32_t>* out) const {
  const std::u32string cps = DecodeUtf8Lenient(text);
  std::vector<uint32_t> lengths;
  PreTokenize(pre_, cps, &lengths);
  BpeModel::Scratch scratch;
  std::string word;
  size_t pos = 0;
  for (uint32_t len : lengths) {
    // Re-encoding the code points turns each invalid byte into U+FFFD.
    word.clear();
    for (size_t i = pos; i < pos + len; ++i) AppendUtf8(cps[i], &word);
    pos += len;
    EncodeWordCached(word, &scratch, out);
  }
}

void Tokenizer::EncodeWordCached(std::string_view word, BpeModel::Scratch* scratch,
                                 std::vector<int32_t>* out) const {
  // Single bytes are one table lookup already; long words are rarely repeated.
  if (word.size() < 2 || word.size() > 64) {
    bpe_.EncodeWord(word, scratch, out);
    return;
  }
  const size_t hash = absl::HashOf(word);
  CacheShard& shard = cache_[hash % kCacheShards];
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.words.find(AbslSv(word));
    if (it != shard.words.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out->size();
  bpe_.EncodeWord(word, scratch, out);
  std::vector<int32_t> ids(out->begin() + start, out->end());
  std::lock_guard<std::mutex> lock(shard.mu);
  // Bounded memory: a full shard starts over rather than tracking recency.
  if (shard.words.size() >= kCacheEntriesPerShard) shard.words.clear();
  shard.words.emplace(std::string(word), std::move(ids));
}

const std::string& Tokenizer::TokenToPiece(int32_t id) const {
  return IsValid(id) ? pieces_[id] : EmptyString();
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (!IsValid(id)) continue;
    if (skip_special) {
      const TokenType t = token_type(id);
      if (t == TokenType::kControl || t == TokenType::kUnknown) continue;
    }
    out += pieces_[id];
  }
  return out;
}

bool Tokenizer::IsEog(int32_t id) const {
  return std::binary_search(eog_ids_.begin(), eog_ids_.end(), id);
}

TokenType Tokenizer::token_type(int32_t id) const {
  return IsValid(id) ? static_cast<TokenType>(vocab_.token_types[id]) : TokenType::kUndefined;
}

bool Tokenizer::IsSpecial(int32_t id) const { return IsSpecialType(token_type(id)); }

int32_t Tokenizer::Find(std::string_view piece) const {
  if (auto it = special_by_text_.find(AbslSv(piece)); it != special_by_text_.end())
    return it->second;
  const int32_t id = bpe_.FindToken(EncodeBytes(piece));
  return (id >= 0 && pieces_[id] == piece) ? id : -1;
}

const std::string& Tokenizer::TokenText(int32_t id) const {
  return IsValid(id) ? vocab_.tokens[id] : EmptyString();
}

StreamingDecoder::StreamingDecoder(const Tokenizer* tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string StreamingDecoder::Push(int32_t id) {
  if (skip_special_) {
    const TokenType t = tokenizer_->token_type(id);
    if (t == TokenType::kControl || t == TokenType::kUnknown) return std::string();
  }
  pending_ += tokenizer_->TokenToPiece(id);
  const size_t complete = CompleteUtf8Prefix(pending_);
  std::string out = SanitizeUtf8(std::string_view(pending_).substr(0, complete));
  pending_.erase(0, complete);
  return out;
}

std::string StreamingDecoder::Flush() {
  std::string out = SanitizeUtf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace kvserve::tokenizer
