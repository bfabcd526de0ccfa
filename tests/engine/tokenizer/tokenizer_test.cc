#include "engine/tokenizer/tokenizer.h"

#include <string>
#include <thread>
#include <vector>

#include "engine/tokenizer/bpe_model.h"
#include "engine/tokenizer/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvserve::tokenizer {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using Ids = std::vector<int32_t>;

// A hand-made byte-level vocab: ids 0..255 are the single bytes (id == byte
// value), then the merge results below, then special tokens.
class TinyVocab {
 public:
  TinyVocab() {
    for (int b = 0; b < 256; ++b) Add(ByteToSymbol(static_cast<uint8_t>(b)));
    // Merges in rank order. "b c" outranks "a b", so "abc" -> "a" "bc".
    for (const char* m : {"b c", "a b", "a a", "h e", "l l", "he ll", "hell o", "Ġ w", "o r",
                          "Ġw or", "Ġwor l", "Ġworl d"}) {
      Merge(m);
    }
    im_start = AddSpecial("<|im_start|>", TokenType::kControl);
    im_end = AddSpecial("<|im_end|>", TokenType::kControl);
    endoftext = AddSpecial("<|endoftext|>", TokenType::kControl);
    tool = AddSpecial("<tool>", TokenType::kUserDefined);
    short_special = AddSpecial("<x>", TokenType::kControl);
    long_special = AddSpecial("<x><y>", TokenType::kControl);
    unused = AddSpecial("<unused0>", TokenType::kUnused);
    vocab.eos_id = im_end;
    vocab.bos_id = endoftext;
    vocab.eot_ids = {endoftext};
    vocab.pre = "gpt-2";
  }

  int32_t Add(const std::string& text, TokenType type = TokenType::kNormal) {
    vocab.tokens.push_back(text);
    vocab.token_types.push_back(static_cast<int32_t>(type));
    return static_cast<int32_t>(vocab.tokens.size() - 1);
  }
  int32_t AddSpecial(const std::string& text, TokenType type) { return Add(text, type); }
  void Merge(const std::string& merge) {
    vocab.merges.push_back(merge);
    const size_t space = merge.find(' ');
    Add(merge.substr(0, space) + merge.substr(space + 1));
  }
  int32_t Id(const std::string& text) const {
    for (size_t i = 0; i < vocab.tokens.size(); ++i) {
      if (vocab.tokens[i] == text) return static_cast<int32_t>(i);
    }
    ADD_FAILURE() << "no token " << text;
    return -1;
  }
  std::unique_ptr<Tokenizer> Build() const {
    auto t = Tokenizer::Create(vocab);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *std::move(t) : nullptr;
  }

  Vocab vocab;
  int32_t im_start, im_end, endoftext, tool, short_special, long_special, unused;
};

Ids Bytes(std::string_view s) {
  Ids ids;
  for (char c : s) ids.push_back(static_cast<uint8_t>(c));
  return ids;
}

TEST(TokenizerTest, ByteAlphabetIsGpt2s) {
  EXPECT_EQ(ByteToSymbol('a'), "a");
  EXPECT_EQ(ByteToSymbol(' '), "\u0120");   // Ġ
  EXPECT_EQ(ByteToSymbol('\n'), "\u010a");  // Ċ
  EXPECT_EQ(ByteToSymbol(0), "\u0100");
  EXPECT_EQ(ByteToSymbol(0xAD), "\u0143");  // the last remapped byte
  EXPECT_EQ(ByteToSymbol(0xE9), "\u00e9");  // printable Latin-1 stands for itself
  for (int b = 0; b < 256; ++b) {
    const std::u32string cps = DecodeUtf8Lenient(ByteToSymbol(static_cast<uint8_t>(b)));
    ASSERT_EQ(cps.size(), 1u);
    EXPECT_EQ(ByteFromSymbol(cps[0]), b);
  }
  EXPECT_EQ(ByteFromSymbol(U'\u0144'), -1);
  EXPECT_EQ(EncodeBytes(" hi\n"), "\u0120hi\u010a");
}

TEST(TokenizerTest, MergesApplyInRankOrder) {
  TinyVocab v;
  auto tok = v.Build();
  EXPECT_THAT(tok->Encode("abc", false, false), ElementsAre('a', v.Id("bc")));
  EXPECT_THAT(tok->Encode("ab", false, false), ElementsAre(v.Id("ab")));
  EXPECT_THAT(tok->Encode("hello world", false, false), ElementsAre(v.Id("hello"), v.Id("Ġworld")));
  // "he" x2, "ll" x2, "hell" x2, then only the second "hell" has an "o".
  EXPECT_THAT(tok->Encode("hellhello", false, false), ElementsAre(v.Id("hell"), v.Id("hello")));
}

TEST(TokenizerTest, EqualRanksMergeLeftmostFirst) {
  TinyVocab v;
  auto tok = v.Build();
  EXPECT_THAT(tok->Encode("aaa", false, false), ElementsAre(v.Id("aa"), 'a'));
  EXPECT_THAT(tok->Encode("aaaa", false, false), ElementsAre(v.Id("aa"), v.Id("aa")));
}

TEST(TokenizerTest, UnmergedBytesAreByteTokens) {
  TinyVocab v;
  auto tok = v.Build();
  EXPECT_EQ(tok->Encode("é", false, false), Bytes("\xC3\xA9"));
  EXPECT_EQ(tok->Encode("😀", false, false), Bytes("\xF0\x9F\x98\x80"));
  EXPECT_EQ(tok->Encode("\n\t", false, false), Bytes("\n\t"));
  EXPECT_TRUE(tok->Encode("", true, true).empty());
}

TEST(TokenizerTest, InvalidUtf8IsEncodedAsReplacementChar) {
  TinyVocab v;
  auto tok = v.Build();
  // As llama.cpp: every invalid byte becomes U+FFFD (EF BF BD).
  EXPECT_EQ(tok->Encode("\xFF", false, false), Bytes("\xEF\xBF\xBD"));
  EXPECT_EQ(tok->Encode("a\xE2\x82", false, false), Bytes("a\xEF\xBF\xBD\xEF\xBF\xBD"));
}

TEST(TokenizerTest, DecodeIsTheByteExactInverse) {
  TinyVocab v;
  auto tok = v.Build();
  for (const std::string& s : std::vector<std::string>{
           "hello world", "abc aaa", "  x  \n\n\ty", "naïve 中文 😀👨‍👩‍👧",
           "<|im_start|>user\nhi<|im_end|>", std::string("nul\0byte", 8)}) {
    for (bool special : {false, true}) {
      EXPECT_EQ(tok->Decode(tok->Encode(s, false, special), false), s);
    }
  }
}

TEST(TokenizerTest, SpecialTokensAreParsedOnlyWhenAsked) {
  TinyVocab v;
  auto tok = v.Build();
  const std::string text = "<|im_start|>user\nhi<|im_end|>";
  Ids expected = {v.im_start};
  for (int32_t id : Bytes("user\nhi")) expected.push_back(id);
  expected.push_back(v.im_end);
  EXPECT_EQ(tok->Encode(text, false, true), expected);
  EXPECT_EQ(tok->Decode(tok->Encode(text, false, false), false), text);
  EXPECT_THAT(tok->Encode(text, false, false), ::testing::Not(::testing::Contains(v.im_start)));
}

TEST(TokenizerTest, UserDefinedTokensAreAlwaysMatched) {
  TinyVocab v;
  auto tok = v.Build();
  EXPECT_THAT(tok->Encode("a<tool>b", false, false), ElementsAre('a', v.tool, 'b'));
}

TEST(TokenizerTest, SpecialTokensSplitTextAndNeverMerge) {
  TinyVocab v;
  auto tok = v.Build();
  // "hell" + special + "o": the BPE word must not reach across the token.
  EXPECT_THAT(tok->Encode("hell<|im_end|>o", false, true),
              ElementsAre(v.Id("hell"), v.im_end, 'o'));
  EXPECT_THAT(tok->Encode("<|im_end|><|im_end|>", false, true), ElementsAre(v.im_end, v.im_end));
  // An incomplete special token is plain text.
  EXPECT_EQ(tok->Encode("<|im_end", false, true), Bytes("<|im_end"));
}

TEST(TokenizerTest, LongerSpecialTokensWin) {
  TinyVocab v;
  auto tok = v.Build();
  EXPECT_THAT(tok->Encode("<x><y>", false, true), ElementsAre(v.long_special));
  EXPECT_THAT(tok->Encode("<x><x><y>", false, true), ElementsAre(v.short_special, v.long_special));
}

TEST(TokenizerTest, AddSpecialFollowsTheVocabFlags) {
  TinyVocab v;
  auto plain = v.Build();
  EXPECT_EQ(plain->Encode("ab", true, false), Ids{v.Id("ab")});
  v.vocab.add_bos = true;
  v.vocab.add_eos = true;
  auto tok = v.Build();
  EXPECT_THAT(tok->Encode("ab", true, false), ElementsAre(v.endoftext, v.Id("ab"), v.im_end));
  EXPECT_THAT(tok->Encode("ab", false, false), ElementsAre(v.Id("ab")));
  EXPECT_THAT(tok->Encode("", true, false), ElementsAre(v.endoftext, v.im_end));
}

TEST(TokenizerTest, PiecesAndDecodeOfSpecialTokens) {
  TinyVocab v;
  auto tok = v.Build();
  EXPECT_EQ(tok->TokenToPiece(v.Id("Ġworld")), " world");
  EXPECT_EQ(tok->TokenToPiece('\n'), "\n");
  EXPECT_EQ(tok->TokenToPiece(v.im_end), "<|im_end|>");
  EXPECT_EQ(tok->TokenToPiece(v.tool), "<tool>");
  EXPECT_EQ(tok->TokenToPiece(v.unused), "");
  EXPECT_EQ(tok->TokenToPiece(-1), "");
  EXPECT_EQ(tok->TokenToPiece(tok->n_vocab()), "");
  const Ids ids = {v.im_start, 'h', 'i', v.tool, v.im_end};
  EXPECT_EQ(tok->Decode(ids, false), "<|im_start|>hi<tool><|im_end|>");
  // Control tokens are skipped; user-defined ones are text.
  EXPECT_EQ(tok->Decode(ids, true), "hi<tool>");
}

TEST(TokenizerTest, Accessors) {
  TinyVocab v;
  auto tok = v.Build();
  EXPECT_EQ(tok->n_vocab(), static_cast<int32_t>(v.vocab.tokens.size()));
  EXPECT_EQ(tok->eos_id(), v.im_end);
  EXPECT_EQ(tok->bos_id(), v.endoftext);
  EXPECT_TRUE(tok->IsEog(v.im_end));
  EXPECT_TRUE(tok->IsEog(v.endoftext));
  EXPECT_FALSE(tok->IsEog(v.im_start));
  EXPECT_FALSE(tok->IsEog('a'));
  EXPECT_EQ(tok->token_type(v.im_start), TokenType::kControl);
  EXPECT_EQ(tok->token_type('a'), TokenType::kNormal);
  EXPECT_EQ(tok->token_type(-5), TokenType::kUndefined);
  EXPECT_TRUE(tok->IsControl(v.im_end));
  EXPECT_TRUE(tok->IsSpecial(v.tool));
  EXPECT_FALSE(tok->IsSpecial('a'));
  EXPECT_EQ(tok->Find("<|im_end|>"), v.im_end);
  EXPECT_EQ(tok->Find(" world"), v.Id("Ġworld"));
  EXPECT_EQ(tok->Find("\n"), '\n');
  EXPECT_EQ(tok->Find("zzz"), -1);
  EXPECT_EQ(tok->TokenText(v.Id("Ġworld")), "Ġworld");
  EXPECT_EQ(tok->pre_tokenizer(), PreTokenizerType::kGpt2);
}

TEST(TokenizerTest, EncodingIsRepeatableAndThreadSafe) {
  TinyVocab v;
  auto tok = v.Build();
  std::string text;
  for (int i = 0; i < 200; ++i) text += "hello world abc aaa héllo " + std::to_string(i) + "\n";
  const Ids expected = tok->Encode(text, false, true);
  EXPECT_EQ(tok->Encode(text, false, true), expected);  // now from the word cache
  std::vector<Ids> results(4);
  std::vector<std::thread> threads;
  for (auto& r : results) {
    threads.emplace_back([&tok, &text, &r] {
      for (int i = 0; i < 20; ++i) r = tok->Encode(text, false, true);
    });
  }
  for (auto& t : threads) t.join();
  for (const Ids& r : results) EXPECT_EQ(r, expected);
  EXPECT_EQ(tok->Decode(expected, false), text);
}

TEST(TokenizerTest, CreateRejectsUnsupportedModelsAndPreTokenizers) {
  TinyVocab v;
  v.vocab.model = "llama";
  auto r = Tokenizer::Create(v.vocab);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("'llama'"));

  v.vocab.model = "gpt2";
  v.vocab.pre = "default";
  r = Tokenizer::Create(v.vocab);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("'default'"));
}

TEST(TokenizerTest, CreateValidatesTheVocab) {
  auto expect_invalid = [](const Vocab& vocab, const std::string& needle) {
    auto r = Tokenizer::Create(vocab);
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(needle));
  };
  {
    TinyVocab v;
    v.vocab.tokens.push_back("ab");
    v.vocab.token_types.push_back(1);
    expect_invalid(v.vocab, "duplicate");
  }
  {
    TinyVocab v;
    v.vocab.merges.push_back("nospace");
    expect_invalid(v.vocab, "malformed BPE merge");
  }
  {
    TinyVocab v;
    v.vocab.token_types.pop_back();
    expect_invalid(v.vocab, "token types");
  }
  {
    TinyVocab v;
    v.vocab.eos_id = 100000;
    expect_invalid(v.vocab, "eos id 100000");
  }
  {
    TinyVocab v;
    v.vocab.bos_id = -1;
    v.vocab.add_bos = true;
    expect_invalid(v.vocab, "bos");
  }
  {
    TinyVocab v;
    v.vocab.token_types[3] = 9;
    expect_invalid(v.vocab, "token type 9");
  }
  expect_invalid(Vocab{}, "no tokens");
}

TEST(TokenizerTest, MissingTokenTypesMeanNormal) {
  TinyVocab v;
  v.vocab.token_types.clear();
  auto tok = v.Build();
  ASSERT_NE(tok, nullptr);
  // Nothing is special any more, so the markup is plain text.
  EXPECT_EQ(tok->Encode("<x>", false, true), Bytes("<x>"));
}

TEST(TokenizerTest, AddEndOfTurnTokensMarksKnownTexts) {
  Vocab vocab;
  vocab.tokens = {"a", "<|im_end|>", "<|eot_id|>", "<|endoftext|>"};
  vocab.token_types = {1, 1, 3, 3};
  vocab.eos_id = 3;
  AddEndOfTurnTokens(&vocab);
  EXPECT_THAT(vocab.eot_ids, ElementsAre(1, 2));
  EXPECT_THAT(vocab.token_types, ElementsAre(1, 3, 3, 3));
  AddEndOfTurnTokens(&vocab);  // idempotent
  EXPECT_THAT(vocab.eot_ids, ElementsAre(1, 2));
}

TEST(TokenizerTest, IgnoreMergesEmitsWholeWordTokens) {
  // With llama-3's option a word that is itself a token skips merging, even
  // where the merges would not reach it.
  Vocab vocab;
  for (int b = 0; b < 256; ++b) vocab.tokens.push_back(ByteToSymbol(static_cast<uint8_t>(b)));
  vocab.tokens.push_back("xyz");
  vocab.pre = "llama-bpe";
  auto tok = Tokenizer::Create(vocab);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_THAT((*tok)->Encode("xyz", false, false), ElementsAre(256));
  vocab.pre = "gpt-2";
  tok = Tokenizer::Create(vocab);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_THAT((*tok)->Encode("xyz", false, false), ElementsAre('x', 'y', 'z'));
}

TEST(TokenizerStreamingDecoderTest, HoldsBackSplitCharacters) {
  TinyVocab v;
  auto tok = v.Build();
  StreamingDecoder dec(tok.get());
  std::string out;
  // "é😀" as single-byte tokens: nothing partial may come out.
  for (int32_t id : Bytes("\xC3\xA9\xF0\x9F\x98\x80")) {
    const std::string piece = dec.Push(id);
    EXPECT_EQ(SanitizeUtf8(piece), piece);
    out += piece;
    if (id == 0xA9) {
      EXPECT_EQ(out, "é");
    }
  }
  EXPECT_EQ(out, "é😀");
  EXPECT_EQ(dec.pending_bytes(), 0u);
  EXPECT_EQ(dec.Flush(), "");
}

TEST(TokenizerStreamingDecoderTest, MultiByteTokensAndEmojiSequences) {
  TinyVocab v;
  auto tok = v.Build();
  const std::string text = "hello 👨‍👩‍👧 world 中文";
  StreamingDecoder dec(tok.get());
  std::string out;
  for (int32_t id : tok->Encode(text, false, false)) out += dec.Push(id);
  out += dec.Flush();
  EXPECT_EQ(out, text);
}

TEST(TokenizerStreamingDecoderTest, ReplacesInvalidBytes) {
  TinyVocab v;
  auto tok = v.Build();
  StreamingDecoder dec(tok.get());
  EXPECT_EQ(dec.Push('a'), "a");
  EXPECT_EQ(dec.Push(0x80), "\uFFFD");  // a stray continuation byte
  EXPECT_EQ(dec.Push(0xE2), "");
  EXPECT_EQ(dec.Push(0x82), "");
  EXPECT_EQ(dec.pending_bytes(), 2u);
  EXPECT_EQ(dec.Push('b'), "\uFFFDb");  // the sequence never completed
  EXPECT_EQ(dec.Push(0xF0), "");
  EXPECT_EQ(dec.Flush(), "\uFFFD");
  EXPECT_EQ(dec.pending_bytes(), 0u);
  EXPECT_EQ(dec.Push('c'), "c");  // reusable after Flush
}

TEST(TokenizerStreamingDecoderTest, SpecialTokens) {
  TinyVocab v;
  auto tok = v.Build();
  StreamingDecoder with(tok.get());
  EXPECT_EQ(with.Push(v.im_end), "<|im_end|>");
  StreamingDecoder without(tok.get(), /*skip_special=*/true);
  EXPECT_EQ(without.Push(v.im_end), "");
  EXPECT_EQ(without.Push(v.tool), "<tool>");
}

}  // namespace
}  // namespace kvserve::tokenizer
