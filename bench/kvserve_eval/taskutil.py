"""Helpers the tasks share: running items concurrently with progress, and turning a
completion's usage into the ItemResult fields. Kept out of tasks/base.py so the task
contract stays only the contract."""

import os
import time

from . import util


def usage_fields(resp):
    """ItemResult keyword fields from a Completion's usage: achieved KV ratio and bytes."""
    usage = resp.usage if resp is not None else {}
    return {"kv_ratio": usage.get("kv_compression_ratio"), "kv_bytes": usage.get("kv_bytes")}


def response_extra(resp):
    """What every item records about its request: wall time, prompt tokens as the server
    counted them, and the error when the request failed."""
    extra = {"wall_s": round(resp.wall_s, 3) if resp.wall_s is not None else None,
             "prompt_tokens": resp.usage.get("prompt_tokens")}
    if not resp.ok:
        extra["error"] = resp.error[:500]
    return extra


def run_items(ctx, task_name, items, fn):
    """[fn(item)] for every item, ctx.concurrency at a time, in item order.

    fn returns a list of ItemResult (an item may score several metrics). Logs one
    progress line per item, with its value, through ctx.log.
    """
    t0 = time.monotonic()

    def done(i, results):
        shown = ", ".join(f"{r.metric}={r.value:.4g}" for r in results)
        errors = [r.extra["error"] for r in results if r.extra.get("error")]
        suffix = f" ERROR {errors[0][:160]}" if errors else ""
        ctx.log(f"  [{task_name} {ctx.setting.label} {i + 1}/{len(items)}] "
                f"{results[0].item_id if results else ''} {shown}{suffix} "
                f"({time.monotonic() - t0:.0f}s)")

    nested = util.parallel_map(fn, items, ctx.concurrency, on_done=done)
    return [r for results in nested for r in results]


def gutenberg_dir(ctx, option):
    """The Gutenberg directory: the task's option if given, else <data_dir>/gutenberg."""
    return util.repo_path(option) if option else os.path.join(ctx.data_dir, "gutenberg")


def context_limit(ctx, max_tokens, default=8192):
    """Longest prompt the server takes with max_tokens to generate."""
    return ctx.client.max_model_len(default) - max_tokens
