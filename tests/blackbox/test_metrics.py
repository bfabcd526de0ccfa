"""GET /metrics: valid Prometheus text, every documented metric, and values that move
with the requests served."""
import math

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from server_util import MODEL_NAME, start_server

GAUGES = ["kvserve_requests_running", "kvserve_requests_waiting",
          "kvserve_kv_cache_capacity_bytes", "kvserve_kv_cache_used_bytes",
          "kvserve_kv_cache_usage_ratio", "kvserve_kv_cache_blocks"]
COUNTERS = ["kvserve_preemptions", "kvserve_prompt_tokens", "kvserve_generation_tokens",
            "kvserve_requests", "kvserve_requests_rejected"]  # samples end in _total
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
    states = {s.labels.get("state") for s in fams["kvserve_kv_cache_blocks"].samples}
    assert states == {"free", "used"}


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
