"""The built-in dashboard in headless Chromium on a server with API keys (a tenants file).

Browsers cannot add a Bearer header by themselves, so /dashboard also challenges for Basic
credentials: the browser logs in once (any user name, the key as password) and then sends
the same credentials with the page's own requests (Chart.js, the /v1/stats polls). Here the
login comes from the address (http://user:key@host/dashboard), which answers the challenge
as a typed login would. Without a key the page is refused.
"""
import json
import shutil
import subprocess
import time

import pytest
import requests

from server_util import start_server
from test_dashboard_browser import Browser, DevToolsError, chart_js_file

KEY = "dash-key-1"
PAGE_TIMEOUT_S = 60

# What the page shows: Chart.js, the poll's time and error line, and the tenant table.
PROBE_JS = """(() => ({
  chartjs: typeof Chart === "undefined" ? null : Chart.version,
  updated: document.getElementById("updated").textContent,
  error: document.getElementById("error").textContent,
  tenants: document.getElementById("tenants").textContent,
  body: document.body ? document.body.innerText.slice(0, 400) : "",
}))()"""


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
    hashed = subprocess.run([kvserve_bin, "hash-key"], input=KEY, capture_output=True,
                            text=True, timeout=30, check=True).stdout.strip()
    path = tmp_path_factory.mktemp("tenants") / "tenants.json"
    path.write_text(json.dumps({"tenants": [{"id": "dash-tenant", "api_keys": [hashed]}]}))
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
