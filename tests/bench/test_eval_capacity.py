"""Tests of bench/kvserve_eval/tasks/capacity.py with a fake server and client.

The fake server "holds" a fixed number of sessions: a batch larger than that moves the
preemption counter, as kvserve's does when the KV pool runs out.
"""
import os
import sys
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from kvserve_eval.client import Completion  # noqa: E402
from kvserve_eval.tasks import base  # noqa: E402
from kvserve_eval.tasks import capacity as cap  # noqa: E402

DATA_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data")


class FakeClient:
    """Streams succeed; the preemption counter grows when more than `holds` requests are
    in one batch (a batch = the requests since the last metrics scrape). With
    queue=True the extra requests do not preempt but wait: their tokens stream only after
    the first session's last token, as kvserve's admission control makes them wait."""

    def __init__(self, holds, kv_ratio=0.5, queue=False):
        self.holds = holds
        self.kv_ratio = kv_ratio
        self.queue = queue
        self.preemptions = 0
        self.in_batch = 0
        self.lock = threading.Lock()
        self.requests = []

    def metrics(self):
        with self.lock:
            if self.in_batch > self.holds and not self.queue:
                self.preemptions += self.in_batch - self.holds
            self.in_batch = 0
            return {"kvserve_preemptions_total": float(self.preemptions),
                    "kvserve_requests_running": 0.0}

    def stream(self, prompt, max_tokens=16, kv_compression=None, temperature=0.0,
               timeout=None, **extra):
        with self.lock:
            self.in_batch += 1
            self.requests.append((tuple(prompt), max_tokens, kv_compression, extra))
            index = len(self.requests)
            position = self.in_batch  # 1-based place of this request in its batch
        out = Completion(choices=[{"index": 0, "text": "x" * max_tokens}],
                         usage={"prompt_tokens": len(prompt), "completion_tokens": max_tokens,
                                "kv_bytes": 1000, "kv_compression_ratio": self.kv_ratio})
        first = 0.01 * index
        if self.queue and position > self.holds:
            first += 10.0  # waits for a running session (done after 5 s) to finish
        out.token_times = [first + 5.0 * k / max(1, max_tokens - 1) for k in range(max_tokens)]
        out.ttft_s = first
        out.wall_s = out.token_times[-1]
        return out


class FakeServer:
    def __init__(self, client):
        self._client = client
        self.running = True
        self.extra_flags = []
        self.restarts = []

    def restart(self, extra_flags=()):
        self.restarts.append(list(extra_flags))
        self.extra_flags = list(extra_flags)

    def client(self, timeout=600.0, model=None):
        return self._client


class ScriptedBatches:
    """try_batch for find_max_sessions: N holds iff N <= limit; records the Ns tried."""

    def __init__(self, limit):
        self.limit, self.tried = limit, []

    def __call__(self, n):
        self.tried.append(n)
        return cap.BatchOutcome(n=n, held=n <= self.limit,
                                reason="" if n <= self.limit else "preempted")


# --- the search ---------------------------------------------------------------------------

def test_search_finds_five_when_six_preempts():
    batches = ScriptedBatches(limit=5)
    best, outcomes = cap.find_max_sessions(batches, max_sessions=16)
    assert best == 5
    assert batches.tried == [1, 2, 4, 8, 6, 5]
    assert set(outcomes) == {1, 2, 4, 5, 6, 8}


@pytest.mark.parametrize("limit, max_sessions, expected", [
    (0, 16, 0),     # one session does not fit
    (1, 16, 1),
    (3, 16, 3),
    (7, 16, 7),
    (16, 16, 16),   # capped: everything held
    (100, 12, 12),  # max_sessions not a power of two is tried itself
    (9, 12, 9),
])
def test_search_is_exact_for_any_limit(limit, max_sessions, expected):
    best, _ = cap.find_max_sessions(ScriptedBatches(limit), max_sessions)
    assert best == expected


def test_search_never_tries_beyond_max_sessions():
    batches = ScriptedBatches(limit=100)
    cap.find_max_sessions(batches, max_sessions=12)
    assert max(batches.tried) == 12 and batches.tried == [1, 2, 4, 8, 12]


# --- one batch through the fake client ------------------------------------------------------

def test_run_batch_counts_preemptions_and_throughput():
    client = FakeClient(holds=2)
    prompts = [[i] * 8 for i in range(3)]
    held = cap.run_batch(client, prompts[:2], output_tokens=4, kv_compression=None)
    assert held.held and held.preemptions == 0 and held.output_tokens == 8
    assert sorted(held.ttfts) == pytest.approx([0.01, 0.02])
    failed = cap.run_batch(client, prompts, output_tokens=4, kv_compression=None)
    assert not failed.held and failed.preemptions == 1 and "preemption" in failed.reason
    # every request asked for exactly output_tokens tokens, ignoring EOS
    assert all(r[1] == 4 and r[3].get("ignore_eos") is True for r in client.requests)


def test_run_batch_fails_when_a_session_queues_instead_of_preempting():
    client = FakeClient(holds=2, queue=True)
    prompts = [[i] * 8 for i in range(3)]
    assert cap.run_batch(client, prompts[:2], output_tokens=4, kv_compression=None).held
    queued = cap.run_batch(client, prompts, output_tokens=4, kv_compression=None)
    assert queued.preemptions == 0
    assert not queued.held and "never streamed all at once" in queued.reason
    assert queued.overlap_s < 0


def test_judge_rejects_missing_first_token_errors_and_no_overlap():
    ok = Completion(choices=[{"text": "abc"}], usage={"completion_tokens": 4})
    ok.ttft_s = 0.1
    silent = Completion(choices=[{"text": ""}], usage={"completion_tokens": 4})
    failed = Completion.failure(500, "boom")
    short = Completion(choices=[{"text": "a"}], usage={"completion_tokens": 1})
    short.ttft_s = 0.1
    assert cap.judge(1, [ok], 0, 4, 1.0) == (True, "")
    assert not cap.judge(2, [ok, silent], 0, 4, 1.0)[0]
    assert not cap.judge(2, [ok, failed], 0, 4, 1.0)[0]
    assert not cap.judge(2, [ok, short], 0, 4, 1.0)[0]
    assert not cap.judge(1, [ok], 1, 4, 1.0)[0]
    assert not cap.judge(2, [ok, ok], 0, 4, -0.5)[0]
    assert not cap.judge(2, [ok, ok], 0, 4, None)[0]


def test_overlap_uses_the_common_clock():
    a = Completion(choices=[{"text": "x"}])
    a.ttft_s, a.token_times = 1.0, [1.0, 2.0, 3.0]
    b = Completion(choices=[{"text": "x"}])
    b.ttft_s, b.token_times = 0.5, [0.5, 1.0]
    # sent at 0 and 2.0: a streams [1, 3], b streams [2.5, 3.0] -> overlap 0.5
    assert cap.overlap_of(cap.stream_spans([0.0, 2.0], [a, b])) == pytest.approx(0.5)
    # sent at 0 and 3.0: b starts at 3.5 after a ended at 3 -> no common moment
    assert cap.overlap_of(cap.stream_spans([0.0, 3.0], [a, b])) == pytest.approx(-0.5)


# --- the task --------------------------------------------------------------------------------

class FakeTokenizer:
    add_bos = False
    bos_id = None

    def encode(self, text, add_bos=False):
        return [ord(ch) for ch in text]


@pytest.mark.parametrize("queue", [False, True], ids=["preempts", "queues"])
def test_task_reports_five_sessions_and_ttft_items(monkeypatch, queue):
    client = FakeClient(holds=5, kv_ratio=0.25, queue=queue)
    server = FakeServer(client)
    monkeypatch.setattr(cap, "session_prompts",
                        lambda n, length, seed, tok, d: [[i] * length for i in range(n)])
    monkeypatch.setattr(cap, "_load_tokenizer", lambda model: FakeTokenizer())
    ctx = base.EvalContext(client=None, setting=base.Setting("h2o", 0.25), data_dir=DATA_DIR,
                           model_path="unused", seed=0, concurrency=1, server=server,
                           log=lambda msg: None)
    results = cap.TASK.run(ctx, {"pool_mb": 100, "length": 32, "output_tokens": 4,
                                 "max_sessions": 16})
    by_metric = {}
    for r in results:
        by_metric.setdefault(r.metric, []).append(r)
    assert by_metric["max_sessions"][0].value == 5
    assert by_metric["max_sessions"][0].setting == "length=32,pool_mb=100"
    assert {r.item_id for r in by_metric["ttft_s"]} == {f"session={i}" for i in range(5)}
    assert by_metric["throughput_tok_s"][0].value > 0
    p50, p95 = by_metric["ttft_p50_s"][0].value, by_metric["ttft_p95_s"][0].value
    assert 0 < p50 <= p95
    assert all(r.kv_ratio == 0.25 and r.task == "capacity" for r in results)
    # the server was restarted once with the pool and enough running slots
    assert server.restarts == [["--kv-cache-bytes", str(100 << 20), "--max-running", "64",
                                "--max-waiting", "256", "--max-batch-tokens", "48"]]
    assert all(req[2] == {"policy": "h2o", "ratio": 0.25} for req in client.requests)


def test_task_refuses_external_server():
    ctx = base.EvalContext(client=object(), setting=base.Setting("none", 1.0),
                           data_dir=DATA_DIR, model_path="unused", seed=0, concurrency=1,
                           server=None, log=lambda msg: None)
    with pytest.raises(RuntimeError, match="external server"):
        cap.TASK.run(ctx, {})


# --- pool sizing ------------------------------------------------------------------------------

def test_default_pool_holds_three_uncompressed_sessions():
    per_token = 2 * 30 * 3 * 64 * 2
    assert per_token == 23040
    one = cap.session_bytes(2048, 64, per_token)
    assert one == 132 * 16 * 23040  # ceil(2112 / 16) blocks
    pool_mb = cap.default_pool_mb(2048, 64, per_token)
    blocks = pool_mb * (1 << 20) // (16 * 23040)
    assert 3 * 132 <= blocks < 4 * 132


MODEL = os.environ.get("KVSERVE_MODEL", os.path.expanduser(
    "~/.cache/kvserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))


@pytest.mark.skipif(not os.path.isfile(MODEL), reason="model file not present")
def test_kv_bytes_per_token_from_the_gguf():
    assert cap.kv_bytes_per_token(MODEL) == 23040


@pytest.mark.skipif(not (os.path.isfile(MODEL)
                         and os.path.isdir(os.path.join(DATA_DIR, "gutenberg"))),
                    reason="model or Gutenberg texts not present")
def test_session_prompts_are_exact_length_and_distinct():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import haystack
    tok = haystack.load_tokenizer(MODEL)
    prompts = cap.session_prompts(6, 300, seed=1, tokenizer=tok,
                                  gutenberg_dir=os.path.join(DATA_DIR, "gutenberg"))
    assert [len(p) for p in prompts] == [300] * 6
    assert len({tuple(p[:16]) for p in prompts}) == 6
    again = cap.session_prompts(6, 300, seed=1, tokenizer=tok,
                                gutenberg_dir=os.path.join(DATA_DIR, "gutenberg"))
    assert again == prompts
