#!/usr/bin/env python3
"""Passkey-retrieval prompts: a needle hidden at a chosen depth in real book text.

The prompt follows the passkey task of Landmark Attention (Mohtashami & Jaggi, 2023),
with public-domain prose from ../shared/data/gutenberg as the filler instead of
repeated sentences:

    <INTRO>
    <haystack text before the needle>
    The pass key is 12345. Remember it. 12345 is the pass key.
    <haystack text after the needle>
    What is the pass key? The pass key is

(parts joined by "\\n"; an empty part is left out, as at depth 0 or 1).

`make_needle_prompt` is the general form the passkey prompt is built with: any intro,
question and list of (needle line, depth), e.g. the needle-in-a-haystack task of
kvserve-eval (bench/kvserve_eval/tasks/niah.py) with distractor needles; each needle
goes at the sentence boundary nearest its depth, and its token offset in the prompt and
its achieved token depth are reported.

Properties (tests/bench/test_haystack.py checks them):
  * Deterministic: the seed alone picks the key (5 digits) and the book; the offset in
    the book depends on the seed and the length, not on the depth, so one seed and
    length give the same key and text at every depth.
  * Length in model tokens: the prompt is tokenised exactly as `kvserve serve` does for
    a text prompt of /v1/completions (the GGUF's byte-level BPE, no special-token
    parsing, BOS only if the GGUF asks for one) and the haystack is cut so the prompt
    has the requested number of tokens (exactly, in every case tried; the cut falls
    inside a word only when whole words cannot give the length).
  * Depth: the needle goes at the sentence boundary of the haystack nearest to
    depth * (the haystack's tokens), so it is at most one sentence from the request.

The tokenizer is a small pure-Python reading of the GGUF vocabulary (no llama.cpp or
`regex` package needed, so it runs in the test venv and in plain python3); it follows
engine/tokenizer (llama.cpp's ids), which the tests cross-check against llama_cpp
when that package is installed.

CLI, for inspection:
  python3 bench/haystack.py --tokens 2048 --depth 0.5 --seed 0 [--print-prompt]
"""

import argparse
import bisect
import dataclasses
import functools
import json
import os
import random
import re
import struct
import sys
import unicodedata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.environ.get(
    "KVSERVE_MODEL",
    os.path.join(os.path.expanduser("~"), ".cache/kvserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
DEFAULT_GUTENBERG = os.path.join(os.path.dirname(REPO), "shared", "data", "gutenberg")
# Prose only: the verse and play texts (Milton, Whitman, Shakespeare) have few sentence
# ends, which the depth placement needs.
PROSE_BOOKS = ("austen-emma.txt", "austen-persuasion.txt", "chesterton-thursday.txt",
               "melville-moby_dick.txt")

INTRO = ("There is an important info hidden inside a lot of irrelevant text. "
         "Find it and memorize it. I will quiz you about the important information there.")
QUESTION = "What is the pass key? The pass key is"


def needle_text(key):
    return f"The pass key is {key}. Remember it. {key} is the pass key."


# --- GGUF tokenizer ---------------------------------------------------------------------

class _GgufReader:
    """Reads the key/value header of a GGUF file (v2/v3); tensor data is not touched."""

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}
    _STRING, _ARRAY = 8, 9

    def __init__(self, path):
        with open(path, "rb") as f:
            self.f = f
            if f.read(4) != b"GGUF":
                raise ValueError(f"{path}: not a GGUF file")
            version, = self._unpack("<I")
            if version < 2:
                raise ValueError(f"{path}: GGUF version {version} is not supported")
            _, n_kv = self._unpack("<QQ")
            self.meta = {}
            for _ in range(n_kv):
                key = self._string()
                vtype, = self._unpack("<I")
                self.meta[key] = self._value(vtype)

    def _unpack(self, fmt):
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return struct.unpack(fmt, data)

    def _string(self):
        n, = self._unpack("<Q")
        return self.f.read(n).decode("utf-8", errors="replace")

    def _value(self, vtype):
        if vtype == self._STRING:
            return self._string()
        if vtype == self._ARRAY:
            etype, n = self._unpack("<IQ")
            if etype in self._SCALARS:
                fmt = self._SCALARS[etype]
                size = struct.calcsize(fmt)
                data = self.f.read(size * n)
                return [v for v, in struct.iter_unpack(fmt, data)]
            return [self._value(etype) for _ in range(n)]
        if vtype in self._SCALARS:
            return self._unpack(self._SCALARS[vtype])[0]
        raise ValueError(f"unknown GGUF value type {vtype}")


def _byte_alphabet():
    """GPT-2's reversible byte -> printable code point map of byte-level BPE vocabularies:
    printable Latin-1 bytes stand for themselves, the rest get code points from 256 up."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# Unicode White_Space (what \s means for the pre-tokenizer; str.isspace differs on
# U+001C..U+001F).
_WHITE_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                         + "".join(chr(c) for c in range(0x2000, 0x200B)))


def _cls(ch):
    """'s' white space, 'L' letter, 'N' number, 'o' anything else."""
    if ch in _WHITE_SPACE:
        return "s"
    cat = unicodedata.category(ch)[0]
    return cat if cat in "LN" else "o"


def _split_gpt2(text, start, end, out):
    """Appends (begin, end) of the words of text[start:end] under the gpt-2 pattern
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"""
    i = start
    while i < end:
        c = text[i]
        if c == "'" and i + 1 < end:
            if i + 2 < end and text[i + 1:i + 3] in ("re", "ve", "ll"):
                out.append((i, i + 3))
                i += 3
                continue
            if text[i + 1] in "stmd":
                out.append((i, i + 2))
                i += 2
                continue
        j = i + 1 if (c == " " and i + 1 < end and _cls(text[i + 1]) != "s") else i
        k = _cls(text[j])
        if k != "s":  # ' ?\p{L}+', ' ?\p{N}+' or ' ?[^\s\p{L}\p{N}]+'
            m = j + 1
            while m < end and _cls(text[m]) == k:
                m += 1
            out.append((i, m))
            i = m
            continue
        # White space run starting at i.
        m = i
        while m < end and _cls(text[m]) == "s":
            m += 1
        if m < end and m - i >= 2:
            m -= 1  # the last one joins the next word
        out.append((i, m))
        i = m
    return out


def pre_tokenize(text):
    """(begin, end) character spans of the "smollm" pre-tokenizer's words: every \\p{N}
    code point is a word of its own, the gpt-2 pattern splits the text between them."""
    out, chunk = [], 0
    for i, ch in enumerate(text):
        if _cls(ch) == "N":
            _split_gpt2(text, chunk, i, out)
            out.append((i, i + 1))
            chunk = i + 1
    _split_gpt2(text, chunk, len(text), out)
    return out


class GgufTokenizer:
    """Byte-level BPE encoder built from a GGUF's tokenizer.ggml.* keys.

    Supports tokenizer.ggml.model "gpt2" with pre "smollm"/"starcoder" (SmolLM2), the
    models this benchmark runs; others raise ValueError rather than miscount.
    Not thread-safe (the word cache is unguarded); build one per thread if needed.
    """

    def __init__(self, path):
        meta = _GgufReader(path).meta
        if meta.get("tokenizer.ggml.model") != "gpt2":
            raise ValueError(f"{path}: tokenizer {meta.get('tokenizer.ggml.model')!r} "
                             "is not byte-level BPE (gpt2)")
        pre = meta.get("tokenizer.ggml.pre", "gpt-2")
        if pre not in ("smollm", "starcoder"):
            raise ValueError(f"{path}: pre-tokenizer {pre!r} is not supported here")
        tokens = meta["tokenizer.ggml.tokens"]
        types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
        self.ids = {t: i for i, t in enumerate(tokens) if types[i] in (1, 6)}  # normal, byte
        # Merge text "a b" -> rank; the pair's halves may themselves contain no space.
        self.ranks = {}
        for r, m in enumerate(meta.get("tokenizer.ggml.merges", [])):
            a, _, b = m.partition(" ")
            self.ranks.setdefault((a, b), r)
        self.bos_id = meta.get("tokenizer.ggml.bos_token_id")
        self.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
        self.eos_id = meta.get("tokenizer.ggml.eos_token_id")
        self._alphabet = _byte_alphabet()
        self._cache = {}

    def _encode_word(self, word):
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        syms = [self._alphabet[b] for b in word.encode("utf-8")]
        while len(syms) > 1:
            best, best_rank = -1, None
            for i in range(len(syms) - 1):
                r = self.ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best < 0:
                break
            syms[best:best + 2] = [syms[best] + syms[best + 1]]
        ids = []
        for s in syms:
            if s in self.ids:
                ids.append(self.ids[s])
            else:  # no token for the merged text: its bytes, dropping ones without a token
                ids.extend(self.ids[ch] for ch in s if ch in self.ids)
        self._cache[word] = ids
        return ids

    def word_token_counts(self, text):
        """[(begin, end, n_tokens)] for each pre-tokenizer word of `text`."""
        return [(b, e, len(self._encode_word(text[b:e]))) for b, e in pre_tokenize(text)]

    def encode(self, text, add_bos=None):
        """Token ids as `kvserve serve` computes them for a /v1/completions text prompt."""
        add_bos = self.add_bos if add_bos is None else add_bos
        ids = [self.bos_id] if add_bos and self.bos_id is not None else []
        for b, e in pre_tokenize(text):
            ids.extend(self._encode_word(text[b:e]))
        return ids

    def count(self, text):
        return len(self.encode(text))


@functools.lru_cache(maxsize=4)
def load_tokenizer(model=DEFAULT_MODEL):
    return GgufTokenizer(model)


# --- Haystack text ----------------------------------------------------------------------

# A sentence ends at . ! or ? (then optional closing quotes/brackets) followed by white
# space and a capital letter or an opening quote/bracket; the boundary is where the
# next sentence starts. A full stop after a title or an initial ("Mr. Knightley",
# "G. K. Chesterton") ends no sentence.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[A-Z])")
_WORD_BEFORE = re.compile(r"(\w+)$")
_ABBREVIATIONS = frozenset(
    "mr mrs messrs dr st mt capt col gen lt sgt rev hon esq jr sr prof no vol ch viz etc vs"
    .split())


def _ends_sentence(text, m):
    if text[m.start()] != ".":
        return True
    w = _WORD_BEFORE.search(text, 0, m.start())
    if w is None:
        return True
    word = w.group(1)
    return not (word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper()))


def _sentence_ends(text, pos=0):
    for m in _SENTENCE_END.finditer(text, pos):
        if _ends_sentence(text, m):
            yield m


def sentence_boundaries(text):
    """Sorted character offsets where sentences of `text` start, including 0 and len."""
    out = [0]
    out.extend(m.end() for m in _sentence_ends(text) if 0 < m.end() < len(text))
    if len(text) > 0:
        out.append(len(text))
    return out


@functools.lru_cache(maxsize=16)
def load_book(path):
    """The book as one line: every white space run (line wraps, paragraph breaks)
    becomes a single space, so sentences and token counts do not depend on layout."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return " ".join(f.read().split())


def gutenberg_available(gutenberg_dir=DEFAULT_GUTENBERG):
    return all(os.path.isfile(os.path.join(gutenberg_dir, b)) for b in PROSE_BOOKS)


@dataclasses.dataclass
class NeedlePrompt:
    """A prompt of filler text with one or more needle lines; the top-level needle
    fields describe the first needle (the one the question asks about)."""

    prompt: str
    seed: object
    target_tokens: int        # requested prompt length
    n_tokens: int             # actual prompt length (BOS included if the model adds one)
    depth: float              # requested depth, fraction of the haystack's tokens
    haystack: str             # the filler text, without the needles
    needle_char_offset: int   # where the needle goes in `haystack` (a sentence start)
    depth_chars: float        # needle_char_offset / len(haystack)
    depth_tokens: float       # haystack tokens before the needle / all haystack tokens
    needle_token_offset: int  # prompt tokens before the needle's first token
    book: str
    book_offset: int          # character offset of the haystack in the normalised book
    # Every needle in the order given: {"text", "depth", "char_offset", "depth_tokens",
    # "token_offset"} with the meanings of the fields above.
    needles: list = dataclasses.field(default_factory=list)

    def summary(self):
        d = dataclasses.asdict(self)
        del d["prompt"], d["haystack"]
        return d


@dataclasses.dataclass
class PasskeyPrompt(NeedlePrompt):
    key: str = ""             # the 5 digits the model should answer


def _join(parts):
    # Every part is a line of its own; an empty part (no text before a needle at depth 0)
    # is left out rather than leaving a blank line.
    return "\n".join(p for p in parts if p)


def _cumulative_tokens(tok, haystack):
    """(word ends, cumulative token counts) of the haystack's pre-tokenizer words."""
    ends, cum = [], [0]
    for _, e, n in tok.word_token_counts(haystack):
        ends.append(e)
        cum.append(cum[-1] + n)
    return ends, cum


def nearest_boundary(haystack, ends, cum, depth):
    """The sentence start of `haystack` whose token offset is nearest to depth * (the
    haystack's tokens); ties go to the earlier one. (ends, cum) from _cumulative_tokens."""
    target = depth * cum[-1]

    def tokens_before(b):
        # The text before the needle ends in a non-space, where a word always ends, so
        # its tokens are those of the words ending there or earlier.
        return cum[bisect.bisect_right(ends, len(haystack[:b].rstrip()))]

    return min(sentence_boundaries(haystack),
               key=lambda x: (abs(tokens_before(x) - target), x))


def insert_needles(tok, haystack, needles, intro, question):
    """Places each (text, depth) of `needles` as a line of its own at the sentence
    boundary of `haystack` nearest its depth (in tokens); returns (prompt, [placement])
    with each placement {"text", "depth", "char_offset", "depth_tokens", "token_offset"}
    in the order of `needles`. Needles that fall on the same boundary keep their order."""
    ends, cum = _cumulative_tokens(tok, haystack)
    offsets = [nearest_boundary(haystack, ends, cum, d) for _, d in needles]
    order = sorted(range(len(needles)), key=lambda i: (offsets[i], i))
    # Filler segments between consecutive needles, white space at the cuts trimmed.
    cuts = [0] + [offsets[i] for i in order] + [len(haystack)]
    segments = [haystack[cuts[k]:cuts[k + 1]].strip() for k in range(len(cuts) - 1)]
    seg_tokens = [tok.count(x) if x else 0 for x in segments]
    parts = [intro, segments[0]]
    placements = [None] * len(needles)
    for rank, i in enumerate(order):
        # Lines are tokenised independently ("\n" is a word of its own), so the tokens
        # before the needle are those of the text before it plus its line break.
        token_offset = tok.count(_join(parts) + "\n")
        placements[i] = {
            "text": needles[i][0], "depth": needles[i][1], "char_offset": offsets[i],
            "depth_tokens": sum(seg_tokens[:rank + 1]) / max(1, sum(seg_tokens)),
            "token_offset": token_offset}
        parts += [needles[i][0], segments[rank + 1]]
    parts.append(question)
    return _join(parts), placements


def make_needle_prompt(n_tokens, needles, rng, intro, question, seed=None, tokenizer=None,
                       gutenberg_dir=DEFAULT_GUTENBERG, cls=NeedlePrompt, **fields):
    """A prompt of n_tokens tokens: `intro`, Gutenberg prose with each (text, depth) of
    `needles` inserted by insert_needles, then `question`, one part a line.

    `rng` (random.Random) picks the book and the offset in it - two draws, after any the
    caller made - so a caller that seeds it from the seed alone gets the same text at
    every depth. The haystack is cut so the whole prompt has n_tokens tokens (to within
    a token or two). The first needle fills the top-level fields of the result; `cls` and
    `fields` let a caller return a subclass (PasskeyPrompt with its key).
    """
    if not needles:
        raise ValueError("at least one needle is needed")
    for _, depth in needles:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth {depth} is not in [0, 1]")
    tok = tokenizer or load_tokenizer()
    fixed = tok.count(_join([intro, *(text for text, _ in needles), question]))
    if n_tokens <= fixed + 16:
        raise ValueError(f"{n_tokens} tokens leave no room for a haystack "
                         f"(intro, needles and question take {fixed})")

    # Text to cut from: about 4.4 characters a token in this prose; take plenty.
    need_chars = int((n_tokens - fixed) * 8) + 4096
    books = [b for b in PROSE_BOOKS
             if len(load_book(os.path.join(gutenberg_dir, b))) > need_chars * 2]
    if not books:
        raise ValueError(f"no book in {gutenberg_dir} is long enough for {n_tokens} tokens")
    book = rng.choice(books)
    text = load_book(os.path.join(gutenberg_dir, book))
    start = rng.randrange(0, len(text) - need_chars)
    m = next(_sentence_ends(text, start), None)  # begin at a sentence start
    start = m.end() if m else start
    chunk = text[start:start + need_chars]
    words = tok.word_token_counts(chunk)
    cum = [0]
    for _, _, n in words:
        cum.append(cum[-1] + n)

    def cut(budget, partial):
        # The longest word prefix of the chunk with at most `budget` tokens; with
        # `partial`, extended by the longest start of the next word that still fits (a
        # word of several tokens would otherwise make some lengths unreachable).
        lo, hi = 0, len(words)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cum[mid] <= budget:
                lo = mid
            else:
                hi = mid - 1
        end = words[lo - 1][1] if lo > 0 else 0
        if partial and lo < len(words) and cum[lo] < budget:
            b, e, _ = words[lo]
            end = next((k for k in range(e - 1, b, -1)
                        if tok.count(chunk[b:k]) <= budget - cum[lo]), end)
        return chunk[:end].rstrip()

    # The parts are tokenised independently, so the length is nearly additive; a few
    # corrections settle the white space trimmed at the cuts. Whole words first; only if
    # that cannot hit the length exactly, a cut inside the last word.
    best = None
    for partial in (False, True):
        budget = n_tokens - fixed if best is None else best[0]
        for _ in range(8):
            haystack = cut(budget, partial)
            prompt, placements = insert_needles(tok, haystack, needles, intro, question)
            n = tok.count(prompt)
            if best is None or abs(n - n_tokens) < abs(best[1] - n_tokens):
                best = (budget, n, haystack, prompt, placements)
            if n == n_tokens:
                break
            budget += n_tokens - n
        if best[1] == n_tokens:
            break
    _, n, haystack, prompt, placements = best
    first = placements[0]
    return cls(
        prompt=prompt, seed=seed, target_tokens=n_tokens, n_tokens=n, depth=needles[0][1],
        haystack=haystack, needle_char_offset=first["char_offset"],
        depth_chars=first["char_offset"] / len(haystack) if haystack else 0.0,
        depth_tokens=first["depth_tokens"], needle_token_offset=first["token_offset"],
        book=book, book_offset=start, needles=placements, **fields)


def make_passkey_prompt(n_tokens, depth, seed, tokenizer=None, gutenberg_dir=DEFAULT_GUTENBERG):
    """A passkey prompt of n_tokens tokens with the needle at `depth` (0..1) of the
    haystack. `seed` (int or str) alone picks the key, the book and the offset."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth {depth} is not in [0, 1]")
    rng = random.Random(f"kvserve-passkey:{seed}")
    key = str(rng.randrange(10000, 100000))
    return make_needle_prompt(n_tokens, [(needle_text(key), depth)], rng, INTRO, QUESTION,
                              seed=seed, tokenizer=tokenizer, gutenberg_dir=gutenberg_dir,
                              cls=PasskeyPrompt, key=key)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=2048, help="prompt length in model tokens")
    ap.add_argument("--depth", type=float, default=0.5, help="needle depth, 0..1 of the haystack")
    ap.add_argument("--seed", default="0", help="seed (int or string)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="GGUF whose tokenizer counts tokens")
    ap.add_argument("--gutenberg", default=DEFAULT_GUTENBERG, help="directory of the books")
    ap.add_argument("--print-prompt", action="store_true", help="print the prompt itself")
    args = ap.parse_args(argv)
    seed = int(args.seed) if args.seed.lstrip("-").isdigit() else args.seed
    p = make_passkey_prompt(args.tokens, args.depth, seed, load_tokenizer(args.model),
                            args.gutenberg)
    print(json.dumps(p.summary(), indent=2))
    if args.print_prompt:
        print(p.prompt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
