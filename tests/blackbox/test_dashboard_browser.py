"""The built-in dashboard in a real browser: headless Chromium (Debian's `chromium`) opens
GET /dashboard on a server that streams compressed requests, waits until the page's Chart.js
charts have several points from /v1/stats, checks they show memory saved by KV compression
(and, without a tenants file, no per-tenant charts but a "No tenants" note), and saves a
screenshot (also copied to build/dashboard-screenshot.png for people to look at).

The browser is driven through the DevTools protocol over --remote-debugging-pipe (JSON
messages ended by NUL on file descriptors 3 and 4), so the test needs only the standard
library, and reads the charts' data from Chart.js itself rather than guessing from pixels.
Real time, not --virtual-time-budget: the load comes and goes between requests, and waiting
in real time lets the test take its screenshot when the latest poll shows savings.
"""
import base64
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import threading
import time

import pytest
import requests

from server_util import MODEL_NAME, start_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART_JS_DIR = "/usr/share/javascript/chart.js"
# Where the server looks for Chart.js, in its order (server/dashboard_page.cc).
CHART_JS_NAMES = ["chart.umd.js", "chart.umd.min.js", "chart.min.js", "chart.js"]
CHART_IDS = ["chart-saved", "chart-tiers", "chart-throughput", "chart-requests"]
COMPRESSION = {"policy": "attention-guided", "ratio": 0.25}
SENTENCES = [
    "The river runs past the old mill and under the stone bridge.",
    "A heron waits in the shallows while the morning fog lifts.",
    "Farmers bring apples, cheese and bread to the market square.",
    "At noon the church bell rings twelve times over the valley.",
    "Children race paper boats along the ditch beside the road.",
]
WIDTH, HEIGHT = 1280, 1600
MIN_POINTS = 3  # polls each chart must have drawn: the page polls every 2 s
PAGE_TIMEOUT_S = 90

# Runs in the page: what the charts hold (from Chart.js) and what the "Now" table shows.
PROBE_JS = """(() => {
  const charts = {};
  for (const id of %s) {
    const c = typeof Chart === "undefined" ? undefined : Chart.getChart(id);
    charts[id] = c === undefined ? null : {
      labels: c.data.labels.length,
      datasets: Object.fromEntries(c.data.datasets.map((d) => [d.label, d.data])),
      canvas: [c.canvas.width, c.canvas.height],
    };
  }
  const rows = {};
  for (const tr of document.querySelectorAll("#now tr")) {
    rows[tr.cells[0].textContent] = tr.cells[1].textContent;
  }
  return {
    chartjs: typeof Chart === "undefined" ? null : Chart.version,
    body_class: document.body.className,
    updated: document.getElementById("updated").textContent,
    error: document.getElementById("error").textContent,
    title: document.title,
    charts: charts,
    tenant_charts_shown: getComputedStyle(document.getElementById("tenant-charts")).display !==
        "none",
    tenant_chart_made: typeof Chart !== "undefined" &&
        Chart.getChart("chart-tenant-kv") !== undefined,
    tenants: document.getElementById("tenants").textContent,
    rows: rows,
    dom: document.documentElement.outerHTML,
  };
})()""" % json.dumps(CHART_IDS)


def chart_js_file():
    for name in CHART_JS_NAMES:
        path = os.path.join(CHART_JS_DIR, name)
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            return path
    return None


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    if chart_js_file() is None:
        pytest.skip(f"no Chart.js in {CHART_JS_DIR} (apt-get install libjs-chart.js)")
    return path


class DevToolsError(Exception):
    pass


class Browser:
    """One headless Chromium, driven over the DevTools pipe. Not thread-safe."""

    def __init__(self, binary, profile_dir, log_path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        self._log = open(log_path, "w")
        self.log_path = log_path
        # Chromium reads commands from fd 3 and writes replies to fd 4; bash puts the pipe
        # ends there (dash takes only one-digit descriptors).
        argv = [binary, "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                f"--user-data-dir={profile_dir}", f"--window-size={WIDTH},{HEIGHT}",
                "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w} '
             f'{to_browser_r}<&- {from_browser_w}>&-', "bash"] + argv,
            pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._last_id = 0

    def call(self, method, session=None, timeout=30, **params):
        """Sends one command and returns its result; events in between are dropped."""
        self._last_id += 1
        msg = {"id": self._last_id, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") != self._last_id:
                    continue
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise DevToolsError(f"{method}: no reply in {timeout}s\n{self.log_tail()}")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise DevToolsError(f"{method}: chromium closed the pipe "
                                        f"(exit {self.proc.poll()})\n{self.log_tail()}")
                self._buf += chunk

    def open_page(self, url):
        """Opens url in a new tab of WIDTH x HEIGHT; returns the DevTools session id."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", session=session, width=WIDTH,
                  height=HEIGHT, deviceScaleFactor=1, mobile=False)
        self.call("Page.enable", session=session)
        nav = self.call("Page.navigate", session=session, url=url)
        if nav.get("errorText"):
            raise DevToolsError(f"navigating to {url}: {nav['errorText']}")
        return session

    def evaluate(self, session, expression):
        reply = self.call("Runtime.evaluate", session=session, expression=expression,
                          returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise DevToolsError(f"page script failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def screenshot(self, session):
        """The page as PNG bytes."""
        data = self.call("Page.captureScreenshot", session=session, format="png",
                         captureBeyondViewport=False, timeout=60)["data"]
        return base64.b64decode(data)

    def log_tail(self, chars=3000):
        self._log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()[-chars:]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.call("Browser.close", timeout=10)
            except (DevToolsError, OSError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Helpers (zygote, renderers) are in the browser's own session: none may outlive it.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._log.close()


class Load:
    """Streams compressed completions one after another until stop(); records errors."""

    def __init__(self, server):
        self._client = server.client(timeout=120)
        self._stop = threading.Event()
        self.errors = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        n = 0
        while not self._stop.is_set():
            n += 1
            # About 600 tokens, different for every request so that no prefix is reused.
            prompt = f"Day {n} in the valley. " + " ".join(
                SENTENCES[(i * 3 + n) % len(SENTENCES)] for i in range(48))
            try:
                stream = self._client.completions.create(
                    model=MODEL_NAME, prompt=prompt, max_tokens=200, temperature=0,
                    stream=True, extra_body={"kv_compression": COMPRESSION, "ignore_eos": True})
                try:
                    for _ in stream:
                        if self._stop.is_set():
                            break  # closing the stream cancels the request
                finally:
                    stream.close()
            except Exception as e:  # reported by the test, which asserts none happened
                if not self._stop.is_set():
                    self.errors.append(repr(e))
                    time.sleep(0.5)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.fixture(scope="module")
def server(request, kvserve_bin, model_path):
    return start_server(request, kvserve_bin, model_path, "--kv-cache-bytes", "256MiB")


def stats(server):
    r = requests.get(server.url("/v1/stats"), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for_savings(server, load, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        kv = stats(server)["kv_cache"]
        if kv["saved_bytes"] > 0:
            return kv
        assert not load.errors, load.errors
        assert time.monotonic() < deadline, f"no bytes saved after {timeout}s: {kv}"
        time.sleep(0.2)


def png_size(data):
    """(width, height) from a PNG's IHDR chunk; asserts the signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def charts_ready(state):
    """True once every chart has MIN_POINTS and the latest poll shows savings."""
    charts = state["charts"]
    if any(charts[i] is None or charts[i]["labels"] < MIN_POINTS for i in CHART_IDS):
        return False
    saved = charts["chart-saved"]["datasets"]["saved"]
    return saved[-1] is not None and saved[-1] > 0


def test_dashboard_in_chromium_shows_savings_under_load(chromium, server, tmp_path):
    load = Load(server)
    browser = None
    try:
        kv = wait_for_savings(server, load)
        assert kv["compression_ratio"] < 1, kv

        browser = Browser(chromium, tmp_path / "profile", tmp_path / "chromium.log")
        session = browser.open_page(server.url("/dashboard"))
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        state = None
        while True:
            try:
                state = browser.evaluate(session, PROBE_JS)
            except DevToolsError:
                # The page may be between documents right after navigating.
                if time.monotonic() > deadline:
                    raise
                state = None
            if state is not None and charts_ready(state):
                break
            assert time.monotonic() < deadline, (
                f"charts not ready after {PAGE_TIMEOUT_S}s: "
                f"{json.dumps({k: v for k, v in (state or {}).items() if k != 'dom'})[:3000]}")
            assert server.alive(), "kvserve exited"
            time.sleep(0.5)
        # The DOM came with the probe, so it shows the same poll; the page may poll again
        # before the screenshot, which is for people to look at.
        dom = state.pop("dom")
        png = browser.screenshot(session)
    finally:
        if browser is not None:
            browser.close()
            shutil.rmtree(tmp_path / "profile", ignore_errors=True)
        load.stop()

    shot = tmp_path / "dashboard.png"
    shot.write_bytes(png)
    (tmp_path / "dashboard.html").write_text(dom)
    (tmp_path / "dashboard-state.json").write_text(json.dumps(state, indent=1))
    if os.path.isdir(os.path.join(ROOT, "build")):
        shutil.copyfile(shot, os.path.join(ROOT, "build", "dashboard-screenshot.png"))

    assert not load.errors, load.errors
    # Chart.js loaded from the server and drew every chart on a sized canvas.
    assert state["chartjs"], state
    assert "nocharts" not in state["body_class"]
    assert state["error"] == "", state["error"]
    assert state["updated"] != "never"
    assert state["title"] == f"kvserve: {MODEL_NAME}"
    for chart_id in CHART_IDS:
        w, h = state["charts"][chart_id]["canvas"]
        assert w > 100 and h > 100, (chart_id, w, h)
        assert f'id="{chart_id}"' in dom

    # The savings chart: bytes saved and the stored/f16 ratio, the latest poll under load.
    saved_chart = state["charts"]["chart-saved"]["datasets"]
    assert saved_chart["saved"][-1] > 0, saved_chart
    assert 0 < saved_chart["stored / f16 ratio"][-1] < 1, saved_chart
    # The tiers chart at the same poll: quantized bytes below the f16 line.
    tiers = {k: v[-1] for k, v in state["charts"]["chart-tiers"]["datasets"].items()}
    stored = tiers["f16"] + tiers["int8"] + tiers["int4"] + tiers["int2"]
    assert tiers["int8"] + tiers["int4"] + tiers["int2"] > 0, tiers
    assert 0 < stored < tiers["as f16 (uncompressed)"], tiers
    assert saved_chart["saved"][-1] == tiers["as f16 (uncompressed)"] - stored
    # Something ran and generated while the page watched.
    assert max(state["charts"]["chart-requests"]["datasets"]["running"]) >= 1
    assert max(v or 0 for v in state["charts"]["chart-throughput"]["datasets"]["generation"]) > 0

    # The "Now" table shows the same latest poll as text.
    rows = state["rows"]
    assert rows["Saved by compression"] not in ("0 B", ""), rows
    assert 0 < float(rows["Compression ratio (stored / f16)"]) < 1, rows
    assert rows["Saved by compression"] in dom

    # Single-tenant mode: no per-tenant charts, and the tenant table says why.
    assert state["tenant_charts_shown"] is False
    assert state["tenant_chart_made"] is False
    assert state["tenants"].startswith("No tenants"), state["tenants"]

    # The screenshot is a real render of the page, not an empty image.
    assert png_size(png) == (WIDTH, HEIGHT)
    assert len(png) > 10_000, len(png)
