"""Passkey retrieval (Landmark Attention's format) in Gutenberg prose.

Items: every length x depth x sample. Each prompt comes from haystack.make_passkey_prompt
(exact length in model tokens, needle at the sentence boundary nearest the depth) with
the seed "<sweep seed>:<length>:<depth>:<sample>", so every compression setting sees the
same prompts and the item ids pair them. Greedy decoding, `max_tokens` tokens; metric
"accuracy" is 1 when the completion (leading white space stripped) starts with the five
digits (metrics.exact_match). Lengths above the model's context minus max_tokens are
capped there; the setting keeps the nominal length.

extra records the key, the completion, the prompt's token count (ours and the
server's), the needle's token offset and its achieved depth in tokens.
"""

import haystack

from .. import metrics, taskutil
from ..util import csv_list
from .base import ItemResult, Task


class PasskeyTask(Task):
    name = "passkey"

    def __init__(self):
        self._prompts = {}  # (model, gutenberg, n, depth, seed) -> PasskeyPrompt

    def add_arguments(self, parser):
        g = parser.add_argument_group("passkey")
        g.add_argument("--passkey-lengths", type=csv_list(int), default=[2048, 4096],
                       help="prompt lengths in tokens (default 2048,4096)")
        g.add_argument("--passkey-depths", type=csv_list(float),
                       default=[0.1, 0.3, 0.5, 0.7, 0.9],
                       help="needle depths, fractions of the haystack (default 0.1,...,0.9)")
        g.add_argument("--passkey-samples", type=int, default=1,
                       help="prompts (seeds) per length and depth (default 1)")
        g.add_argument("--passkey-max-tokens", type=int, default=8,
                       help="tokens to generate (default 8)")
        g.add_argument("--passkey-gutenberg", default=None,
                       help="directory of the books (default <data dir>/gutenberg)")

    def prompt(self, ctx, n_tokens, depth, seed, gutenberg):
        """The PasskeyPrompt for these parameters, built once per run of the tool."""
        key = (ctx.model_path, gutenberg, n_tokens, depth, seed)
        if key not in self._prompts:
            self._prompts[key] = haystack.make_passkey_prompt(
                n_tokens, depth, seed, haystack.load_tokenizer(ctx.model_path), gutenberg)
        return self._prompts[key]

    def run(self, ctx, options):
        gutenberg = taskutil.gutenberg_dir(ctx, options["gutenberg"])
        max_tokens = options["max_tokens"]
        limit = taskutil.context_limit(ctx, max_tokens)
        # Prompts are built here, before any thread starts: the tokenizer is not
        # thread-safe.
        items = [(length, depth, sample,
                  self.prompt(ctx, min(length, limit), depth,
                              f"{ctx.seed}:{length}:{depth}:{sample}", gutenberg))
                 for length in options["lengths"] for depth in options["depths"]
                 for sample in range(options["samples"])]

        def one(item):
            length, depth, sample, p = item
            setting = f"length={length},depth={depth:g}"
            item_id = f"length={length},depth={depth:g},sample={sample},seed={ctx.seed}"
            resp = ctx.client.complete(p.prompt, max_tokens=max_tokens,
                                       kv_compression=ctx.setting.kv_compression())
            extra = {"key": p.key, "completion": resp.text, "n_tokens": p.n_tokens,
                     "needle_token_offset": p.needle_token_offset,
                     "depth_tokens": round(p.depth_tokens, 4), "book": p.book}
            extra.update(taskutil.response_extra(resp))
            value = metrics.exact_match(resp.text, p.key) if resp.ok else 0.0
            return [ItemResult(task=self.name, setting=setting, item_id=item_id,
                               metric="accuracy", value=value, extra=extra,
                               **taskutil.usage_fields(resp))]

        return taskutil.run_items(ctx, self.name, items, one)


TASK = PasskeyTask()
