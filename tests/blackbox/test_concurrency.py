"""Many simultaneous streamed requests: batching must not change any greedy result."""
import os
import random
import threading

import pytest

from conftest import ROOT
from server_util import MODEL_NAME, start_server

N_REQUESTS = 16
MAX_TOKENS = 24


def prompts():
    """16 different prompts of 5 to ~300 tokens: short sentences and book excerpts."""
    short = ["The capital of France is", "def fibonacci(n):", "Water boils at",
             "My favourite colour is", "In 1492, Columbus", "The quick brown fox",
             "Dear diary, today I", "The recipe calls for"]
    path = os.path.join(ROOT, "..", "shared", "data", "gutenberg", "melville-moby_dick.txt")
    with open(path, encoding="utf-8") as f:
        book = f.read()
    rng = random.Random(5)
    excerpts = []
    for i in range(N_REQUESTS - len(short)):
        start = book.find("\n", rng.randrange(10000, len(book) - 5000)) + 1
        excerpts.append(book[start:start + 150 * (i + 1)])
    return short + excerpts


@pytest.fixture(scope="module")
def server(request, kvserve_bin, model_path):
    return start_server(request, kvserve_bin, model_path)


def stream_text(client, prompt):
    pieces, finish, usage = [], None, None
    for ch in client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=MAX_TOKENS,
                                        temperature=0, stream=True,
                                        stream_options={"include_usage": True}):
        for c in ch.choices:
            pieces.append(c.text)
            finish = c.finish_reason or finish
        usage = ch.usage or usage
    return "".join(pieces), finish, usage.completion_tokens


def test_simultaneous_streams_equal_their_runs_alone(server):
    ps = prompts()
    client = server.client()
    alone = [stream_text(client, p) for p in ps]
    assert len(set(a[0] for a in alone)) > N_REQUESTS // 2  # the prompts really differ
    results = [None] * N_REQUESTS
    errors = []
    barrier = threading.Barrier(N_REQUESTS)

    def run(i):
        try:
            c = server.client()
            barrier.wait(timeout=30)
            results[i] = stream_text(c, ps[i])
        except Exception as e:  # reported below with the request's index
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N_REQUESTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors
    for i in range(N_REQUESTS):
        assert results[i] == alone[i], f"request {i} ({ps[i][:40]!r}) differs when batched"
    samples = server.wait_for_metrics({"kvserve_requests_running": 0})
    assert server.metric("kvserve_requests_running", samples) == 0
    assert server.metric("kvserve_kv_cache_blocks", samples, state="used") == 0
