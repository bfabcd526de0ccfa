"""GET /metrics: valid Prometheus text, every documented metric, and values that move
with the requests served."""
import math
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from server_util import MODEL_NAME, start_server

GAUGES = ["kvserve_requests_running", "kvserve_requests_waiting",
          "kvserve_kv_cache_capacity_bytes", "kvserve_kv_cache_used_bytes",
          "kvserve_kv_cache_usage_ratio", "kvserve_kv_cache_blocks",
          "kvserve_kv_cache_bytes", "kvserve_kv_cache_uncompressed_bytes",
          "kvserve_kv_cache_saved_bytes", "kvserve_kv_cache_compression_ratio"]
COUNTERS = ["kvserve_preemptions", "kvserve_prompt_tokens", "kvserve_generation_tokens",
            "kvserve_requests", "kvserve_requests_rejected", "kvserve_kv_blocks_quantized",
            "kvserve_kv_blocks_evicted", "kvserve_kv_compression_failures",
            "kvserve_kv_reclaim_rounds",
            "kvserve_kv_compression_seconds"]  # samples end in _total
TIERS = {"f16", "int8", "int4", "int2", "evicted"}
HISTOGRAMS = ["kvserve_time_to_first_token_seconds", "kvserve_time_per_output_token_seconds",
              "kvserve_e2e_request_latency_seconds", "kvserve_request_queue_time_seconds"]


@pytest.fixture(scope="module")
def server(request, kvserve_bin, model_path):
    return start_server(request, kvserve_bin, model_path, "--kv-cache-bytes", "8MiB")


def families(srv):
    r = requests.get(srv.url("/metrics"), timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def check_histogram(fam):
    buckets = [(float(s.labels["le"]), s.value) for s in fam.samples
               if s.name == fam.name + "_bucket"]
    count = [s.value for s in fam.samples if s.name == fam.name + "_count"]
    total = [s.value for s in fam.samples if s.name == fam.name + "_sum"]
    assert len(buckets) >= 2 and len(count) == 1 and len(total) == 1, fam
    bounds = [b for b, _ in buckets]
    assert bounds == sorted(bounds) and math.isinf(bounds[-1])
    values = [v for _, v in buckets]
    assert values == sorted(values), "buckets must be cumulative"
    assert values[-1] == count[0] and total[0] >= 0
    return count[0]


def test_every_documented_metric_with_its_type(server):
    fams = families(server)
    for name in GAUGES:
        assert name in fams and fams[name].type == "gauge", name
        assert fams[name].documentation, f"{name} has no HELP text"
    for name in COUNTERS:
        assert name in fams and fams[name].type == "counter", name
        assert all(s.name.endswith("_total") or s.name.endswith("_created")
                   for s in fams[name].samples), name
    for name in HISTOGRAMS:
        assert name in fams and fams[name].type == "histogram", name
        check_histogram(fams[name])
    # kvserve_kv_cache_blocks holds whole blocks by state and per-layer units by tier.
    blocks = fams["kvserve_kv_cache_blocks"].samples
    assert all(len(s.labels) == 1 for s in blocks), blocks
    assert {s.labels["state"] for s in blocks if "state" in s.labels} == {"free", "used"}
    assert {s.labels["tier"] for s in blocks if "tier" in s.labels} == TIERS
    assert ({s.labels["tier"] for s in fams["kvserve_kv_cache_bytes"].samples}
            == TIERS - {"evicted"})
    assert ({s.labels["tier"] for s in fams["kvserve_kv_blocks_quantized"].samples}
            == {"int8", "int4", "int2"})


def test_idle_gauges_are_consistent(server):
    s = server.metric_samples()
    cap = server.metric("kvserve_kv_cache_capacity_bytes", s)
    assert 0 < cap <= 8 << 20
    assert server.metric("kvserve_kv_cache_used_bytes", s) == 0
    assert server.metric("kvserve_kv_cache_usage_ratio", s) == 0
    assert server.metric("kvserve_kv_cache_blocks", s, state="used") == 0
    assert server.metric("kvserve_kv_cache_blocks", s, state="free") > 0
    assert server.metric("kvserve_requests_running", s) == 0
    assert server.metric("kvserve_requests_waiting", s) == 0
    for tier in TIERS:
        assert server.metric("kvserve_kv_cache_blocks", s, tier=tier) == 0, tier
    assert server.metric("kvserve_kv_cache_uncompressed_bytes", s) == 0
    assert server.metric("kvserve_kv_cache_saved_bytes", s) == 0
    assert server.metric("kvserve_kv_cache_compression_ratio", s) == 1


def hist_count(fams, name):
    return check_histogram(fams[name])


def test_counters_and_histograms_move_after_a_request(server):
    before_s, before_f = server.metric_samples(), families(server)
    r = server.client().completions.create(model=MODEL_NAME, prompt="Once upon a time there was",
                                           max_tokens=7, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 7
    after_s = server.wait_for_metrics({"kvserve_requests_running": 0})
    after_f = families(server)

    def delta(name, **labels):
        key = (name, frozenset(labels.items()))
        return after_s.get(key, 0) - before_s.get(key, 0)

    assert delta("kvserve_prompt_tokens_total") == r.usage.prompt_tokens
    assert delta("kvserve_generation_tokens_total") == 7
    assert delta("kvserve_requests_total", finish_reason="length") == 1
    assert delta("kvserve_requests_rejected_total") == 0
    assert delta("kvserve_preemptions_total") == 0
    for name in HISTOGRAMS:
        assert hist_count(after_f, name) == hist_count(before_f, name) + 1, name
    ttft_sum = after_s[("kvserve_time_to_first_token_seconds_sum", frozenset())]
    e2e_sum = after_s[("kvserve_e2e_request_latency_seconds_sum", frozenset())]
    assert 0 < ttft_sum <= e2e_sum


def test_gauges_while_a_request_runs(server):
    client = server.client()
    stream = client.completions.create(model=MODEL_NAME, prompt="The history of the world",
                                       max_tokens=300, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    try:
        next(iter(stream))
        s = server.metric_samples()
        assert server.metric("kvserve_requests_running", s) == 1
        used = server.metric("kvserve_kv_cache_blocks", s, state="used")
        assert used >= 1
        cap = server.metric("kvserve_kv_cache_capacity_bytes", s)
        ratio = server.metric("kvserve_kv_cache_usage_ratio", s)
        assert math.isclose(ratio, server.metric("kvserve_kv_cache_used_bytes", s) / cap,
                            rel_tol=1e-6)
    finally:
        stream.close()
    s = server.wait_for_metrics({"kvserve_requests_running": 0})
    assert server.metric("kvserve_requests_running", s) == 0


def quantized_total(samples):
    return sum(v for (name, _), v in samples.items()
               if name == "kvserve_kv_blocks_quantized_total")


def test_kv_compression_metrics_after_a_quantized_request(server):
    before = server.metric_samples()
    prompt = "The quick brown fox jumps over the lazy dog near the river bank. " * 20  # ~280 tokens: 18 of the 22 blocks
    r = requests.post(server.url("/v1/completions"), timeout=120, json={
        "model": MODEL_NAME, "prompt": prompt, "max_tokens": 4, "temperature": 0,
        "ignore_eos": True, "kv_compression": {"policy": "quant-uniform", "ratio": 0.5}})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] >= 250, usage
    assert 0 < usage["kv_bytes"] < usage["kv_bytes_uncompressed"], usage

    # The engine publishes its snapshot after each step; poll until it shows the finish.
    deadline = time.monotonic() + 10
    while True:
        after = server.metric_samples()
        done = (server.metric("kvserve_requests_running", after) == 0
                and quantized_total(after) > quantized_total(before))
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert quantized_total(after) > quantized_total(before)
    # The blocks were freed with the request: the live-cache gauges are back to empty.
    assert server.metric("kvserve_kv_cache_uncompressed_bytes", after) == 0
    assert server.metric("kvserve_kv_cache_compression_ratio", after) == 1

    policy = frozenset({("policy", "quant-uniform")})

    def delta(name):
        return after.get((name, policy), 0) - before.get((name, policy), 0)

    # One choice observed, with the ratio and savings the response reported.
    assert delta("kvserve_request_kv_compression_ratio_count") == 1
    assert math.isclose(delta("kvserve_request_kv_compression_ratio_sum"),
                        usage["kv_compression_ratio"], rel_tol=1e-6)
    assert (delta("kvserve_request_kv_saved_bytes_total")
            == usage["kv_bytes_uncompressed"] - usage["kv_bytes"])
    # Its buckets: cumulative, and the ratio is at most 1.
    bucket = "kvserve_request_kv_compression_ratio_bucket"
    for le in ("1", "+Inf"):
        key = (bucket, policy | {("le", le)})
        assert after[key] - before.get(key, 0) == 1, le
    bounds = sorted((float(dict(k)["le"]), v) for (name, k), v in after.items()
                    if name == bucket and ("policy", "quant-uniform") in k)
    assert [v for _, v in bounds] == sorted(v for _, v in bounds)


def test_kv_tier_gauges_agree_while_a_compressed_request_runs(server):
    prompt = "The quick brown fox jumps over the lazy dog near the river bank. " * 20
    stream = server.client().completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=40, temperature=0, stream=True,
        extra_body={"ignore_eos": True,
                    "kv_compression": {"policy": "quant-uniform", "ratio": 0.5}})
    try:
        next(iter(stream))
        s = server.metric_samples()
    finally:
        stream.close()
    used_blocks = server.metric("kvserve_kv_cache_blocks", s, state="used")
    assert used_blocks >= 17  # ~280 prompt tokens in blocks of 16
    units = sum(server.metric("kvserve_kv_cache_blocks", s, tier=t) for t in TIERS)
    assert units == 30 * used_blocks  # one unit per layer of SmolLM2-135M's 30
    stored = sum(server.metric("kvserve_kv_cache_bytes", s, tier=t) for t in TIERS - {"evicted"})
    assert stored == server.metric("kvserve_kv_cache_used_bytes", s)
    uncompressed = server.metric("kvserve_kv_cache_uncompressed_bytes", s)
    assert 0 < stored <= uncompressed
    assert server.metric("kvserve_kv_cache_saved_bytes", s) == uncompressed - stored
    assert math.isclose(server.metric("kvserve_kv_cache_compression_ratio", s),
                        stored / uncompressed, rel_tol=1e-9)
    server.wait_for_metrics({"kvserve_requests_running": 0})
