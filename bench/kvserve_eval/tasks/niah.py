"""Needle in a haystack, RULER-style key-value needles in Gutenberg prose.

Variants:
  single    one needle "One of the special magic numbers for <key> is: <number>." and
            a question asking for that key's number;
  multikey  the same needle plus `keys - 1` distractor needles of the same form with
            other keys and numbers at seeded random depths; only the first is asked.
Keys are adjective-noun pairs ("quiet-harbor") from the lists below, numbers have 7
digits; both, the book and the offset in it come from the seed
"<sweep seed>:<variant>:<length>:<depth>:<sample>" (haystack.make_needle_prompt), so
every compression setting sees the same prompts and item ids pair them.

The asked needle goes at the sentence boundary nearest `depth` of the filler's tokens
(distractors do not count as filler); extra reports its achieved depth in tokens, its
token offset in the prompt and the prompt's exact length, which the tests check.
Metric "accuracy": 1 when the asked number appears in the completion (RULER's
string match), else 0; extra["distractor_answer"] notes an answer with a distractor's
number instead.
"""

import random

import haystack

from .. import taskutil
from ..util import csv_list
from .base import ItemResult, Task

VARIANTS = ("single", "multikey")

_ADJECTIVES = ("amber", "bitter", "brave", "calm", "clever", "crimson", "dusty", "eager",
               "faint", "fierce", "gentle", "golden", "hollow", "humble", "icy", "jolly",
               "keen", "lively", "lonely", "mellow", "misty", "noble", "odd", "pale",
               "proud", "quiet", "rapid", "rusty", "silent", "silver", "sleepy", "smooth",
               "stormy", "swift", "tender", "tidy", "vivid", "wary", "wild", "young")
_NOUNS = ("anchor", "badger", "basket", "beacon", "candle", "canyon", "cellar", "comet",
          "falcon", "feather", "forest", "garden", "glacier", "hammer", "harbor", "island",
          "kettle", "ladder", "lantern", "meadow", "mirror", "orchard", "otter", "pebble",
          "pillow", "pocket", "puzzle", "quarry", "river", "saddle", "shadow", "spiral",
          "teapot", "thistle", "tunnel", "valley", "violin", "walrus", "willow", "window")

INTRO = ("A long text follows. Special magic numbers are hidden in it, each belonging to "
         "a key. Remember them: after the text you will be asked for one of them.")


def needle_text(key, number):
    return f"One of the special magic numbers for {key} is: {number}."


def question_text(key):
    return (f"Question: which special magic number belongs to {key}? "
            f"Answer: The special magic number for {key} is")


def make_niah_prompt(variant, n_tokens, depth, seed, n_keys=4, tokenizer=None,
                     gutenberg_dir=haystack.DEFAULT_GUTENBERG):
    """A NeedlePrompt with the asked needle first in .needles; also returns
    (key, number, [distractor numbers]). Deterministic for (variant, seed, n_keys)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} not in {VARIANTS}")
    rng = random.Random(f"kvserve-niah:{variant}:{seed}")
    count = 1 if variant == "single" else max(2, n_keys)
    keys = rng.sample([f"{a}-{n}" for a in _ADJECTIVES for n in _NOUNS], count)
    numbers = rng.sample(range(1_000_000, 10_000_000), count)
    needles = [(needle_text(keys[0], numbers[0]), depth)]
    needles += [(needle_text(k, v), rng.random()) for k, v in zip(keys[1:], numbers[1:])]
    prompt = haystack.make_needle_prompt(n_tokens, needles, rng, INTRO, question_text(keys[0]),
                                         seed=seed, tokenizer=tokenizer,
                                         gutenberg_dir=gutenberg_dir)
    return prompt, keys[0], str(numbers[0]), [str(v) for v in numbers[1:]]


class NiahTask(Task):
    name = "niah"

    def __init__(self):
        self._prompts = {}

    def add_arguments(self, parser):
        g = parser.add_argument_group("niah")
        g.add_argument("--niah-variants", type=csv_list(str, VARIANTS),
                       default=list(VARIANTS), help="single and/or multikey (default both)")
        g.add_argument("--niah-lengths", type=csv_list(int), default=[1024, 2048, 4096],
                       help="prompt lengths in tokens (default 1024,2048,4096)")
        g.add_argument("--niah-depths", type=csv_list(float),
                       default=[0.0, 0.25, 0.5, 0.75, 1.0],
                       help="depths of the asked needle (default 0,0.25,0.5,0.75,1)")
        g.add_argument("--niah-samples", type=int, default=1,
                       help="prompts (seeds) per variant, length and depth (default 1)")
        g.add_argument("--niah-keys", type=int, default=4,
                       help="needles in a multikey prompt, the asked one included (default 4)")
        g.add_argument("--niah-max-tokens", type=int, default=16,
                       help="tokens to generate (default 16)")
        g.add_argument("--niah-gutenberg", default=None,
                       help="directory of the books (default <data dir>/gutenberg)")

    def prompt(self, ctx, variant, n_tokens, depth, seed, n_keys, gutenberg):
        key = (ctx.model_path, gutenberg, variant, n_tokens, depth, seed, n_keys)
        if key not in self._prompts:
            self._prompts[key] = make_niah_prompt(
                variant, n_tokens, depth, seed, n_keys,
                haystack.load_tokenizer(ctx.model_path), gutenberg)
        return self._prompts[key]

    def run(self, ctx, options):
        gutenberg = taskutil.gutenberg_dir(ctx, options["gutenberg"])
        max_tokens = options["max_tokens"]
        limit = taskutil.context_limit(ctx, max_tokens)
        # Built before any thread starts: the tokenizer is not thread-safe.
        items = []
        for variant in options["variants"]:
            for length in options["lengths"]:
                for depth in options["depths"]:
                    for sample in range(options["samples"]):
                        seed = f"{ctx.seed}:{variant}:{length}:{depth}:{sample}"
                        built = self.prompt(ctx, variant, min(length, limit), depth, seed,
                                            options["keys"], gutenberg)
                        items.append((variant, length, depth, sample, built))

        def one(item):
            variant, length, depth, sample, (p, key, number, distractors) = item
            resp = ctx.client.complete(p.prompt, max_tokens=max_tokens,
                                       kv_compression=ctx.setting.kv_compression())
            found = resp.ok and number in resp.text
            extra = {"key": key, "number": number, "completion": resp.text,
                     "n_tokens": p.n_tokens, "needle_token_offset": p.needle_token_offset,
                     "depth_tokens": round(p.depth_tokens, 4), "book": p.book}
            if distractors:
                extra["distractor_answer"] = (not found and resp.ok
                                              and any(d in resp.text for d in distractors))
            extra.update(taskutil.response_extra(resp))
            return [ItemResult(
                task=self.name, setting=f"variant={variant},length={length},depth={depth:g}",
                item_id=(f"variant={variant},length={length},depth={depth:g},"
                         f"sample={sample},seed={ctx.seed}"),
                metric="accuracy", value=1.0 if found else 0.0, extra=extra,
                **taskutil.usage_fields(resp))]

        return taskutil.run_items(ctx, self.name, items, one)


TASK = NiahTask()
