"""Perplexity of WikiText-2 through /v1/completions, with compression in the loop.

Items: `windows` non-overlapping windows of exactly `context` model tokens of the text,
the first starting at token `start` (or the next place a window can start, see below).
Each window goes to the server as a text prompt with "echo": true, "logprobs": 0,
max_tokens 1 and "kv_compression": {..., "prefill_chunk_tokens": chunk}: the server
prefills the prompt `chunk` tokens at a time and lets the policy act after every chunk,
so later tokens are predicted from an already compressed cache - the same chunking for
every policy, none included. chunk 0 leaves the field out (the server then chunks by
its own --max-batch-tokens and compresses only once the prompt is in).

Metric "nll": the window's mean negative log-likelihood per token (natural log) over
the echoed prompt logprobs, the first token excluded (it has none; with a BOS the BOS
is that token). Windows have equal length, so the mean over items is the mean per token
and the sweep's exp(mean) is the perplexity.

Why windows are cut at word boundaries: the window must reach the server as text, and
the server re-tokenises it. Cutting inside a pre-tokenizer word could merge differently,
so a window starts and ends where the pre-tokenizer splits, and is kept only if
pre-tokenising the window alone gives the same words (hence the same ids); where the
exact `context` tokens would end inside a word, the start moves on by a word. The
server's usage.prompt_tokens is checked against the expected count; a mismatch is
recorded in extra["token_mismatch"].
"""

import bisect
import math
import os

import haystack

from .. import taskutil, util
from .base import ItemResult, Task

DEFAULT_FILE = "../shared/data/wikitext-2-raw/wiki.test.raw"


def read_text(path):
    # newline="" keeps the file's bytes (WikiText has CRLF line ends), as the
    # `kvserve perplexity` command reads them.
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def cut_windows(tok, text, context, n_windows, start=0):
    """[(token offset, window text)]: up to n_windows consecutive windows of exactly
    `context` tokens (BOS not counted), each re-tokenising to the same words."""
    need = start + n_windows * (context + 64)
    chars = max(4096, need * 6)
    while True:
        prefix = text[:chars]
        words = tok.word_token_counts(prefix)
        if chars < len(text) and words:
            words = words[:-1]  # the last word may be cut by the prefix
        spans, cum = [(b, e) for b, e, _ in words], [0]
        for _, _, n in words:
            cum.append(cum[-1] + n)
        if cum[-1] >= need or chars >= len(text):
            break
        chars *= 2
    out = []
    i = bisect.bisect_left(cum, start)
    while len(out) < n_windows and i < len(spans):
        j = bisect.bisect_left(cum, cum[i] + context)
        if j >= len(cum):
            break  # text exhausted
        if cum[j] != cum[i] + context:
            i += 1  # the window would end inside a word
            continue
        begin, end = spans[i][0], spans[j - 1][1]
        window = prefix[begin:end]
        words = [window[b:e] for b, e in haystack.pre_tokenize(window)]
        if words != [prefix[b:e] for b, e in spans[i:j]]:
            i += 1  # alone, the window splits differently at its ends
            continue
        out.append((cum[i], window))
        i = j
    return out


def window_nll(token_logprobs, n_prompt):
    """(mean NLL, tokens scored) of the prompt's logprobs, the first (None) skipped."""
    scored = token_logprobs[1:n_prompt]
    if not scored or any(x is None for x in scored):
        raise ValueError("missing prompt logprobs")
    return -math.fsum(scored) / len(scored), len(scored)


class PerplexityTask(Task):
    name = "perplexity"

    def __init__(self):
        self._windows = {}

    def add_arguments(self, parser):
        g = parser.add_argument_group("perplexity")
        g.add_argument("--perplexity-file", default=DEFAULT_FILE,
                       help="text file, relative to the repository root if not absolute "
                            f"(default {DEFAULT_FILE})")
        g.add_argument("--perplexity-context", type=int, default=2048,
                       help="tokens per window (default 2048)")
        g.add_argument("--perplexity-chunk", type=int, default=64,
                       help="prefill chunk in tokens, the policy acts after each; 0 = the "
                            "server's own chunking (default 64)")
        g.add_argument("--perplexity-windows", type=int, default=4,
                       help="number of non-overlapping windows (default 4)")
        g.add_argument("--perplexity-start", type=int, default=0,
                       help="token offset of the first window (default 0)")

    def windows(self, ctx, options):
        path = util.repo_path(options["file"])
        key = (ctx.model_path, path, options["context"], options["windows"], options["start"])
        if key not in self._windows:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"perplexity text not found: {path}")
            self._windows[key] = cut_windows(haystack.load_tokenizer(ctx.model_path),
                                             read_text(path), options["context"],
                                             options["windows"], options["start"])
        return self._windows[key]

    def run(self, ctx, options):
        context, chunk = options["context"], options["chunk"]
        if context < 2:
            raise ValueError("perplexity context must be at least 2 tokens")
        tok = haystack.load_tokenizer(ctx.model_path)
        expected = context + (1 if tok.add_bos and tok.bos_id is not None else 0)
        if expected + 1 > ctx.client.max_model_len(expected + 1):
            raise ValueError(f"a window of {context} tokens does not fit the model's context")
        windows = self.windows(ctx, options)
        if len(windows) < options["windows"]:
            ctx.log(f"  perplexity: the text holds only {len(windows)} windows")
        extra_kv = {"prefill_chunk_tokens": chunk} if chunk > 0 else {}
        kv_compression = ctx.setting.kv_compression(**extra_kv)
        setting = f"context={context},chunk={chunk}"
        items = list(enumerate(windows))

        def one(item):
            index, (offset, text) = item
            resp = ctx.client.complete(text, max_tokens=1, kv_compression=kv_compression,
                                       echo=True, logprobs=0)
            extra = {"offset": offset, "chars": len(text), "expected_tokens": expected}
            extra.update(taskutil.response_extra(resp))
            value = float("nan")
            if resp.ok:
                n_prompt = resp.usage.get("prompt_tokens", expected)
                if n_prompt != expected:
                    extra["token_mismatch"] = f"server {n_prompt}, expected {expected}"
                try:
                    value, extra["tokens_scored"] = window_nll(resp.token_logprobs or [],
                                                               n_prompt)
                except ValueError as e:
                    extra["error"] = str(e)
            return [ItemResult(task=self.name, setting=setting,
                               item_id=f"window={index},offset={offset},context={context}",
                               metric="nll", value=value, extra=extra,
                               **taskutil.usage_fields(resp))]

        return taskutil.run_items(ctx, self.name, items, one)


TASK = PerplexityTask()
