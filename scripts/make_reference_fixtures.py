#!/usr/bin/env python3
"""Generates the llama.cpp reference fixtures under tests/fixtures/.

llama.cpp (through llama-cpp-python, which vendors a pinned llama.cpp) is the
independent reference that kvserve's tokenizer, forward pass and perplexity are
tested against. This script writes three files:

  tokenizer_reference.json   token ids (and byte-exact detokenisation) for a corpus
                             of ~90 texts chosen to exercise the byte-level BPE
                             pre-tokeniser and special-token parsing.
  logits_reference.json      for three prompts (~6, ~200, ~1050 tokens), at every
                             position: the top-20 token ids with their raw logits
                             and the log-sum-exp of the whole logit row.
  perplexity_reference.json  WikiText-2 test perplexity over its first 4096 tokens
                             at context 1024 (4 chunks) and 4096 (1 chunk).

Every file records the model's SHA-256, llama_cpp.__version__, the vendored
llama.cpp commit and the command line. The output is deterministic: no clocks, no
sampling, fixed thread count, sorted top-k with id as the tie-break.

Usage (from the repository root):
  python3 scripts/make_reference_fixtures.py [--model PATH] [--out tests/fixtures]
      [--data ../shared/data] [--only tokenizer,logits,perplexity]
"""

import argparse
import base64
import ctypes
import hashlib
import json
import math
import os
import platform
import sys

import numpy as np

import llama_cpp
from llama_cpp import Llama

# The llama.cpp commit vendored in llama-cpp-python 0.3.36 (its CHANGELOG entry for
# 0.3.36: "update llama.cpp to ggml-org/llama.cpp@0c1e57098"). The binding does not
# expose the commit at run time, so it is pinned here next to the version it belongs to.
VENDORED_LLAMA_CPP = {"0.3.36": "0c1e57098"}

DEFAULT_MODEL = os.environ.get(
    "KVSERVE_MODEL",
    os.path.join(os.path.expanduser("~"), ".cache/kvserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
)

N_THREADS = 2
TOP_K = 20


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_text(path):
    # Bytes then UTF-8: no newline translation (wiki.test.raw has CRLF line ends).
    with open(path, "rb") as f:
        return f.read().decode("utf-8")


def f32(x):
    """A float32 value as the shortest decimal that round-trips through float32."""
    return float(f"{float(x):.9g}")


def f64(x):
    return float(repr(float(x)))


# ---------------------------------------------------------------------------
# Tokeniser corpus
# ---------------------------------------------------------------------------

# Written for this corpus (not taken from any project): a small, self-contained
# module with the usual Python surface syntax -- decorators, type hints,
# f-strings, nested blocks, comprehensions, docstrings, comments, escapes.
PYTHON_SNIPPET = '''"""Inventory bookkeeping for a small warehouse simulation."""

from __future__ import annotations

import dataclasses
import heapq
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Tuple


@dataclasses.dataclass(order=True)
class Shipment:
    due_day: int
    sku: str = dataclasses.field(compare=False)
    quantity: int = dataclasses.field(compare=False, default=1)
    note: Optional[str] = dataclasses.field(compare=False, default=None)

    def describe(self) -> str:
        suffix = f" ({self.note})" if self.note else ""
        return f"day {self.due_day:>3}: {self.quantity:4d} x {self.sku!r}{suffix}"


class Warehouse:
    """Tracks stock per SKU and a queue of incoming shipments.

    Not thread-safe: callers serialise access themselves.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._stock: Dict[str, int] = defaultdict(int)
        self._incoming: List[Shipment] = []
        self._log: List[Tuple[int, str]] = []

    @property
    def used(self) -> int:
        return sum(self._stock.values())

    def schedule(self, shipment: Shipment) -> None:
        heapq.heappush(self._incoming, shipment)

    def advance_to(self, day: int) -> int:
        """Receives every shipment due on or before `day`; returns units received."""
        received = 0
        while self._incoming and self._incoming[0].due_day <= day:
            s = heapq.heappop(self._incoming)
            room = self.capacity - self.used
            take = min(room, s.quantity)
            if take < s.quantity:
                self._log.append((day, f"rejected {s.quantity - take} of {s.sku}"))
            self._stock[s.sku] += take
            received += take
        return received

    def pick(self, order: Iterable[Tuple[str, int]]) -> bool:
        order = list(order)
        if any(self._stock.get(sku, 0) < n for sku, n in order):
            return False
        for sku, n in order:
            self._stock[sku] -= n
            if self._stock[sku] == 0:
                del self._stock[sku]
        return True

    def report(self) -> str:
        lines = ["SKU        units", "-" * 16]
        for sku in sorted(self._stock):
            lines.append(f"{sku:<10} {self._stock[sku]:>5}")
        lines.append(f"total      {self.used:>5}\\t(cap {self.capacity})")
        return "\\n".join(lines)


def main() -> None:
    # Capacity is deliberately small so that the last shipment is partly refused.
    wh = Warehouse(capacity=500)
    for day, sku, qty in [(1, "bolt-m6", 200), (2, "nut-m6", 250), (2, "washer", 100)]:
        wh.schedule(Shipment(day, sku, qty, note="initial" if day == 1 else None))
    print(wh.advance_to(2), "units received")
    ok = wh.pick([("bolt-m6", 50), ("nut-m6", 50)])
    print("picked" if ok else "short", wh.report(), sep="\\n")


if __name__ == "__main__":
    main()
'''


def tokenizer_corpus(data_dir):
    """Returns [(name, text, parse_special, extra_fields)]."""
    c = []

    def add(name, text, parse_special=False, **extra):
        c.append((name, text, parse_special, extra))

    # ASCII prose
    add("prose_hello", "Hello world")
    add("prose_sentence", "The quick brown fox jumps over the lazy dog.")
    add("prose_leading_space", " Hello")
    add("prose_paragraph",
        "It was a bright cold day in April. The committee met at noon, argued for an hour, "
        "and adjourned without a vote; nobody was surprised.")
    add("prose_caps", "HELLO WORLD, THIS IS LOUD.")
    add("prose_identifiers", "camelCase snake_case SCREAMING_SNAKE kebab-case PascalCase")
    add("prose_repeated_words", "the the the the the")
    add("prose_single_char", "a")
    add("prose_repeated_char", "a" * 50)
    # Code, indentation, tabs
    add("code_python_indent", "def f(x):\n    if x:\n        return x * 2\n    return None\n")
    add("code_c_tabs",
        "int main() {\n\tfor (int i = 0; i < 10; ++i) {\n\t\tprintf(\"%d\\n\", i);\n\t}\n\treturn 0;\n}\n")
    add("code_json", '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}')
    add("code_html", '<div class="x">&amp; <br/></div>')
    add("code_regex", r"^\s*(\d+)\.(\w+)$")
    add("code_shell", "ls -la | grep -E '^d' && echo $HOME # comment")
    add("code_url_email", "https://example.com/path?q=1&r=two#frag user@example.org")
    add("code_dunder", "__init__ self.__dict__ _private")
    add("code_markdown",
        "# Title\n\n- item 1\n- item 2\n\n**bold** _it_ `code`\n\n| a | b |\n|---|---|\n")
    # Whitespace
    add("ws_empty", "")
    add("ws_single_space", " ")
    add("ws_two_spaces", "  ")
    add("ws_three_newlines", "\n\n\n")
    add("ws_trailing_spaces", "trailing spaces   ")
    add("ws_leading_spaces_x", "   x")
    add("ws_two_tabs", "\t\t")
    add("ws_space_run_then_word", " " * 17 + "end")
    add("ws_mixed", " \t \n \r\n  \n\t x")
    add("ws_crlf", "line1\r\nline2\r\n")
    add("ws_newlines_between_words", "\nHello\n\nWorld\n")
    add("ws_spaces_between_letters", "a  b   c    d")
    add("ws_space_run_newline_indent", "x" + " " * 40 + "\n" + " " * 8 + "y")
    add("ws_newline_space_mix", "a\n \n  \n   b")
    # Numbers
    add("num_int", "1234567")
    add("num_pi", "3.14159")
    add("num_thousands", "1,000,000")
    add("num_date", "2024-11-29")
    add("num_long", "12345678901234567890")
    add("num_mixed", "Call 555-0123 at 10:30am, room 42B, 0.5% off $19.99")
    add("num_sci_hex", "6.022e23 -1.5E-10 0x1F 0b1010")
    add("num_spaced", " 1 22 333 4444 55555")
    # Punctuation
    add("punct_runs", "!!!???...")
    add("punct_arrow", "--->")
    add("punct_equals", "===")
    add("punct_dashes", "----------")
    add("punct_brackets", "(a) [b] {c} <d> 'e' \"f\" `g` ~h~ ^i^ |j| \\k\\ /l/")
    add("punct_unicode", "Wait\u2026 \u201cquoted\u201d \u2018single\u2019 \u2014 dash \u2013 en")
    # Contractions
    add("contractions_lower", "don't can't won't it's we're")
    add("contractions_upper", "I'LL DON'T THEY'VE HE'D")
    add("contractions_mixed", "they've I'm you'd She'll O'Neill's")
    add("contractions_curly", "It\u2019s rock \u2019n\u2019 roll")
    # Accented Latin
    add("latin_french",
        "Les \u00e9l\u00e8ves ont r\u00e9pondu \u00e0 la question : \u00ab O\u00f9 est la "
        "biblioth\u00e8que ? \u00bb \u00c7a va tr\u00e8s bien, merci.")
    add("latin_german",
        "Gr\u00f6\u00dfere Stra\u00dfen f\u00fchren \u00fcber die Br\u00fccke. \u00c4pfel, "
        "\u00d6l und \u00dcbung machen den Meister.")
    add("latin_polish", "Za\u017c\u00f3\u0142\u0107 g\u0119\u015bl\u0105 ja\u017a\u0144. "
        "\u0141\u00f3d\u017a jest pi\u0119kna.")
    add("latin_vietnamese",
        "Ti\u1ebfng Vi\u1ec7t c\u00f3 nhi\u1ec1u d\u1ea5u: \u1ea3, \u1eab, \u1ed9, \u1eeb, "
        "\u1ef9. Xin ch\u00e0o th\u1ebf gi\u1edbi!")
    add("latin_spanish", "\u00bfD\u00f3nde est\u00e1 el ni\u00f1o? \u00a1Ma\u00f1ana!")
    add("latin_single_accent", "\u00e9")
    add("latin_combining", "e\u0301 vs \u00e9, n\u0303 vs \u00f1, a\u030a")
    # CJK
    add("cjk_chinese", "我们今天去北京的图书馆看书，天气很好。")
    add("cjk_chinese_traditional", "臺灣的繁體中文與簡體中文不同。")
    add("cjk_japanese", "東京は日本の首都です。ひらがなとカタカナ、そして漢字。")
    add("cjk_korean", "안녕하세요, 세계! 한국어 문장입니다.")
    add("cjk_fullwidth", "ＡＢＣ１２３！")
    # Emoji
    add("emoji_simple", "I love pizza \U0001F355 and cats \U0001F431!")
    add("emoji_zwj_family", "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466")
    add("emoji_zwj_mixed",
        "\U0001F469\U0001F3FD\u200d\U0001F4BB at work, \U0001F3F3\ufe0f\u200d\U0001F308 flag")
    add("emoji_flags", "\U0001F1EB\U0001F1F7\U0001F1E9\U0001F1EA\U0001F1EF\U0001F1F5\U0001F1FA\U0001F1F8")
    add("emoji_skin_tones", "\U0001F44D\U0001F3FB\U0001F44D\U0001F3FF")
    add("emoji_keycaps", "1\ufe0f\u20e3 #\ufe0f\u20e3")
    # Other scripts
    add("script_arabic", "مرحبا بالعالم، كيف حالك اليوم؟")
    add("script_hindi", "नमस्ते दुनिया, आप कैसे हैं?")
    add("script_cyrillic", "Привет, мир! Съешь же ещё этих мягких французских булок.")
    add("script_greek", "Καλημέρα κόσμε, αβγδε ΑΒΓΔΕ.")
    add("script_hebrew", "שלום עולם")
    add("script_thai", "สวัสดีชาวโลก")
    # Mixed scripts and odd code points
    add("mixed_scripts",
        "English, 中文, русский, العربية, हिन्दी, 日本語 and emoji \U0001F389 in one line.")
    add("mixed_code_cjk", "print('你好') # 挨拶 \u2014 привет")
    add("mixed_math", "∀x ∈ ℝ: x² ≥ 0 ⇒ √(x²) = |x| ≈ π ≠ ∞")
    add("mixed_zero_width", "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom")
    # Special tokens: parsed vs. treated as plain text
    chat = "<|im_start|>user\nhi<|im_end|>\n"
    add("special_chat_parsed", chat, True)
    add("special_chat_unparsed", chat, False)
    eot = "<|endoftext|>Hello<|endoftext|>"
    add("special_endoftext_parsed", eot, True)
    add("special_endoftext_unparsed", eot, False)
    add("special_chat_template_parsed",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n<|im_start|>assistant\n", True)
    add("special_glued_parsed", "a<|im_end|>b", True)
    add("special_incomplete_parsed", "<|im_start", True)
    add("special_file_sep_parsed", "<file_sep>main.py", True)
    add("special_none_present_parsed", "Hello world", True)
    add("special_space_before_parsed", " <|im_start|> x", True)
    # Long cases
    wiki = read_text(os.path.join(data_dir, "wikitext-2-raw/wiki.test.raw"))
    add("long_wikitext_20000", wiki[:20000], False,
        source="wikitext-2-raw/wiki.test.raw", char_range=[0, 20000])
    book = read_text(os.path.join(data_dir, "gutenberg/melville-moby_dick.txt"))
    add("long_gutenberg_10000", book[20000:30000], False,
        source="gutenberg/melville-moby_dick.txt", char_range=[20000, 30000])
    add("long_python_3000", PYTHON_SNIPPET, False, source="written for this corpus")
    return c


def detokenize(llm, ids, unparse_special):
    """llama.cpp's own llama_detokenize (remove_special=False): the bytes, unmodified."""
    n = len(ids)
    arr = (llama_cpp.llama_token * max(n, 1))(*ids)
    cap = max(64, 8 * n)
    while True:
        buf = ctypes.create_string_buffer(cap)
        got = llama_cpp.llama_detokenize(llm._model.vocab, arr, n, buf, cap, False, unparse_special)
        if got >= 0:
            return buf.raw[:got]
        cap = -got + 1


def make_tokenizer(model, data_dir, header):
    llm = Llama(model_path=model, vocab_only=True, verbose=False)
    cases = []
    names = set()
    for name, text, parse_special, extra in tokenizer_corpus(data_dir):
        assert name not in names, name
        names.add(name)
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=parse_special)
        case = {"name": name, "text": text, "add_bos": False, "parse_special": parse_special}
        case.update(extra)
        case["ids"] = [int(i) for i in ids]
        case["decoded_b64"] = base64.b64encode(detokenize(llm, ids, False)).decode("ascii")
        case["decoded_special_b64"] = base64.b64encode(detokenize(llm, ids, True)).decode("ascii")
        cases.append(case)
    out = dict(header)
    out["description"] = (
        "ids = Llama(model, vocab_only=True).tokenize(text.encode('utf-8'), add_bos=False, "
        "special=parse_special). decoded_b64 / decoded_special_b64 = base64 of the bytes of "
        "llama_detokenize(ids, remove_special=False, unparse_special=False / True).")
    out["cases"] = cases
    return out


# ---------------------------------------------------------------------------
# Logits
# ---------------------------------------------------------------------------

def prefix_with_tokens(llm, text, target, lo, hi):
    """Shortest whitespace-terminated prefix of `text` whose token count is >= target.

    Cutting just before a space or newline keeps tokenize(prefix) a prefix-consistent
    tokenisation; the result must land in [lo, hi] tokens.
    """
    def count(s):
        return len(llm.tokenize(s.encode("utf-8"), add_bos=False, special=False))

    # Token counts grow monotonically enough with length for a forward scan.
    end = 0
    for i, ch in enumerate(text):
        if ch in " \n" and i > 0 and text[i - 1] not in " \n\r":
            if count(text[:i]) >= target:
                end = i
                break
    assert end > 0, "text too short"
    s = text[:end]
    n = count(s)
    assert lo <= n <= hi, (n, lo, hi)
    return s


def logits_prompts(tok, data_dir):
    wiki = read_text(os.path.join(data_dir, "wikitext-2-raw/wiki.test.raw"))
    w0 = wiki.index("\n = = Aftermath = = ", 100000) + 1
    emma = read_text(os.path.join(data_dir, "gutenberg/austen-emma.txt"))
    e0 = emma.index("Emma Woodhouse, handsome")
    return [
        ("capital_of_france", "The capital of France is", "literal"),
        ("wikitext_200", prefix_with_tokens(tok, wiki[w0:], 200, 195, 210),
         f"wikitext-2-raw/wiki.test.raw from char {w0}"),
        ("emma_1050", prefix_with_tokens(tok, emma[e0:], 1050, 1040, 1070),
         f"gutenberg/austen-emma.txt from char {e0}"),
    ]


def top_k_rows(scores, k):
    """Per row: top-k ids (logit descending, then id ascending) and float64 LSE."""
    ids_out, vals_out, lse_out = [], [], []
    for row in scores:
        order = np.lexsort((np.arange(row.shape[0]), -row.astype(np.float64)))[:k]
        r64 = row.astype(np.float64)
        m = r64.max()
        lse = m + math.log(np.exp(r64 - m).sum())
        ids_out.append([int(i) for i in order])
        vals_out.append([f32(row[i]) for i in order])
        lse_out.append(f64(lse))
    return ids_out, vals_out, lse_out


def context_settings(n_ctx, n_batch):
    return {"n_ctx": n_ctx, "n_batch": n_batch, "n_ubatch": 512, "n_threads": N_THREADS,
            "n_threads_batch": N_THREADS, "seed": 0, "flash_attn": False,
            "type_k": "f16 (llama.cpp default)", "type_v": "f16 (llama.cpp default)",
            "logits_all": True, "n_gpu_layers": 0}


def new_context(model, n_ctx, n_batch):
    return Llama(model_path=model, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=512,
                 logits_all=True, n_threads=N_THREADS, n_threads_batch=N_THREADS, seed=0,
                 flash_attn=False, n_gpu_layers=0, verbose=False)


def eval_fresh(llm, ids):
    """Evaluates `ids` from an empty KV cache; returns float32 logits [len(ids), n_vocab]."""
    llm.reset()                                 # n_tokens = 0 ...
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)         # ... and an explicitly empty cache
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32, copy=True)


def make_logits(model, data_dir, header):
    tok = Llama(model_path=model, vocab_only=True, verbose=False)
    llm = new_context(model, 2048, 2048)
    prompts = []
    for name, text, source in logits_prompts(tok, data_dir):
        ids = tok.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        scores = eval_fresh(llm, ids)
        top_ids, top_logits, lse = top_k_rows(scores, TOP_K)
        prompts.append({"name": name, "source": source, "text": text, "n_tokens": len(ids),
                        "ids": [int(i) for i in ids], "top_ids": top_ids,
                        "top_logits": top_logits, "logsumexp": lse})
        print(f"logits: {name}: {len(ids)} tokens, argmax after last = {top_ids[-1][0]}",
              file=sys.stderr)
    out = dict(header)
    out["settings"] = context_settings(2048, 2048)
    out["top_k"] = TOP_K
    out["description"] = (
        "Each prompt is tokenised with add_bos=False, special=False and evaluated from an "
        "empty KV cache in one llama_decode call (n_batch 2048, split by llama.cpp into "
        "ubatches of 512) with logits for every position. Row j holds the logits after "
        "tokens ids[0..j] (i.e. the prediction of token j+1). top_ids[j]: the 20 highest "
        "logits, descending, ties by ascending id; top_logits[j]: those raw float32 logits "
        "printed with 9 significant digits (exact float32 round trip); logsumexp[j]: "
        "log(sum(exp(row))) over all n_vocab logits, computed in float64 numpy. "
        "log_softmax(row)[t] = logit[t] - logsumexp[j].")
    out["prompts"] = prompts
    return out


# ---------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------

def make_perplexity(model, data_dir, header):
    path = os.path.join(data_dir, "wikitext-2-raw/wiki.test.raw")
    with open(path, "rb") as f:
        raw = f.read()
    tok = Llama(model_path=model, vocab_only=True, verbose=False)
    all_ids = tok.tokenize(raw.decode("utf-8").encode("utf-8"), add_bos=False, special=False)
    n_tokens = 4096
    ids = [int(i) for i in all_ids[:n_tokens]]
    results = []
    for ctx in (1024, 4096):
        llm = new_context(model, ctx, ctx)
        nll_sum, n_scored, chunk_ppl = 0.0, 0, []
        for c in range(n_tokens // ctx):
            chunk = ids[c * ctx:(c + 1) * ctx]
            scores = eval_fresh(llm, chunk).astype(np.float64)  # [ctx, n_vocab]
            m = scores[:-1].max(axis=1, keepdims=True)
            lse = (m[:, 0] + np.log(np.exp(scores[:-1] - m).sum(axis=1)))
            target = np.asarray(chunk[1:])
            nll = lse - scores[np.arange(ctx - 1), target]
            nll_sum += float(nll.sum())
            n_scored += ctx - 1
            chunk_ppl.append(f64(math.exp(float(nll.mean()))))
        ppl = math.exp(nll_sum / n_scored)
        print(f"perplexity: ctx {ctx}: {n_tokens // ctx} chunks, ppl {ppl:.6f}", file=sys.stderr)
        results.append({"ctx": ctx, "n_chunks": n_tokens // ctx, "n_scored": n_scored,
                        "mean_nll": f64(nll_sum / n_scored), "ppl": f64(ppl),
                        "chunk_ppl": chunk_ppl, "settings": context_settings(ctx, ctx)})
        del llm
    out = dict(header)
    out.update({
        "file": "../shared/data/wikitext-2-raw/wiki.test.raw",
        "file_sha256": hashlib.sha256(raw).hexdigest(),
        "n_tokens_file": len(all_ids),
        "n_tokens": n_tokens,
        "first_16_ids": ids[:16],
        "description": (
            "The whole file (bytes decoded as UTF-8, CRLF kept) is tokenised with "
            "add_bos=False, special=False; its first n_tokens ids are split into "
            "n_tokens/ctx chunks of ctx tokens. Each chunk is evaluated from an empty KV "
            "cache in one llama_decode call (n_batch = n_ctx = ctx, ubatch 512). Scored: "
            "-log_softmax(logits after chunk[0..j])[chunk[j+1]] for j = 0..ctx-2, log-softmax "
            "in float64 numpy from llama.cpp's float32 logits. ppl = exp(mean over all "
            "chunks' scored positions); chunk_ppl per chunk."),
        "results": results,
    })
    return out


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--only", default="tokenizer,logits,perplexity")
    args = ap.parse_args()

    version = llama_cpp.__version__
    header = {
        "model_file": os.path.basename(args.model),
        "model_sha256": sha256_file(args.model),
        "generator": {
            "script": "scripts/make_reference_fixtures.py",
            "command": "python3 " + " ".join(["scripts/make_reference_fixtures.py"] + sys.argv[1:]),
            "llama_cpp_python": version,
            "llama_cpp_commit": VENDORED_LLAMA_CPP.get(version, "unknown"),
            # CPU paths used for the logits (AVX512, weight repacking, ...): float
            # results depend on them in the last bits.
            "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    os.makedirs(args.out, exist_ok=True)
    only = set(args.only.split(","))
    if "tokenizer" in only:
        write_json(os.path.join(args.out, "tokenizer_reference.json"),
                   make_tokenizer(args.model, args.data, header))
    if "logits" in only:
        write_json(os.path.join(args.out, "logits_reference.json"),
                   make_logits(args.model, args.data, header))
    if "perplexity" in only:
        write_json(os.path.join(args.out, "perplexity_reference.json"),
                   make_perplexity(args.model, args.data, header))


if __name__ == "__main__":
    main()
