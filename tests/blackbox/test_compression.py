"""KV compression end to end through the real server: a long prompt with a small ratio
frees pool bytes while it decodes, and the same small pool then runs more sequences at
once than it can without compression; every block comes back."""
import threading
import time

import pytest

from server_util import MODEL_NAME, start_server
from test_pressure import book_prompts, run_concurrently

BLOCK_BYTES = 30 * 2 * 192 * 2 * 16  # SmolLM2-135M: one f16 block of 16 tokens
POOL = "80MiB"  # 227 blocks: two ~1500-token sequences uncompressed, not three
N_REQUESTS = 5
OUTPUT_TOKENS = 40


@pytest.fixture(scope="module")
def server(request, kvserve_bin, model_path):
    return start_server(request, kvserve_bin, model_path, "--kv-cache-bytes", POOL,
                        "--max-running", str(N_REQUESTS))


@pytest.fixture(scope="module")
def prompts():
    return book_prompts(N_REQUESTS, chars=6200, seed=5)


def completion(server, prompt, spec=None, **kw):
    extra = {"kv_compression": spec} if spec else {}
    return server.client().completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=OUTPUT_TOKENS, temperature=0,
        extra_body=dict(extra, ignore_eos=True), **kw)


def peak_while(server, fn):
    """Runs fn() while sampling /metrics; returns (fn's result, max running, max of
    kvserve_kv_cache_saved_bytes)."""
    done = threading.Event()
    peaks = {"running": 0, "saved": 0}

    def sample():
        while not done.is_set():
            s = server.metric_samples()
            peaks["running"] = max(peaks["running"], server.metric("kvserve_requests_running", s))
            peaks["saved"] = max(peaks["saved"], server.metric("kvserve_kv_cache_saved_bytes", s))
            time.sleep(0.05)

    t = threading.Thread(target=sample)
    t.start()
    try:
        out = fn()
    finally:
        done.set()
        t.join()
    return out, peaks["running"], peaks["saved"]


def wait_idle(server):
    s = server.wait_for_metrics({"kvserve_requests_running": 0,
                                 'kvserve_kv_cache_blocks{state="used"}': 0}, timeout=30)
    assert server.metric("kvserve_kv_cache_blocks", s, state="used") == 0
    assert server.metric("kvserve_kv_cache_used_bytes", s) == 0


def test_small_ratio_frees_pool_bytes_while_decoding(server, prompts):
    spec = {"policy": "attention-guided", "ratio": 0.125}
    stream = server.client().completions.create(
        model=MODEL_NAME, prompt=prompts[0], max_tokens=OUTPUT_TOKENS, temperature=0,
        stream=True, stream_options={"include_usage": True},
        extra_body={"kv_compression": spec, "ignore_eos": True})
    during = None
    usage = None
    for i, chunk in enumerate(stream):
        if i == 5:  # decoding: the prompt is in and has been compressed
            during = server.metric_samples()
        if chunk.usage is not None:
            usage = chunk.usage
    used = server.metric("kvserve_kv_cache_used_bytes", during)
    uncompressed = server.metric("kvserve_kv_cache_uncompressed_bytes", during)
    assert uncompressed >= 90 * BLOCK_BYTES  # ~1500 tokens
    # The pool holds a fraction of what the same sequence takes in f16.
    assert used < 0.3 * uncompressed, (used, uncompressed)
    assert server.metric("kvserve_kv_cache_saved_bytes", during) == uncompressed - used
    assert usage.prompt_tokens > 1400
    extra = usage.model_extra
    assert extra["kv_bytes"] < 0.3 * extra["kv_bytes_uncompressed"]
    assert extra["kv_compression_ratio"] == pytest.approx(
        extra["kv_bytes"] / extra["kv_bytes_uncompressed"])
    wait_idle(server)


def test_compression_admits_more_concurrent_sequences(server, prompts):
    def run(spec):
        results, errors = run_concurrently(lambda p: completion(server, p, spec), prompts)
        assert not errors, errors
        return results

    plain, plain_peak, plain_saved = peak_while(server, lambda: run(None))
    wait_idle(server)
    spec = {"policy": "attention-guided", "ratio": 0.125}
    packed, packed_peak, packed_saved = peak_while(server, lambda: run(spec))
    wait_idle(server)
    for r in plain + packed:
        assert r.choices[0].finish_reason == "length"
        assert r.usage.completion_tokens == OUTPUT_TOKENS
    assert plain_saved == 0
    assert packed_saved > 0
    # Uncompressed, two of these sequences fill the pool (a third may start its prefill
    # before it is preempted); compressed to 1/8, more of them decode side by side.
    print(f"peak running: {plain_peak} uncompressed, {packed_peak} at ratio 1/8")
    assert plain_peak <= 3, plain_peak
    assert packed_peak > plain_peak, (plain_peak, packed_peak)
