"""Capacity: how many concurrent sessions a fixed KV pool sustains under a setting.

The task restarts the tool's server (ctx.server) with a KV pool of `pool_mb` MiB
(--kv-cache-bytes), --max-running raised to at least `max_sessions` and a token budget
per step (--max-batch-tokens) of `length + max_sessions` (see below), then sends
batches of N concurrent streamed requests, each a distinct prompt of exactly
`length` tokens (token ids of Gutenberg text from a different book offset per session,
so no two share a prefix) asking for exactly `output_tokens` tokens (ignore_eos).

A batch of N *holds* when
  * every request completes with a first token and the full output,
  * the server's kvserve_preemptions_total did not move during the batch (a preempted
    sequence lost its KV blocks: the pool could not keep N sessions alive), and
  * all N sessions were streaming at the same moment: the latest first token came
    before the earliest last token (client clocks). kvserve's scheduler admits a
    request only when the pool has blocks for its next prefill chunk (for an
    uncompressed one, for its whole prompt), so a pool that is
    too small often makes the extra session *wait* for another to finish rather than
    preempt anyone; without this check a queue would pass for capacity.

Why the larger step budget: with the server's default of 512 tokens a step, prompts are
prefilled one after the other, 512 tokens a step, so session N starts streaming about
N * length / 512 steps after the first; with 64 output tokens the first session is done
before the 17th starts, whatever the pool. A budget of a whole prompt (plus one decode
token per session) admits one new session per step, so sessions overlap for any N up
to about `output_tokens`. It also means a prompt is admitted only when the pool has
room for all of it uncompressed (kvserve assesses and compresses a prompt once all of
it is in, so it is held uncompressed during prefill at any budget). Pass
`max_batch_tokens` to measure at another budget. N is
searched upwards 1, 2, 4, 8, ... (and `max_sessions` itself) until a batch fails, then
bisected between the last N that held and the first that failed; the answer is the
largest N that held (0 when even one session does not fit). The search assumes that
holding is monotone in N, which it is up to timing noise: more sessions never need fewer
blocks.

At that N it reports the batch's output throughput (completion tokens of all requests /
wall time from the first send to the last token) and the client-measured time to first
token of each request (send -> first streamed text): items

  metric "max_sessions", "throughput_tok_s", "ttft_p50_s", "ttft_p95_s" (item_id
  "capacity"), and one "ttft_s" item per request (item_id "session=<i>", so the sweep
  gets a confidence interval and pairs sessions across policies),

all with setting "length=L,pool_mb=M" and kv_ratio / kv_bytes the mean achieved
usage.kv_compression_ratio / usage.kv_bytes of the batch.

The default pool holds about 3.5 uncompressed sessions of length + output_tokens tokens
(so 3 fit and 4 do not without compression), from the model's f16 KV size per token:
2 (K and V) * n_layer * n_kv_heads * head_dim * 2 bytes = 23,040 bytes for SmolLM2-135M,
in blocks of --block-tokens (16) positions.

Capacity needs to size the pool, so it refuses to run against an external server
(ctx.server None) with a RuntimeError that says so.
"""

import dataclasses
import math
import os
import random
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

from kvserve_eval.tasks.base import EvalContext, ItemResult, Task

MIB = 1 << 20
BLOCK_TOKENS = 16               # kvserve's default --block-tokens
SMOLLM2_KV_BYTES_PER_TOKEN = 23040
DEFAULT_LENGTH = 2048
DEFAULT_OUTPUT_TOKENS = 64
DEFAULT_MAX_SESSIONS = 16
DEFAULT_FIT_SESSIONS = 3.5      # uncompressed sessions the default pool holds
PREEMPTIONS = "kvserve_preemptions_total"
RUNNING = "kvserve_requests_running"


# haystack.py (GGUF reader, tokenizer, Gutenberg text) lives in bench/, beside this package.
def _bench_on_path():
    bench_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)


def _load_tokenizer(model_path: str):
    _bench_on_path()
    import haystack  # noqa: E402
    return haystack.load_tokenizer(model_path)


def kv_bytes_per_token(model_path: Optional[str]) -> int:
    """f16 K and V bytes of one position in every layer, from the GGUF's metadata
    (SmolLM2-135M's 23,040 when the file cannot be read)."""
    try:
        _bench_on_path()
        import haystack  # noqa: E402
        meta = haystack._GgufReader(model_path).meta
        arch = meta["general.architecture"]
        n_layer = int(meta[f"{arch}.block_count"])
        n_head = int(meta[f"{arch}.attention.head_count"])
        n_kv_head = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
        head_dim = int(meta.get(f"{arch}.attention.key_length",
                                int(meta[f"{arch}.embedding_length"]) // n_head))
        return 2 * n_layer * n_kv_head * head_dim * 2
    except (OSError, KeyError, ValueError, TypeError, ImportError):
        return SMOLLM2_KV_BYTES_PER_TOKEN


def session_bytes(length: int, output_tokens: int, bytes_per_token: int,
                  block_tokens: int = BLOCK_TOKENS) -> int:
    """Pool bytes one uncompressed session of length + output_tokens positions holds."""
    blocks = math.ceil((length + output_tokens) / block_tokens)
    return blocks * block_tokens * bytes_per_token


def default_pool_mb(length: int, output_tokens: int, bytes_per_token: int,
                    fit_sessions: float = DEFAULT_FIT_SESSIONS) -> int:
    return math.ceil(fit_sessions * session_bytes(length, output_tokens, bytes_per_token) / MIB)


def percentile(values: List[float], q: float) -> float:
    """Linear-interpolation percentile (q in [0, 1]) of a non-empty list."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    weight = position - lower
    return ordered[lower] * (1.0 - weight) + ordered[upper] * weight


# --- One batch ---------------------------------------------------------------------------


@dataclasses.dataclass
class BatchOutcome:
    n: int
    held: bool                   # all completed, no preemption, all streamed at once
    reason: str = ""             # why it did not hold
    preemptions: float = 0.0     # delta of kvserve_preemptions_total over the batch
    wall_s: float = 0.0          # first send -> last request done
    ttfts: List[Optional[float]] = dataclasses.field(default_factory=list)  # per request
    output_tokens: int = 0       # completion tokens over all requests
    kv_ratios: List[float] = dataclasses.field(default_factory=list)
    kv_bytes: List[int] = dataclasses.field(default_factory=list)
    errors: List[str] = dataclasses.field(default_factory=list)
    overlap_s: Optional[float] = None  # earliest last token - latest first token (> 0: all
                                       # sessions streamed at once)
    max_running: Optional[int] = None  # most sequences running at once, seen on /metrics

    @property
    def throughput(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict:
        ttfts = [t for t in self.ttfts if t is not None]
        return {"n": self.n, "held": self.held, "reason": self.reason,
                "preemptions": self.preemptions, "wall_s": round(self.wall_s, 3),
                "output_tokens": self.output_tokens,
                "throughput_tok_s": round(self.throughput, 3),
                "ttft_p50_s": round(percentile(ttfts, 0.5), 4) if ttfts else None,
                "overlap_s": round(self.overlap_s, 3) if self.overlap_s is not None else None,
                "max_running": self.max_running, "errors": self.errors[:3]}


def stream_spans(sent_at: List[float], responses: list) -> List[Optional[tuple]]:
    """(first token, last token) of each streamed response on the common monotonic clock
    (send time + the client's offsets); None for a response without tokens."""
    spans = []
    for t_send, r in zip(sent_at, responses):
        times = getattr(r, "token_times", None) or []
        first = getattr(r, "ttft_s", None)
        if first is None and times:
            first = times[0]
        if first is None:
            spans.append(None)
            continue
        last = times[-1] if times else (getattr(r, "wall_s", None) or first)
        spans.append((t_send + first, t_send + last))
    return spans


def overlap_of(spans: List[Optional[tuple]]) -> Optional[float]:
    """min(last) - max(first) over the spans: > 0 when all of them share a moment."""
    if not spans or any(span is None for span in spans):
        return None
    return min(last for _, last in spans) - max(first for first, _ in spans)


def judge(n: int, responses: list, preemptions: float, output_tokens: int,
          overlap_s: Optional[float]) -> tuple:
    """(held, reason) of a batch from its streamed responses (Completion-like dicts with
    ttft_s), the preemption delta and the streams' overlap (see overlap_of)."""
    failed = [r for r in responses if "error" in r or not r.get("choices")]
    if failed:
        return False, f"{len(failed)} of {n} requests failed"
    missing = sum(1 for r in responses if getattr(r, "ttft_s", None) is None)
    if missing:
        return False, f"{missing} of {n} requests streamed no token"
    short = sum(1 for r in responses
                if (r.get("usage") or {}).get("completion_tokens", output_tokens) < output_tokens)
    if short:
        return False, f"{short} of {n} requests ended before {output_tokens} tokens"
    if preemptions > 0:
        return False, f"{preemptions:g} preemptions"
    if overlap_s is None or overlap_s <= 0:
        return False, (f"the {n} sessions never streamed all at once (a session waited for "
                       "another to finish)")
    return True, ""


class _RunningWatcher:
    """Polls /metrics while a batch runs and keeps the largest kvserve_requests_running."""

    def __init__(self, client, interval_s: float = 0.25):
        self.client, self.interval_s = client, interval_s
        self.max_running = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            value = self.client.metrics().get(RUNNING)
            if value is not None:
                self.max_running = max(self.max_running or 0, int(value))
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_batch(client, prompts: List[list], output_tokens: int,
              kv_compression: Optional[dict], timeout_s: float = 1800.0) -> BatchOutcome:
    """Sends len(prompts) streamed requests at once and judges the batch."""
    from kvserve_eval.client import metric_sum
    n = len(prompts)
    before = metric_sum(client.metrics(), PREEMPTIONS)
    responses: List[Optional[dict]] = [None] * n
    sent_at = [0.0] * n
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        sent_at[i] = time.monotonic()
        responses[i] = client.stream(prompts[i], max_tokens=output_tokens,
                                     kv_compression=kv_compression, temperature=0.0,
                                     timeout=timeout_s, ignore_eos=True)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    with _RunningWatcher(client) as watcher:
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - start
    after = metric_sum(client.metrics(), PREEMPTIONS)
    overlap_s = overlap_of(stream_spans(sent_at, responses))
    held, reason = judge(n, responses, after - before, output_tokens, overlap_s)
    outcome = BatchOutcome(n=n, held=held, reason=reason, preemptions=after - before,
                           wall_s=wall, overlap_s=overlap_s, max_running=watcher.max_running)
    for r in responses:
        usage = r.get("usage") or {}
        outcome.ttfts.append(getattr(r, "ttft_s", None))
        outcome.output_tokens += int(usage.get("completion_tokens") or 0)
        if usage.get("kv_compression_ratio") is not None:
            outcome.kv_ratios.append(float(usage["kv_compression_ratio"]))
        if usage.get("kv_bytes") is not None:
            outcome.kv_bytes.append(int(usage["kv_bytes"]))
        if "error" in r:
            outcome.errors.append(str(r.get("error"))[:300])
    return outcome


# --- The search --------------------------------------------------------------------------


def find_max_sessions(try_batch: Callable[[int], BatchOutcome], max_sessions: int,
                      log=lambda msg: None) -> tuple:
    """(largest N <= max_sessions whose batch held, {N: BatchOutcome} of every batch run).

    Doubles N from 1 (then tries max_sessions itself) until a batch fails, then bisects
    between the last N that held and the first that failed. 0 when N = 1 fails.
    """
    if max_sessions < 1:
        raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
    outcomes: Dict[int, BatchOutcome] = {}

    def attempt(n):
        outcome = try_batch(n)
        outcomes[n] = outcome
        log(f"capacity: N={n} " + ("held" if outcome.held else f"failed ({outcome.reason})"))
        return outcome.held

    best, failed_at = 0, None
    n = 1
    while True:
        if attempt(n):
            best = n
        else:
            failed_at = n
            break
        if n == max_sessions:
            break
        n = min(2 * n, max_sessions)
    if failed_at is not None:
        low, high = best, failed_at
        while high - low > 1:
            mid = (low + high) // 2
            if attempt(mid):
                low = mid
            else:
                high = mid
        best = low
    return best, outcomes


# --- Prompts -----------------------------------------------------------------------------


def session_prompts(n: int, length: int, seed: int, tokenizer, gutenberg_dir: str) -> List[list]:
    """`n` prompts of exactly `length` token ids each: the tokens of a window of Gutenberg
    prose starting at a sentence start, a different book offset per session (sessions
    share no prefix). Deterministic for (seed, i)."""
    _bench_on_path()
    import haystack  # noqa: E402
    books = [os.path.join(gutenberg_dir, b) for b in haystack.PROSE_BOOKS]
    need_chars = length * 8 + 4096  # ~4.4 characters a token in this prose; plenty
    prompts, seen = [], set()
    for i in range(n):
        rng = random.Random(f"kvserve-capacity:{seed}:{i}")
        for _ in range(100):
            path = rng.choice(books)
            text = haystack.load_book(path)
            if len(text) <= need_chars:
                continue
            start = rng.randrange(0, len(text) - need_chars)
            m = next(haystack._sentence_ends(text, start), None)
            start = m.end() if m else start
            ids = tokenizer.encode(text[start:start + need_chars], add_bos=False)[:length]
            if len(ids) == length and tuple(ids[:16]) not in seen:
                seen.add(tuple(ids[:16]))
                prompts.append(ids)
                break
        else:
            raise ValueError(f"no Gutenberg window of {length} tokens found in {gutenberg_dir}")
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        prompts = [[tokenizer.bos_id] + p[:length - 1] for p in prompts]
    return prompts


# --- The task ----------------------------------------------------------------------------


def _mean(values):
    return sum(values) / len(values) if values else None


class CapacityTask(Task):
    name = "capacity"
    exclusive = True

    def add_arguments(self, parser) -> None:
        parser.add_argument("--capacity-pool-mb", type=int, default=None,
                            help="KV pool size in MiB [default: about "
                                 f"{DEFAULT_FIT_SESSIONS:g} uncompressed sessions]")
        parser.add_argument("--capacity-length", type=int, default=DEFAULT_LENGTH,
                            help="prompt tokens per session [default: %(default)s]")
        parser.add_argument("--capacity-output-tokens", type=int, default=DEFAULT_OUTPUT_TOKENS,
                            help="tokens generated per session [default: %(default)s]")
        parser.add_argument("--capacity-max-sessions", type=int, default=DEFAULT_MAX_SESSIONS,
                            help="largest N tried [default: %(default)s]")
        parser.add_argument("--capacity-max-batch-tokens", type=int, default=None,
                            help="server --max-batch-tokens for the test [default: length + "
                                 "max sessions, a whole prompt per step]")

    def run(self, ctx: EvalContext, options: dict) -> list:
        if ctx.server is None:
            raise RuntimeError("the capacity task sizes the server's KV pool, so it needs a "
                               "server started by kvserve-eval; it cannot run against an "
                               "external server (--url)")
        length = int(options.get("length") or DEFAULT_LENGTH)
        output_tokens = int(options.get("output_tokens") or DEFAULT_OUTPUT_TOKENS)
        max_sessions = int(options.get("max_sessions") or DEFAULT_MAX_SESSIONS)
        pool_mb = options.get("pool_mb")
        if not pool_mb:
            pool_mb = default_pool_mb(length, output_tokens, kv_bytes_per_token(ctx.model_path))
        pool_mb = int(pool_mb)
        batch_tokens = int(options.get("max_batch_tokens") or length + max_sessions)
        if max_sessions > output_tokens:
            ctx.log(f"capacity: warning: with {output_tokens} output tokens the first session "
                    f"may finish before session {max_sessions} starts")
        flags = ["--kv-cache-bytes", str(pool_mb * MIB),
                 "--max-running", str(max(64, max_sessions)),
                 "--max-waiting", str(max(256, max_sessions)),
                 "--max-batch-tokens", str(batch_tokens)]
        if not ctx.server.running or list(ctx.server.extra_flags) != flags:
            ctx.log(f"capacity: restarting the server with a {pool_mb} MiB KV pool")
            ctx.server.restart(flags)
        client = ctx.server.client()

        tokenizer = _load_tokenizer(ctx.model_path)
        prompts = session_prompts(max_sessions, length, ctx.seed, tokenizer,
                                  os.path.join(ctx.data_dir, "gutenberg"))
        kv_compression = ctx.setting.kv_compression()
        best, outcomes = find_max_sessions(
            lambda n: run_batch(client, prompts[:n], output_tokens, kv_compression),
            max_sessions, ctx.log)
        return self.results(best, outcomes, length, pool_mb, output_tokens, max_sessions,
                            batch_tokens)

    def results(self, best: int, outcomes: Dict[int, BatchOutcome], length: int, pool_mb: int,
                output_tokens: int, max_sessions: int, batch_tokens: Optional[int] = None
                ) -> list:
        setting = f"length={length},pool_mb={pool_mb}"
        tried = {n: o.summary() for n, o in sorted(outcomes.items())}
        extra = {"length": length, "pool_mb": pool_mb, "output_tokens": output_tokens,
                 "max_sessions_tried": max_sessions, "max_batch_tokens": batch_tokens,
                 "batches": tried}
        if best == 0:
            first = outcomes.get(1)
            extra["error"] = f"one session does not fit: {first.reason if first else '?'}"
            return [ItemResult(self.name, setting, "capacity", "max_sessions", 0.0,
                               extra=extra)]
        at = outcomes[best]
        kv_ratio, kv_bytes = _mean(at.kv_ratios), _mean(at.kv_bytes)
        kv_bytes = int(kv_bytes) if kv_bytes is not None else None
        ttfts = [t for t in at.ttfts if t is not None]

        def item(metric, value, item_id="capacity", **more):
            return ItemResult(self.name, setting, item_id, metric, float(value),
                              kv_ratio=kv_ratio, kv_bytes=kv_bytes, extra=dict(extra, **more))

        out = [item("max_sessions", best, capped=best == max_sessions),
               item("throughput_tok_s", at.throughput),
               item("ttft_p50_s", percentile(ttfts, 0.5)),
               item("ttft_p95_s", percentile(ttfts, 0.95))]
        for i, t in enumerate(at.ttfts):
            if t is not None:
                out.append(ItemResult(self.name, setting, f"session={i}", "ttft_s", float(t),
                                      kv_ratio=kv_ratio, kv_bytes=kv_bytes,
                                      extra={"n": best, "session": i}))
        return out


TASK = CapacityTask()
