"""Tests of kvserve-eval's prompt generators: the NIAH prompts (tasks/niah.py), the
general needle insertion they share with the passkey prompt (haystack.make_needle_prompt),
and the items the passkey / NIAH / perplexity tasks send (through a fake client).

Need the model file (its tokenizer) and ../shared/data; without them they skip.
"""
import math
import os
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import haystack  # noqa: E402
from kvserve_eval.client import Completion  # noqa: E402
from kvserve_eval.tasks import niah, passkey, perplexity  # noqa: E402
from kvserve_eval.tasks.base import EvalContext, Setting  # noqa: E402

MODEL = haystack.DEFAULT_MODEL
GUTENBERG = haystack.DEFAULT_GUTENBERG
DATA_DIR = os.path.dirname(GUTENBERG)
WIKITEXT = os.path.join(DATA_DIR, "wikitext-2-raw", "wiki.test.raw")


@pytest.fixture(scope="module")
def tok():
    if not os.path.isfile(MODEL):
        pytest.skip(f"model file {MODEL} is missing")
    if not haystack.gutenberg_available(GUTENBERG):
        pytest.skip(f"Gutenberg books are missing from {GUTENBERG}")
    return haystack.GgufTokenizer(MODEL)


def make_niah(tok, variant, n_tokens, depth, seed, keys=4):
    return niah.make_niah_prompt(variant, n_tokens, depth, seed, keys, tok, GUTENBERG)


def sentence_around(tok, hay, depth):
    """(start, end) char offsets of the haystack sentence holding the token position
    depth * (haystack tokens), and the tokens of that sentence (+1 for white space)."""
    bounds = haystack.sentence_boundaries(hay)

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
    return start, end, tok.count(hay[start:end]) + 1


# --- NIAH prompts -----------------------------------------------------------------------

@pytest.mark.parametrize("variant", niah.VARIANTS)
def test_niah_is_deterministic_for_a_seed(tok, variant):
    a = make_niah(tok, variant, 1024, 0.4, "s:1")
    b = make_niah(haystack.GgufTokenizer(MODEL), variant, 1024, 0.4, "s:1")
    assert a[0].prompt == b[0].prompt
    assert a[1:] == b[1:]
    assert a[0].summary() == b[0].summary()


@pytest.mark.parametrize("variant", niah.VARIANTS)
def test_niah_differs_across_seeds(tok, variant):
    built = [make_niah(tok, variant, 1024, 0.5, seed) for seed in range(8)]
    assert len({b[0].prompt for b in built}) == 8
    assert len({b[2] for b in built}) == 8  # numbers
    assert len({b[0].haystack for b in built}) == 8
    for _, key, number, _ in built:
        assert len(number) == 7 and number.isdigit()
        assert key.count("-") == 1


@pytest.mark.parametrize("n_tokens", [512, 2048, 4096])
@pytest.mark.parametrize("variant,depth,seed", [("single", 0.0, 1), ("single", 0.6, 2),
                                                ("multikey", 1.0, 3), ("multikey", 0.3, 4)])
def test_niah_has_the_exact_token_length(tok, n_tokens, variant, depth, seed):
    p = make_niah(tok, variant, n_tokens, depth, seed)[0]
    assert p.n_tokens == len(tok.encode(p.prompt))
    assert p.n_tokens == n_tokens


@pytest.mark.parametrize("variant", niah.VARIANTS)
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_niah_needle_sits_at_the_requested_depth(tok, variant, depth):
    p, key, number, distractors = make_niah(tok, variant, 2048, depth, 7)
    needle = niah.needle_text(key, number)
    first = p.needles[0]
    assert first["text"] == needle and first["depth"] == depth
    hay, off = p.haystack, p.needle_char_offset
    assert off in haystack.sentence_boundaries(hay)

    # The needle is at one end of the sentence holding the requested token position, and
    # the reported token depth is within that sentence of the request.
    start, end, sentence_tokens = sentence_around(tok, hay, depth)
    assert off in (start, end), (off, start, end)
    assert abs(p.depth_tokens - depth) * tok.count(hay) <= sentence_tokens

    # The needle's ids sit at needle_token_offset of the prompt's ids.
    ids, needle_ids = tok.encode(p.prompt), tok.encode(needle)
    assert ids[p.needle_token_offset:p.needle_token_offset + len(needle_ids)] == needle_ids
    assert p.prompt.count(needle) == 1
    assert p.prompt.split("\n")[0] == niah.INTRO
    assert p.prompt.split("\n")[-1] == niah.question_text(key)


def test_multikey_has_distinct_distractors_that_are_not_asked(tok):
    p, key, number, distractors = make_niah(tok, "multikey", 2048, 0.5, 11, keys=5)
    assert len(distractors) == 4 and len(p.needles) == 5
    keys = [n["text"].split(" for ")[1].split(" is:")[0] for n in p.needles]
    assert keys[0] == key and len(set(keys)) == 5
    assert len(set(distractors) | {number}) == 5
    question = p.prompt.split("\n")[-1]
    assert all(k not in question for k in keys[1:])
    ids = tok.encode(p.prompt)
    for placement in p.needles:
        assert p.prompt.count(placement["text"]) == 1
        needle_ids = tok.encode(placement["text"])
        offset = placement["token_offset"]
        assert ids[offset:offset + len(needle_ids)] == needle_ids
        assert 0.0 <= placement["depth_tokens"] <= 1.0


def test_single_variant_has_one_needle(tok):
    p, key, number, distractors = make_niah(tok, "single", 1024, 0.5, 3)
    assert distractors == [] and len(p.needles) == 1
    assert p.prompt.count("special magic numbers for") == 1


def test_needles_on_the_same_boundary_keep_their_order(tok):
    rng = random.Random(0)
    needles = [("First needle line.", 0.5), ("Second needle line.", 0.5)]
    p = haystack.make_needle_prompt(600, needles, rng, "Intro.", "Question?", tokenizer=tok,
                                    gutenberg_dir=GUTENBERG)
    lines = p.prompt.split("\n")
    assert lines.index("First needle line.") + 1 == lines.index("Second needle line.")
    assert p.needles[0]["char_offset"] == p.needles[1]["char_offset"]
    assert p.needles[1]["token_offset"] == p.needles[0]["token_offset"] + \
        tok.count("First needle line.\n")


def test_bad_requests_are_refused(tok):
    with pytest.raises(ValueError):
        make_niah(tok, "triple", 1024, 0.5, 0)
    with pytest.raises(ValueError):
        make_niah(tok, "single", 1024, -0.1, 0)
    with pytest.raises(ValueError):
        make_niah(tok, "multikey", 60, 0.5, 0)


# --- tasks through a fake client --------------------------------------------------------

class FakeClient:
    """Answers every completion with a scripted text and records the requests."""

    def __init__(self, answer=lambda prompt: "", context=8192):
        self.answer, self.context, self.requests = answer, context, []

    def max_model_len(self, default=None):
        return self.context

    def complete(self, prompt, max_tokens=16, kv_compression=None, **kw):
        self.requests.append(dict(prompt=prompt, max_tokens=max_tokens,
                                  kv_compression=kv_compression, **kw))
        out = Completion(choices=[{"text": self.answer(prompt), "index": 0}],
                         usage={"prompt_tokens": 0, "kv_bytes": 100,
                                "kv_compression_ratio": 0.5})
        out.status, out.wall_s = 200, 0.01
        return out


def context(client, setting=Setting("h2o", 0.25), seed=0):
    return EvalContext(client=client, setting=setting, data_dir=DATA_DIR, model_path=MODEL,
                       seed=seed, concurrency=2, log=lambda msg: None)


def key_of(prompt):
    return prompt.split("The pass key is ")[1][:5]


def test_passkey_task_items_pair_across_settings_and_score(tok):
    options = {"lengths": [600, 9000], "depths": [0.2, 0.8], "samples": 2, "max_tokens": 8,
               "gutenberg": None}
    task = passkey.PasskeyTask()
    right = FakeClient(lambda prompt: " " + key_of(prompt) + ". Done")
    results = task.run(context(right), options)
    assert len(results) == 8 and all(r.value == 1.0 for r in results)
    assert all(r.kv_ratio == 0.5 and r.kv_bytes == 100 for r in results)
    assert {r.setting for r in results} == {f"length={n},depth={d}" for n in (600, 9000)
                                            for d in (0.2, 0.8)}
    assert len({r.item_id for r in results}) == 8
    assert all(q["kv_compression"] == {"policy": "h2o", "ratio": 0.25} for q in right.requests)
    # 9000 tokens do not fit 8192 - 8: capped, the setting keeps the nominal length.
    long = [r for r in results if r.setting.startswith("length=9000")]
    assert all(r.extra["n_tokens"] == 8184 for r in long)

    wrong = FakeClient(lambda prompt: " 00000")
    again = task.run(context(wrong, Setting("none", 1.0)), options)
    assert [r.item_id for r in again] == [r.item_id for r in results]
    assert [q["prompt"] for q in wrong.requests] == [q["prompt"] for q in right.requests]
    assert all(r.value == 0.0 for r in again)
    assert all(q["kv_compression"] is None for q in wrong.requests)

    other_seed = FakeClient()
    task.run(context(other_seed, seed=1), options)
    assert not set(q["prompt"] for q in other_seed.requests) & \
        set(q["prompt"] for q in right.requests)


def test_niah_task_scores_by_the_asked_number(tok):
    options = {"variants": ["single", "multikey"], "lengths": [600], "depths": [0.5],
               "samples": 1, "keys": 3, "max_tokens": 16, "gutenberg": None}

    def answer(prompt):  # the number of the first needle line: right for single only
        # when that needle is the asked one
        line = next(x for x in prompt.split("\n") if "special magic numbers for" in x)
        return " " + line.rstrip(".").split(": ")[1]

    results = niah.NiahTask().run(context(FakeClient(answer)), options)
    assert [r.setting for r in results] == ["variant=single,length=600,depth=0.5",
                                            "variant=multikey,length=600,depth=0.5"]
    single, multi = results
    assert single.value == 1.0 and single.extra["completion"].strip() == single.extra["number"]
    # In the multikey prompt the first needle line is the asked one only if it is the
    # shallowest; either way the score must follow the asked number.
    asked_first = multi.extra["completion"].strip() == multi.extra["number"]
    assert multi.value == (1.0 if asked_first else 0.0)
    assert multi.extra["distractor_answer"] == (not asked_first)


def test_failed_requests_are_failed_items(tok):
    class Down(FakeClient):
        def complete(self, prompt, **kw):
            out = Completion.failure(None, "ConnectionRefusedError: refused")
            out.wall_s = 0.0
            return out

    results = passkey.PasskeyTask().run(context(Down()), {
        "lengths": [600], "depths": [0.5], "samples": 1, "max_tokens": 8, "gutenberg": None})
    assert results[0].value == 0.0 and "refused" in results[0].extra["error"]


# --- perplexity windows -----------------------------------------------------------------

@pytest.fixture(scope="module")
def wikitext():
    if not os.path.isfile(WIKITEXT):
        pytest.skip(f"{WIKITEXT} is missing")
    return perplexity.read_text(WIKITEXT)


@pytest.mark.parametrize("context_tokens,n,start", [(256, 3, 0), (1000, 2, 77), (4096, 2, 0)])
def test_perplexity_windows_have_exact_tokens_and_do_not_overlap(tok, wikitext,
                                                                  context_tokens, n, start):
    windows = perplexity.cut_windows(tok, wikitext, context_tokens, n, start)
    assert len(windows) == n
    offsets = [o for o, _ in windows]
    assert offsets[0] >= start
    for (o1, _), (o2, _) in zip(windows, windows[1:]):
        assert o2 >= o1 + context_tokens
    all_ids = tok.encode(wikitext[:sum(len(w) for _, w in windows) * 2 + 10000], add_bos=False)
    for offset, text in windows:
        ids = tok.encode(text, add_bos=False)
        assert len(ids) == context_tokens
        # Re-tokenised alone, the window gives exactly the ids it had in the text.
        assert all_ids[offset:offset + context_tokens] == ids
    assert perplexity.cut_windows(tok, wikitext, context_tokens, n, start) == windows


def test_perplexity_task_sends_chunked_echo_requests_and_averages_nll(tok, wikitext):
    logprobs = [None] + [-1.0, -2.0, -3.0] * 100

    class Echo(FakeClient):
        def complete(self, prompt, **kw):
            out = super().complete(prompt, **kw)
            n = len(tok.encode(prompt))
            out["usage"]["prompt_tokens"] = n
            out["choices"][0]["logprobs"] = {"token_logprobs": logprobs[:n] + [-0.5]}
            return out

    client = Echo()
    options = {"file": WIKITEXT, "context": 64, "chunk": 16, "windows": 2, "start": 0}
    results = perplexity.PerplexityTask().run(context(client, Setting("none", 1.0)), options)
    assert len(results) == 2
    expected = math.fsum(-x for x in logprobs[1:64]) / 63
    for r in results:
        assert r.metric == "nll" and r.setting == "context=64,chunk=16"
        assert r.value == pytest.approx(expected)
        assert r.extra["tokens_scored"] == 63 and "token_mismatch" not in r.extra
    for q in client.requests:
        assert q["kv_compression"] == {"policy": "none", "ratio": 1.0, "prefill_chunk_tokens": 16}
        assert q["echo"] is True and q["logprobs"] == 0 and q["max_tokens"] == 1
