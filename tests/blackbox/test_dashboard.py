"""The built-in dashboard: GET /dashboard is a page that needs no internet, its Chart.js
comes from Debian's libjs-chart.js through the server, and GET /v1/stats (what the page
polls) reports the engine, including the bytes KV compression saves while a request runs."""
import os
import re
import threading
import time

import pytest
import requests

from server_util import MODEL_NAME, start_server

# Where the server looks for Chart.js, in its order (server/dashboard_page.cc).
CHART_JS_PATHS = ["/usr/share/javascript/chart.js/chart.umd.js",
                  "/usr/share/javascript/chart.js/chart.umd.min.js",
                  "/usr/share/javascript/chart.js/chart.min.js",
                  "/usr/share/javascript/chart.js/chart.js"]
TIERS = ["f16", "int8", "int4", "int2", "evicted"]
COMPRESSION = {"policy": "quant-uniform", "ratio": 0.5}
# About 300 tokens: long enough for several full blocks to quantize.
PROMPT = "The quick brown fox jumps over the lazy dog near the quiet river bank. " * 20


def debian_chart_js():
    for path in CHART_JS_PATHS:
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            return path
    return None


@pytest.fixture(scope="module")
def server(request, kvserve_bin, model_path):
    return start_server(request, kvserve_bin, model_path, "--kv-cache-bytes", "64MiB")


def get_stats(server):
    r = requests.get(server.url("/v1/stats"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def test_dashboard_page_is_offline_and_uses_the_local_chart_js(server):
    r = requests.get(server.url("/dashboard"), timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<canvas" in page and "/v1/stats" in page
    # The per-tenant charts are in every page; the script shows them once /v1/stats lists
    # tenants (test_tenants_dashboard_browser.py), and keeps them hidden without.
    for chart_id in ("chart-tenant-kv", "chart-tenant-saved", "chart-tenant-tokens"):
        assert f'<canvas id="{chart_id}">' in page
    assert re.search(r'<div class="grid" id="tenant-charts" hidden>', page)
    assert re.findall(r"https?://", page) == [], "the page must not load anything remote"
    if debian_chart_js() is not None:
        assert '<script src="/dashboard/chart.js' in page
        assert "nocharts" not in re.search(r"<body[^>]*>", page).group(0)
    else:
        assert "libjs-chart.js" in page and '<body class="nocharts">' in page


def test_chart_js_is_served_from_the_debian_package(server):
    path = debian_chart_js()
    if path is None:
        pytest.skip("Debian's libjs-chart.js is not installed")
    page = requests.get(server.url("/dashboard"), timeout=10).text
    src = re.search(r'<script src="(/dashboard/chart\.js[^"]*)"', page).group(1)
    r = requests.get(server.url(src), timeout=10)
    assert r.status_code == 200
    assert "javascript" in r.headers["content-type"]
    assert "max-age=" in r.headers["cache-control"]
    with open(path, "rb") as f:
        assert r.content == f.read()


def test_stats_has_the_documented_fields(server):
    s = get_stats(server)
    assert s["object"] == "kvserve.stats"
    assert s["model"] == MODEL_NAME
    assert abs(s["timestamp"] - time.time()) < 60
    assert s["uptime_seconds"] >= 0
    assert set(s["requests"]) == {"running", "waiting"}
    kv = s["kv_cache"]
    for key in ["capacity_bytes", "used_bytes", "free_bytes", "blocks_total", "blocks_used",
                "blocks_free", "stored_bytes", "uncompressed_bytes", "saved_bytes",
                "compression_ratio"]:
        assert isinstance(kv[key], (int, float)), key
    assert kv["free_bytes"] == kv["capacity_bytes"] - kv["used_bytes"]
    assert set(kv["bytes_by_tier"]) == set(TIERS) and set(kv["units_by_tier"]) == set(TIERS)
    t = s["totals"]
    for key in ["requests_submitted", "requests_finished", "requests_rejected", "prompt_tokens",
                "generation_tokens", "steps", "preemptions", "kv_blocks_evicted",
                "kv_compression_failures", "kv_reclaim_rounds", "kv_compression_seconds"]:
        assert isinstance(t[key], (int, float)), key
    assert set(t["kv_blocks_quantized_by_tier"]) == {"int8", "int4", "int2"}
    assert s["tenants"] == []
    # The same engine numbers as the Prometheus endpoint.
    assert kv["capacity_bytes"] == server.metric("kvserve_kv_cache_capacity_bytes")


def test_stats_show_what_compression_saves_while_a_request_runs(server):
    before = get_stats(server)
    done = server.client().completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=8, temperature=0,
        extra_body={"kv_compression": COMPRESSION, "ignore_eos": True})
    assert done.usage.prompt_tokens >= 250
    generated = lambda s: s["totals"]["generation_tokens"] - before["totals"]["generation_tokens"]
    after = server.wait_for_stats(lambda s: generated(s) >= 8)
    assert after["totals"]["prompt_tokens"] - before["totals"]["prompt_tokens"] >= 250
    assert generated(after) >= 8
    assert after["totals"]["steps"] > before["totals"]["steps"]
    assert (sum(after["totals"]["kv_blocks_quantized_by_tier"].values())
            > sum(before["totals"]["kv_blocks_quantized_by_tier"].values()))

    # Poll /v1/stats from another thread while a second such request streams: its live
    # cache is partly quantized, so the snapshot shows bytes saved.
    seen = []
    streaming = threading.Event()
    finished = threading.Event()

    def poll():
        streaming.wait(timeout=60)
        while not finished.is_set():
            seen.append(get_stats(server))
            if seen[-1]["kv_cache"]["saved_bytes"] > 0:
                return
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        stream = server.client().completions.create(
            model=MODEL_NAME, prompt=PROMPT, max_tokens=200, temperature=0, stream=True,
            extra_body={"kv_compression": COMPRESSION, "ignore_eos": True})
        for i, _ in enumerate(stream):
            if i == 1:  # the prompt is in: poll from now on
                streaming.set()
            if not poller.is_alive():
                break  # seen what we wanted; closing the stream cancels the request
        stream.close()
    finally:
        streaming.set()
        finished.set()
        poller.join()
    assert seen, "no snapshot was taken while the request streamed"
    best = max(seen, key=lambda s: s["kv_cache"]["saved_bytes"])
    kv = best["kv_cache"]
    assert kv["saved_bytes"] > 0, seen[-1]
    assert kv["saved_bytes"] == kv["uncompressed_bytes"] - kv["stored_bytes"]
    assert kv["compression_ratio"] < 1
    assert kv["stored_bytes"] == sum(kv["bytes_by_tier"].values())
    assert sum(kv["units_by_tier"][t] for t in ["int8", "int4", "int2"]) > 0
    assert best["requests"]["running"] >= 1
