"""Resource pressure: a KV pool too small for every request at once (preemption and
recompute must not change greedy results, and free every block), and a full queue
(429 with Retry-After)."""
import os
import random
import threading

import openai
import pytest

from conftest import ROOT
from server_util import MODEL_NAME, error_of, start_server

# SmolLM2-135M keeps K and V in f16: 30 layers x 2 x (3 KV heads x 64) x 2 bytes.
KV_BYTES_PER_TOKEN = 30 * 2 * 192 * 2
BLOCK_TOKENS = 16
POOL_BYTES = 17 << 20  # 48 blocks of 16 tokens: 768 tokens
N_REQUESTS = 8
OUTPUT_TOKENS = 160  # ~150-token prompt + 160 outputs = 20 blocks: 2 fit, 3 do not


def book_prompts(n, chars=600, seed=11):
    path = os.path.join(ROOT, "..", "shared", "data", "gutenberg", "austen-emma.txt")
    with open(path, encoding="utf-8") as f:
        book = f.read()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = book.find("\n", rng.randrange(5000, len(book) - 5000)) + 1
        out.append(book[start:start + chars])
    return out


def run_concurrently(fn, args):
    results, errors = [None] * len(args), []
    barrier = threading.Barrier(len(args))

    def run(i):
        try:
            barrier.wait(timeout=30)
            results[i] = fn(args[i])
        except Exception as e:  # reported by the caller with the index
            errors.append((i, e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results, errors


@pytest.fixture(scope="module")
def small_pool(request, kvserve_bin, model_path):
    return start_server(request, kvserve_bin, model_path, "--kv-cache-bytes", "17MiB",
                        "--max-running", str(N_REQUESTS))


def test_pool_is_as_configured(small_pool):
    s = small_pool.metric_samples()
    cap = small_pool.metric("kvserve_kv_cache_capacity_bytes", s)
    blocks = (small_pool.metric("kvserve_kv_cache_blocks", s, state="free")
              + small_pool.metric("kvserve_kv_cache_blocks", s, state="used"))
    assert cap <= POOL_BYTES
    assert blocks == POOL_BYTES // (KV_BYTES_PER_TOKEN * BLOCK_TOKENS)
    assert cap == blocks * KV_BYTES_PER_TOKEN * BLOCK_TOKENS


def test_preempted_requests_finish_with_their_alone_greedy_text(small_pool):
    client = small_pool.client(timeout=300)

    def complete(prompt):
        r = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=OUTPUT_TOKENS,
                                      temperature=0, extra_body={"ignore_eos": True})
        return r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens

    prompts = book_prompts(N_REQUESTS)
    alone = [complete(p) for p in prompts]
    assert all(a[1] == "length" and a[2] == OUTPUT_TOKENS for a in alone)
    before = small_pool.metric("kvserve_preemptions_total")
    results, errors = run_concurrently(complete, prompts)
    assert not errors, errors
    for i, (got, want) in enumerate(zip(results, alone)):
        assert got == want, f"request {i} differs under KV pressure"
    s = small_pool.wait_for_metrics({"kvserve_requests_running": 0,
                                     'kvserve_kv_cache_blocks{state="used"}': 0})
    assert small_pool.metric("kvserve_requests_running", s) == 0
    assert small_pool.metric("kvserve_requests_waiting", s) == 0
    assert small_pool.metric("kvserve_kv_cache_blocks", s, state="used") == 0
    assert small_pool.metric("kvserve_kv_cache_used_bytes", s) == 0
    assert small_pool.metric("kvserve_preemptions_total", s) > before


def test_full_queue_is_429_with_retry_after(request, kvserve_bin, model_path):
    srv = start_server(request, kvserve_bin, model_path, "--max-running", "1",
                       "--max-waiting", "1")
    client = srv.client(timeout=120)

    def complete(_):
        try:
            r = client.completions.create(model=MODEL_NAME, prompt="Once upon a time",
                                          max_tokens=64, temperature=0,
                                          extra_body={"ignore_eos": True})
            return r.usage.completion_tokens
        except openai.RateLimitError as e:
            return e

    results, errors = run_concurrently(complete, list(range(6)))
    assert not errors, errors
    rejected = [r for r in results if isinstance(r, openai.RateLimitError)]
    served = [r for r in results if not isinstance(r, openai.RateLimitError)]
    # One runs, one waits; the other four arrive while both places are taken.
    assert 1 <= len(served) <= 5 and len(rejected) >= 1, results
    assert all(n == 64 for n in served)
    for e in rejected:
        assert e.status_code == 429
        retry_after = e.response.headers.get("retry-after")
        assert retry_after is not None and retry_after.isdigit(), e.response.headers
        error_of(e.response)
    s = srv.wait_for_metrics({"kvserve_requests_running": 0})
    assert srv.metric("kvserve_requests_rejected_total", s) >= len(rejected)
    r = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=2)
    assert r.usage.completion_tokens == 2 or r.choices[0].finish_reason == "stop"
