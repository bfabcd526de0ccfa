"""The built-in dashboard in headless Chromium on a server with API keys (a tenants file).

Browsers cannot add a Bearer header by themselves, so /dashboard also challenges for Basic
credentials: the browser logs in once (any user name, the key as password) and then sends
the same credentials with the page's own requests (Chart.js, the /v1/stats polls). Here the
login comes from the address (http://user:key@host/dashboard), which answers the challenge
as a typed login would. Without a key the page is refused.

With two tenants, one streaming compressed requests and one idle after a single request,
the per-tenant charts (stacked KV bytes, saved bytes, generation tokens/s per tenant) show
non-zero values for the tenant under load and zero for the idle one; a screenshot is saved
(also copied to build/dashboard-tenants-screenshot.png for people to look at).
"""
import json
import os
import shutil
import subprocess
import time

import pytest
import requests

from server_util import start_server
from test_dashboard_browser import (HEIGHT, ROOT, WIDTH, Browser, DevToolsError, Load,
                                    chart_js_file, png_size)

KEY = "dash-key-1"
QUIET_KEY = "quiet-key-1"
PAGE_TIMEOUT_S = 60
TENANT_CHART_IDS = ["chart-tenant-kv", "chart-tenant-saved", "chart-tenant-tokens"]
MIN_POINTS = 3  # polls each per-tenant chart must have drawn: the page polls every 2 s

# What the page shows: Chart.js, the poll's time and error line, and the tenant table.
PROBE_JS = """(() => ({
  chartjs: typeof Chart === "undefined" ? null : Chart.version,
  updated: document.getElementById("updated").textContent,
  error: document.getElementById("error").textContent,
  tenants: document.getElementById("tenants").textContent,
  body: document.body ? document.body.innerText.slice(0, 400) : "",
}))()"""

# The per-tenant charts' data, from Chart.js itself.
TENANT_PROBE_JS = """(() => {
  const charts = {};
  for (const id of %s) {
    const c = typeof Chart === "undefined" ? undefined : Chart.getChart(id);
    charts[id] = c === undefined ? null : {
      labels: c.data.labels.length,
      datasets: Object.fromEntries(c.data.datasets.map((d) => [d.label, d.data])),
      stacked: c.options.scales.y.stacked === true,
      canvas: [c.canvas.width, c.canvas.height],
    };
  }
  return {
    charts: charts,
    shown: getComputedStyle(document.getElementById("tenant-charts")).display !== "none",
    error: document.getElementById("error").textContent,
    tenants: document.getElementById("tenants").textContent,
  };
})()""" % json.dumps(TENANT_CHART_IDS)


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    if chart_js_file() is None:
        pytest.skip("no Chart.js in /usr/share/javascript/chart.js (apt-get install "
                    "libjs-chart.js)")
    return path


@pytest.fixture(scope="module")
def server(request, kvserve_bin, model_path, tmp_path_factory):
    def hashed(key):
        return subprocess.run([kvserve_bin, "hash-key"], input=key, capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()

    path = tmp_path_factory.mktemp("tenants") / "tenants.json"
    path.write_text(json.dumps({"tenants": [
        {"id": "dash-tenant", "api_keys": [hashed(KEY)]},
        {"id": "quiet-tenant", "api_keys": [hashed(QUIET_KEY)]}]}))
    return start_server(request, kvserve_bin, model_path, "--tenants", str(path),
                        "--kv-cache-bytes", "64MiB", api_key=KEY)


def poll_page(browser, session, probe, done):
    """Evaluates `probe` until done(state) or PAGE_TIMEOUT_S; returns the last state."""
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    state = None
    while True:
        try:
            state = browser.evaluate(session, probe)
        except DevToolsError:
            state = None  # between documents right after navigating
        if state is not None and done(state):
            return state
        assert time.monotonic() < deadline, f"page not as expected: {state}"
        time.sleep(0.3)


def test_dashboard_after_a_basic_login_polls_stats_with_the_same_key(chromium, server,
                                                                      tmp_path):
    # A request first, so that the engine has stepped and lists the tenant.
    r = requests.post(server.url("/v1/completions"), headers=server.auth_headers(), timeout=60,
                      json={"prompt": "Hello", "max_tokens": 2})
    assert r.status_code == 200, r.text
    browser = Browser(chromium, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        session = browser.open_page(f"http://viewer:{KEY}@127.0.0.1:{server.port}/dashboard")
        state = poll_page(browser, session, PROBE_JS,
                          lambda s: s["updated"] != "never" or s["error"] != "")
    finally:
        browser.close()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    # Chart.js and a /v1/stats poll came with the browser's stored login: the poll's
    # error line would say "HTTP 401" otherwise.
    assert state["error"] == "", state
    assert state["chartjs"], state
    assert "dash-tenant" in state["tenants"], state


def test_dashboard_without_a_login_is_refused(chromium, server, tmp_path):
    browser = Browser(chromium, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        # Headless Chromium has no login prompt to show for the Basic challenge, so it
        # ends the navigation with this error.
        with pytest.raises(DevToolsError, match="ERR_INVALID_AUTH_CREDENTIALS"):
            browser.open_page(server.url("/dashboard"))
    finally:
        browser.close()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def tenant_stats(server):
    r = requests.get(server.url("/v1/stats"), headers=server.auth_headers(), timeout=10)
    assert r.status_code == 200, r.text
    return {t["tenant"]: t for t in r.json()["tenants"]}


def tenant_charts_ready(state):
    """Every per-tenant chart has MIN_POINTS polls and the latest shows dash-tenant's
    cache compressed while quiet-tenant holds nothing."""
    charts = state["charts"]
    if any(charts[i] is None or charts[i]["labels"] < MIN_POINTS for i in TENANT_CHART_IDS):
        return False

    def latest(chart_id, tenant):
        data = charts[chart_id]["datasets"].get(tenant)
        return data[-1] if data else None

    return ((latest("chart-tenant-kv", "dash-tenant") or 0) > 0
            and (latest("chart-tenant-saved", "dash-tenant") or 0) > 0
            and latest("chart-tenant-kv", "quiet-tenant") == 0)


def test_per_tenant_charts_show_the_tenant_under_load(chromium, server, tmp_path):
    # quiet-tenant's one request, finished before the load starts: it holds no KV after.
    r = requests.post(server.url("/v1/completions"),
                      headers={"Authorization": f"Bearer {QUIET_KEY}"}, timeout=60,
                      json={"prompt": "Hello", "max_tokens": 2})
    assert r.status_code == 200, r.text
    load = Load(server)  # streams compressed requests with the server's key: dash-tenant's
    browser = None
    try:
        deadline = time.monotonic() + 120
        while tenant_stats(server)["dash-tenant"]["kv_saved_bytes"] <= 0:
            assert not load.errors, load.errors
            assert time.monotonic() < deadline, f"no bytes saved: {tenant_stats(server)}"
            time.sleep(0.2)
        browser = Browser(chromium, tmp_path / "profile", tmp_path / "chromium.log")
        session = browser.open_page(f"http://viewer:{KEY}@127.0.0.1:{server.port}/dashboard")
        state = poll_page(browser, session, TENANT_PROBE_JS, tenant_charts_ready)
        png = browser.screenshot(session)
    finally:
        if browser is not None:
            browser.close()
            shutil.rmtree(tmp_path / "profile", ignore_errors=True)
        load.stop()

    shot = tmp_path / "dashboard-tenants.png"
    shot.write_bytes(png)
    (tmp_path / "dashboard-tenants-state.json").write_text(json.dumps(state, indent=1))
    if os.path.isdir(os.path.join(ROOT, "build")):
        shutil.copyfile(shot, os.path.join(ROOT, "build", "dashboard-tenants-screenshot.png"))

    assert not load.errors, load.errors
    assert state["error"] == "", state
    assert state["shown"] is True
    charts = state["charts"]
    for chart_id in TENANT_CHART_IDS:
        # One dataset per tenant of the file, each as long as the chart's time axis.
        assert set(charts[chart_id]["datasets"]) == {"dash-tenant", "quiet-tenant"}, chart_id
        assert all(len(d) == charts[chart_id]["labels"]
                   for d in charts[chart_id]["datasets"].values()), chart_id
        w, h = charts[chart_id]["canvas"]
        assert w > 100 and h > 100, (chart_id, w, h)
    assert charts["chart-tenant-kv"]["stacked"] and charts["chart-tenant-saved"]["stacked"]
    # The latest poll: the tenant under load holds compressed KV, the idle one nothing.
    kv = {k: v[-1] for k, v in charts["chart-tenant-kv"]["datasets"].items()}
    saved = {k: v[-1] for k, v in charts["chart-tenant-saved"]["datasets"].items()}
    assert kv["dash-tenant"] > 0 and saved["dash-tenant"] > 0, (kv, saved)
    assert kv["quiet-tenant"] == 0 and saved["quiet-tenant"] == 0, (kv, saved)
    # It generated while the page watched; the idle tenant did not.
    tokens = charts["chart-tenant-tokens"]["datasets"]
    assert max(v or 0 for v in tokens["dash-tenant"]) > 0, tokens
    assert all((v or 0) == 0 for v in tokens["quiet-tenant"]), tokens
    # The tenant table lists both.
    assert "dash-tenant" in state["tenants"] and "quiet-tenant" in state["tenants"]
    # The screenshot is a real render of the page, not an empty image.
    assert png_size(png) == (WIDTH, HEIGHT)
    assert len(png) > 10_000, len(png)
