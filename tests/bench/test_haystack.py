"""Tests of bench/haystack.py, the passkey prompt generator.

The tests that build prompts need the model file (for its tokenizer) and the Gutenberg
books in ../shared/data/gutenberg; without them they skip. The cross-check against
llama.cpp's tokenizer needs a python3 with the llama_cpp package; without it it skips.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import haystack  # noqa: E402

MODEL = haystack.DEFAULT_MODEL
GUTENBERG = haystack.DEFAULT_GUTENBERG


@pytest.fixture(scope="module")
def tok():
    if not os.path.isfile(MODEL):
        pytest.skip(f"model file {MODEL} is missing")
    if not haystack.gutenberg_available(GUTENBERG):
        pytest.skip(f"Gutenberg books are missing from {GUTENBERG}")
    return haystack.GgufTokenizer(MODEL)


def make(tok, n_tokens, depth, seed):
    return haystack.make_passkey_prompt(n_tokens, depth, seed, tok, GUTENBERG)


# --- model-free pieces ------------------------------------------------------------------

def test_pre_tokenizer_splits_digits_and_keeps_one_space_for_the_next_word():
    text = "I'm  here 123 they'll\n\nGo!"
    words = [text[b:e] for b, e in haystack.pre_tokenize(text)]
    assert words == ["I", "'m", " ", " here", " ", "1", "2", "3", " they", "'ll", "\n", "\n",
                     "Go", "!"]
    assert "".join(words) == text


def test_sentence_boundaries_skip_titles_and_initials():
    text = 'Mr. Knightley came. "Oh!" said G. K. Chesterton. Why? It rained.'
    b = haystack.sentence_boundaries(text)
    starts = [text[x:x + 6] for x in b[:-1]]
    assert starts == ["Mr. Kn", '"Oh!" ', "Why? I", "It rai"]
    assert b[0] == 0 and b[-1] == len(text)


# --- prompts ----------------------------------------------------------------------------

def test_same_seed_gives_the_same_prompt(tok):
    a = make(tok, 2048, 0.3, 7)
    # A fresh tokenizer, so no state carried in the word cache matters.
    b = make(haystack.GgufTokenizer(MODEL), 2048, 0.3, 7)
    assert a.prompt == b.prompt
    assert a.summary() == b.summary()


def test_seed_alone_fixes_key_and_text_across_depths(tok):
    shallow, deep = make(tok, 2048, 0.1, 11), make(tok, 2048, 0.9, 11)
    assert shallow.key == deep.key
    assert shallow.haystack == deep.haystack
    assert shallow.prompt != deep.prompt


def test_different_seeds_give_different_keys_and_text(tok):
    prompts = [make(tok, 1024, 0.5, s) for s in range(20)]
    keys = [p.key for p in prompts]
    assert all(len(k) == 5 and k.isdigit() and k[0] != "0" for k in keys)
    assert len(set(keys)) >= 19, keys
    assert len({p.haystack for p in prompts}) == 20


@pytest.mark.parametrize("n_tokens", [1024, 2048, 4096, 8184])
@pytest.mark.parametrize("depth,seed", [(0.0, 1), (0.3, 2), (0.9, 3)])
def test_prompt_has_the_requested_token_length(tok, n_tokens, depth, seed):
    p = make(tok, n_tokens, depth, seed)
    assert p.n_tokens == len(tok.encode(p.prompt))
    assert abs(p.n_tokens - n_tokens) <= 0.01 * n_tokens, (p.n_tokens, n_tokens)


@pytest.mark.parametrize("n_tokens", [2048, 8184])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
def test_needle_is_at_the_sentence_boundary_nearest_the_depth(tok, n_tokens, depth):
    p = make(tok, n_tokens, depth, 5)
    hay, off = p.haystack, p.needle_char_offset
    bounds = haystack.sentence_boundaries(hay)
    assert off in bounds

    # Depth is measured in tokens: the needle must be at one end of the sentence that
    # holds the requested token position (found by bisection; tokens before a sentence
    # start grow with it).
    def tokens_before(b):
        return tok.count(hay[:b].rstrip())

    target = depth * tok.count(hay)
    lo, hi = 0, len(bounds) - 1
    while lo < hi:  # last boundary with tokens_before <= target
        mid = (lo + hi + 1) // 2
        if tokens_before(bounds[mid]) <= target:
            lo = mid
        else:
            hi = mid - 1
    start = bounds[lo]
    end = start if tokens_before(start) == target else bounds[min(lo + 1, len(bounds) - 1)]
    assert off in (start, end), (off, start, end, target)

    # The prompt is intro, text before, needle, text after, question.
    needle = haystack.needle_text(p.key)
    before, after = hay[:off].rstrip(), hay[off:].lstrip()
    lines = p.prompt.split("\n")
    assert lines[0] == haystack.INTRO and lines[-1] == haystack.QUESTION
    assert lines[1:-1] == [x for x in (before, needle, after) if x]
    assert p.prompt.count(needle) == 1

    # The needle's ids sit at needle_token_offset of the prompt's ids, and the reported
    # token depth is within one sentence (plus a token of white space) of the request.
    ids, needle_ids = tok.encode(p.prompt), tok.encode(needle)
    assert ids[p.needle_token_offset:p.needle_token_offset + len(needle_ids)] == needle_ids
    hay_tokens = tok.count(before) + tok.count(after)
    sentence_tokens = tok.count(hay[start:end]) + 1
    assert abs(p.depth_tokens - depth) * hay_tokens <= sentence_tokens


def test_rejects_bad_requests(tok):
    with pytest.raises(ValueError):
        make(tok, 2048, 1.5, 0)
    with pytest.raises(ValueError):
        make(tok, 40, 0.5, 0)


def _python_with_llama_cpp():
    for exe in (sys.executable, shutil.which("python3")):
        if exe and subprocess.run([exe, "-c", "import llama_cpp"], capture_output=True).returncode == 0:
            return exe
    return None


def test_token_ids_match_llama_cpp(tok, tmp_path):
    exe = _python_with_llama_cpp()
    if exe is None:
        pytest.skip("no python3 with the llama_cpp package")
    texts = [make(tok, 2048, 0.5, 21).prompt,
             haystack.load_book(os.path.join(GUTENBERG, "melville-moby_dick.txt"))[:20000],
             "Ünïcödé — “quotes” 3.14 1,000 don't  \t x\n\n\ny 's 'S"]
    with open(os.path.join(GUTENBERG, "shakespeare-hamlet.txt"), encoding="utf-8") as f:
        texts.append(f.read()[:20000])  # raw layout: line breaks and runs of spaces
    src = tmp_path / "texts.json"
    src.write_text(json.dumps(texts))
    script = ("import json, sys, llama_cpp\n"
              "m = llama_cpp.Llama(sys.argv[1], vocab_only=True, verbose=False)\n"
              "texts = json.load(open(sys.argv[2]))\n"
              "print(json.dumps([m.tokenize(t.encode(), add_bos=False, special=False)"
              " for t in texts]))\n")
    out = subprocess.run([exe, "-c", script, MODEL, str(src)], capture_output=True, text=True,
                         check=True)
    want = json.loads(out.stdout.strip().splitlines()[-1])
    for text, ids in zip(texts, want):
        assert tok.encode(text, add_bos=False) == ids
