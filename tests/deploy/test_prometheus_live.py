"""The monitoring files against a live kvserve and Debian's real Prometheus (issue #7, Tests).

    ~/.cache/kvserve/venv/bin/python -m pytest -q tests/deploy/test_prometheus_live.py

- A kvserve (64 MiB pool) and a Prometheus server run on loopback, on free ports, in two
  variants, one after the other: "tenants" (a tenants file with acme, which has a KV
  budget, beta and monitoring; every route but /health needs a key, /metrics included)
  and "single-tenant" (no tenants file, no keys). Prometheus gets a copy of
  deploy/prometheus/prometheus.yml with the target replaced by that kvserve, 1 s scrape
  and evaluation intervals, the repository's recording_rules.yml and alert_rules.yml by
  absolute path, and with tenants the `authorization` block the config describes: the
  monitoring tenant's key in a `credentials_file`. While streamed requests with
  attention-guided KV compression (1/4) and plain requests run (with tenants: acme's
  compressed, beta's plain), Prometheus's HTTP API must show the target up, the kvserve
  series, a series from every recording rule (the compression ones with savings seen;
  with tenants the per-tenant ones too, acme's savings ratio and budget use above 0;
  without, no per-tenant series at all), and every rule loaded with health ok.
- Every `kvserve_*` name in a PromQL expression of deploy/grafana/kvserve.json and of
  deploy/prometheus/*_rules.yml is a family a live /metrics really exports, or a
  histogram's _bucket/_sum/_count, and has samples there. The server runs with the
  tenants file and both tenants send requests (a compressed and a plain one), so the
  per-policy and per-tenant series and histograms exist; the scrape uses the monitoring
  key. test_monitoring.py checks the same names against docs/metrics.md; this is the
  check against the server itself.

Skips when the prometheus binary (Debian's `prometheus` package), the kvserve binary
(KVSERVE_BIN, default build/server/kvserve) or the model (KVSERVE_MODEL) is missing.
No timing assertions: every wait is "within N seconds or fail".
"""
import hashlib
import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

yaml = pytest.importorskip("yaml", reason="PyYAML reads the Prometheus config and rule files")

REPO = Path(__file__).resolve().parents[2]
BLACKBOX_DIR = REPO / "tests" / "blackbox"
if str(BLACKBOX_DIR) not in sys.path:
    sys.path.append(str(BLACKBOX_DIR))

from server_util import MODEL_NAME, pick_free_port, start_server  # noqa: E402


def _blackbox_conftest():
    """tests/blackbox/conftest.py, loaded under its own name.

    Its fixtures locate the binary and the model (KVSERVE_BIN, KVSERVE_MODEL) for the
    black-box tests; reusing them keeps both directories in step. It is loaded here
    rather than through a tests/deploy/conftest.py because the black-box modules import
    `conftest` by that name, and a second conftest.py would take its place in
    sys.modules when scripts/test.sh runs both directories in one pytest."""
    name = "kvserve_blackbox_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BLACKBOX_DIR / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


# The black-box fixtures, which fail when a file is missing; _path_or_skip skips instead.
kvserve_bin = _blackbox_conftest().kvserve_bin
model_path = _blackbox_conftest().model_path

PROM_DIR = REPO / "deploy" / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RECORDING_RULES = PROM_DIR / "recording_rules.yml"
ALERT_RULES = PROM_DIR / "alert_rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "kvserve.json"

PROMETHEUS = shutil.which("prometheus")
# A mark rather than a skip in the fixture, so that no kvserve starts for nothing.
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not found: install Debian's prometheus package "
    "(apt-get install --no-install-recommends prometheus)")
PROMETHEUS_STARTUP_S = 90
QUERY_TIMEOUT_S = 30
# How long the load may take to show up in Prometheus: prefill of ~600 tokens and
# decoding on a busy 2-core machine, then a 1 s scrape and rule evaluation.
LOAD_TIMEOUT_S = 240

METRIC_RE = re.compile(r"\bkvserve_[a-zA-Z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
COMPRESSION = {"policy": "attention-guided", "ratio": 0.25}

# Recording rules that can only be non-zero with compression at work, and how each
# must have looked at some point of the run (PromQL over a range).
COMPRESSION_RECORDS = {
    "kvserve:kv_saved_bytes": "max_over_time(kvserve:kv_saved_bytes[5m]) > 0",
    "kvserve:kv_compression_ratio": "min_over_time(kvserve:kv_compression_ratio[5m]) < 1",
    "kvserve:kv_quantized_units:rate5m":
        "max_over_time(kvserve:kv_quantized_units:rate5m[5m]) > 0",
    "kvserve:kv_compression_seconds:rate5m":
        "max_over_time(kvserve:kv_compression_seconds:rate5m[5m]) > 0",
    "kvserve:request_kv_saved_bytes:mean10m":
        'max_over_time(kvserve:request_kv_saved_bytes:mean10m{policy="attention-guided"}[5m]) > 0',
    "kvserve:request_kv_compression_ratio:p50_10m":
        'min_over_time(kvserve:request_kv_compression_ratio:p50_10m'
        '{policy="attention-guided"}[5m]) < 1',
}


def long_prompt():
    """About 600 tokens of varied sentences, so several KV blocks fill and get compressed."""
    colors = ["amber", "violet", "silver", "crimson", "olive", "cobalt", "ivory"]
    places = ["harbour", "orchard", "library", "bridge", "market", "chapel", "meadow", "mill"]
    animals = ["heron", "badger", "otter", "falcon", "hare", "lynx"]
    sentences = [
        f"On day {i + 1} the {colors[i % len(colors)]} lantern near the "
        f"{places[i % len(places)]} was watched by a {animals[i % len(animals)]} "
        f"until {(i * 5) % 12 + 1} o'clock."
        for i in range(30)
    ]
    return " ".join(sentences) + " Summarise what happened:"


PROMPT = long_prompt()


# --- fixtures ----------------------------------------------------------------


def _path_or_skip(request, fixture_name):
    """The blackbox fixture's path, or a skip where that fixture would fail."""
    try:
        return request.getfixturevalue(fixture_name)
    except pytest.fail.Exception as e:
        pytest.skip(f"{fixture_name}: {e.msg}")


# The tenants of the "tenants" variant. acme sends the compressed load and has a KV
# budget, so the budget-use rule has a series; beta sends plain requests and has no
# budget; monitoring sends nothing: Prometheus scrapes with its key, as docs/deploy.md
# advises (a tenant kept for monitoring).
TENANT_KEYS = {"acme": "acme-live-key-1", "beta": "beta-live-key-1",
               "monitoring": "monitoring-live-key-1"}
ACME_KV_BUDGET = 32 * 1024 * 1024
VARIANTS = ["tenants", "single-tenant"]


def hashed_key(key):
    """The tenants file's form of a key, as `kvserve hash-key` prints it."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def tenants_file(path):
    tenants = [{"id": "acme", "api_keys": [hashed_key(TENANT_KEYS["acme"])],
                "kv_budget_bytes": ACME_KV_BUDGET},
               {"id": "beta", "api_keys": [hashed_key(TENANT_KEYS["beta"])]},
               {"id": "monitoring", "api_keys": [hashed_key(TENANT_KEYS["monitoring"])]}]
    path.write_text(json.dumps({"tenants": tenants}))
    return path


@pytest.fixture(scope="module", params=VARIANTS)
def kvserve(request, tmp_path_factory):
    """The server of one variant. Its client() and metric() use acme's key with tenants;
    `metrics_key` is the key Prometheus scrapes with (None: no key needed)."""
    binary = _path_or_skip(request, "kvserve_bin")
    model = _path_or_skip(request, "model_path")
    if request.param == "single-tenant":
        srv = start_server(request, binary, model, "--kv-cache-bytes", "64MiB")
        srv.tenants, srv.metrics_key = False, None
        return srv
    path = tenants_file(tmp_path_factory.mktemp("tenants") / "tenants.json")
    srv = start_server(request, binary, model, "--tenants", str(path), "--kv-cache-bytes",
                       "64MiB", api_key=TENANT_KEYS["acme"])
    srv.tenants, srv.metrics_key = True, TENANT_KEYS["monitoring"]
    return srv


class Prometheus:
    """Debian's prometheus on 127.0.0.1, scraping one kvserve with the repo's rules.

    metrics_key: the API key to scrape with (None: none), given to Prometheus in a file
    only it reads, through the `authorization` block that prometheus.yml describes."""

    def __init__(self, workdir, kvserve_address, metrics_key=None):
        self.workdir = Path(workdir)
        self.kvserve_address = kvserve_address
        self.metrics_key = metrics_key
        self.port = None
        self.proc = None
        self.log_path = self.workdir / "prometheus.log"
        self._log = None

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    def write_config(self):
        """deploy/prometheus/prometheus.yml with the kvserve target, 1 s intervals and the
        rule files by absolute path."""
        config = yaml.safe_load(PROM_CONFIG.read_text())
        g = config.setdefault("global", {})
        g["scrape_interval"] = g["evaluation_interval"] = g["scrape_timeout"] = "1s"
        config["rule_files"] = [str(RECORDING_RULES), str(ALERT_RULES)]
        jobs = [j for j in config["scrape_configs"] if j.get("job_name") == "kvserve"]
        assert len(jobs) == 1, f"{PROM_CONFIG} must have one scrape job named kvserve"
        job = jobs[0]
        for key in ("scrape_interval", "scrape_timeout"):
            if key in job:
                job[key] = "1s"
        job["static_configs"] = [{"targets": [self.kvserve_address]}]
        if self.metrics_key is not None:
            key_file = self.workdir / "kvserve-metrics.key"
            key_file.write_text(self.metrics_key)
            key_file.chmod(0o600)
            job["authorization"] = {"type": "Bearer", "credentials_file": str(key_file)}
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self):
        config = self.write_config()
        (self.workdir / "data").mkdir()
        self.port = pick_free_port()
        cmd = [PROMETHEUS, f"--config.file={config}",
               f"--storage.tsdb.path={self.workdir / 'data'}",
               f"--web.listen-address=127.0.0.1:{self.port}"]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + PROMETHEUS_STARTUP_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode} while "
                                   f"starting: {' '.join(cmd)}\n{self.log_tail()}")
            try:
                if requests.get(self.base_url + "/-/ready", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready after {PROMETHEUS_STARTUP_S}s\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, chars=3000):
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        print(f"--- prometheus (exit {self.proc.returncode}) log tail:\n{self.log_tail()}",
              file=sys.stderr)

    # --- HTTP API ------------------------------------------------------------

    def api(self, path, **params):
        r = requests.get(self.base_url + path, params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body.get("status") == "success", (path, params, body)
        return body["data"]

    def query(self, promql):
        """The instant vector of `promql` now: a list of {"metric": {...}, "value": [t, v]}."""
        data = self.api("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", (promql, data)
        return data["result"]

    def wait_for(self, promql, timeout=QUERY_TIMEOUT_S, ok=bool):
        """Polls `promql` until ok(result) holds; fails with the last result after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if ok(result):
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus: {promql!r} did not hold within {timeout}s; "
                            f"last result {result}\n{self.log_tail()}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def prometheus(request, kvserve):
    workdir = tempfile.mkdtemp(prefix="kvserve-prometheus-")
    prom = Prometheus(workdir, f"127.0.0.1:{kvserve.port}", kvserve.metrics_key)

    def cleanup():
        prom.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    request.addfinalizer(cleanup)
    return prom.start()


# --- helpers -----------------------------------------------------------------


def recorded_names():
    groups = yaml.safe_load(RECORDING_RULES.read_text())["groups"]
    return [r["record"] for g in groups for r in g["rules"] if "record" in r]


def is_tenant_record(name):
    return name.startswith("kvserve:tenant_")


def alert_names():
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return [r["alert"] for g in groups for r in g["rules"] if "alert" in r]


def stream_compressed(kvserve, max_tokens, on_chunk=None):
    """Streams one completion of PROMPT with attention-guided compression to its end.

    on_chunk() runs after each chunk. Returns the usage of the final chunk."""
    stream = kvserve.client().completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True},
        extra_body={"kv_compression": COMPRESSION, "ignore_eos": True})
    usage = None
    try:
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            if on_chunk is not None:
                on_chunk()
    finally:
        stream.close()
    return usage


def plain_request(kvserve, api_key=None):
    """One short uncompressed completion, with `api_key` (default: the server's own)."""
    client = kvserve.client(api_key=api_key) if api_key else kvserve.client()
    done = client.completions.create(
        model=MODEL_NAME, prompt="The capital of France is", max_tokens=8, temperature=0,
        extra_body={"ignore_eos": True})
    assert done.usage.completion_tokens == 8


def scrape_as_prometheus(kvserve):
    """/metrics with the key Prometheus uses (none in single-tenant mode)."""
    headers = {"Authorization": f"Bearer {kvserve.metrics_key}"} if kvserve.metrics_key else {}
    r = requests.get(kvserve.url("/metrics"), headers=headers, timeout=10)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return r.text


def scalar_values(result):
    return [float(s["value"][1]) for s in result]


# --- 1. Prometheus scrapes kvserve and evaluates the rules --------------------


@needs_prometheus
def test_prometheus_scrapes_kvserve_and_evaluates_the_rules(kvserve, prometheus):
    if kvserve.tenants:
        # The target can only be up because Prometheus sends the monitoring key.
        r = requests.get(kvserve.url("/metrics"), timeout=10)
        assert r.status_code == 401, (r.status_code, r.text[:300])
        # beta's first request: its counters rise again after the load, so its rates
        # have something to count.
        plain_request(kvserve, TENANT_KEYS["beta"])
    prometheus.wait_for('up{job="kvserve"} == 1')

    # Load: streamed compressed requests, each run to its end (so the per-policy
    # histograms observe it), until Prometheus has scraped the cache with bytes saved,
    # a request running, and the per-policy counters rising. The latter takes two
    # finished requests at least: the series appears with the first one, and rate()
    # only counts what it gains after its first scrape. Prometheus is asked between
    # chunks, so a fast machine or a slow one both stop as soon as all was seen.
    seen = {"saved": False, "running": False, "per-policy rate": False}
    if kvserve.tenants:
        # The load is acme's: its per-tenant savings ratio (a recording rule) shows it.
        seen["acme saved ratio"] = False
    last_ask = [0.0]

    def ask_prometheus():
        if all(seen.values()) or time.monotonic() - last_ask[0] < 0.5:
            return
        last_ask[0] = time.monotonic()
        seen["saved"] = seen["saved"] or bool(
            prometheus.query("max_over_time(kvserve:kv_saved_bytes[5m]) > 0"))
        seen["running"] = seen["running"] or bool(
            prometheus.query("max_over_time(kvserve_requests_running[5m]) >= 1"))
        seen["per-policy rate"] = seen["per-policy rate"] or bool(prometheus.query(
            'rate(kvserve_request_kv_saved_bytes_total{policy="attention-guided"}[5m]) > 0'))
        if "acme saved ratio" in seen:
            seen["acme saved ratio"] = seen["acme saved ratio"] or bool(prometheus.query(
                'max_over_time(kvserve:tenant_kv_saved_ratio{tenant="acme"}[5m]) > 0'))

    deadline = time.monotonic() + LOAD_TIMEOUT_S
    rounds = 0
    while not all(seen.values()):
        usage = stream_compressed(kvserve, max_tokens=48, on_chunk=ask_prometheus)
        rounds += 1
        assert usage is not None and usage.prompt_tokens >= 500, usage
        assert kvserve.alive(), kvserve.log_tail()
        last_ask[0] = 0.0
        ask_prometheus()
        if not all(seen.values()) and time.monotonic() > deadline:
            pytest.fail(f"after {rounds} compressed requests in {LOAD_TIMEOUT_S}s Prometheus "
                        f"has not seen {[k for k, v in seen.items() if not v]}")
    plain_request(kvserve)
    if kvserve.tenants:
        plain_request(kvserve, TENANT_KEYS["beta"])

    # The kvserve series, with values that agree with the server's own /metrics.
    capacity = kvserve.metric("kvserve_kv_cache_capacity_bytes")
    assert capacity > 0
    got = prometheus.wait_for('kvserve_kv_cache_capacity_bytes{job="kvserve"}')
    assert scalar_values(got) == [capacity]
    assert got[0]["metric"]["instance"] == f"127.0.0.1:{kvserve.port}"
    prometheus.wait_for('kvserve_requests_running{job="kvserve"}')
    prometheus.wait_for('kvserve_kv_cache_saved_bytes{job="kvserve"}')
    quantized = prometheus.wait_for('kvserve_kv_blocks_quantized_total{job="kvserve"}')
    assert {s["metric"].get("tier") for s in quantized} == {"int8", "int4", "int2"}, quantized
    prometheus.wait_for('sum(kvserve_kv_blocks_quantized_total{job="kvserve"}) > 0')
    # The plain request, the last one, reaches Prometheus too.
    generated = kvserve.metric("kvserve_generation_tokens_total")
    assert generated >= rounds * 48 + 8
    prometheus.wait_for(f'kvserve_generation_tokens_total{{job="kvserve"}} >= {generated}')
    prometheus.wait_for('kvserve_http_requests_total{job="kvserve",route="/metrics"}')

    if kvserve.tenants:
        check_tenant_series(kvserve, prometheus, rounds)
    else:
        # No tenants file, no per-tenant series, so no per-tenant rule has a result.
        assert prometheus.query('count({__name__=~"kvserve_tenant_.*"})') == []
        for record in filter(is_tenant_record, recorded_names()):
            assert prometheus.query(f"count_over_time({record}[10m])") == [], record

    # Every recording rule produced a series (the per-tenant ones only with tenants);
    # the compression ones showed savings.
    missing = []
    deadline = time.monotonic() + QUERY_TIMEOUT_S
    for record in recorded_names():
        if is_tenant_record(record) and not kvserve.tenants:
            continue
        while not prometheus.query(f"count_over_time({record}[10m])"):
            if time.monotonic() > deadline:
                missing.append(record)
                break
            time.sleep(0.5)
    assert not missing, f"recording rules without a series: {missing}"
    for record, promql in COMPRESSION_RECORDS.items():
        assert record in recorded_names(), f"{record} is no longer in {RECORDING_RULES.name}"
        prometheus.wait_for(promql)

    # Every alert and recording rule is loaded and evaluates without error.
    want_alerts = set(alert_names())
    want_records = set(recorded_names())
    deadline = time.monotonic() + QUERY_TIMEOUT_S
    while True:
        rules = [r for g in prometheus.api("/api/v1/rules")["groups"] for r in g["rules"]]
        alerts = {r["name"]: r for r in rules if r["type"] == "alerting"}
        records = {r["name"]: r for r in rules if r["type"] == "recording"}
        bad = {name: (r["health"], r.get("lastError", ""))
               for name, r in {**alerts, **records}.items() if r["health"] != "ok"}
        if set(alerts) >= want_alerts and set(records) >= want_records and not bad:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"rules not all loaded and healthy within {QUERY_TIMEOUT_S}s: "
                        f"missing alerts {sorted(want_alerts - set(alerts))}, missing "
                        f"records {sorted(want_records - set(records))}, unhealthy {bad}")
        time.sleep(0.5)
    assert kvserve.alive(), kvserve.log_tail()


def check_tenant_series(kvserve, prometheus, rounds):
    """The per-tenant series and recording rules in Prometheus after acme's `rounds`
    compressed requests and plain request, and beta's two plain requests."""
    # One series per tenant of the file: what the dashboard's tenant variable lists.
    got = prometheus.wait_for('group by (tenant) (kvserve_tenant_kv_budget_bytes{job="kvserve"})',
                              ok=lambda r: len(r) == 3)
    assert {s["metric"]["tenant"] for s in got} == set(TENANT_KEYS), got
    budgets = prometheus.query('kvserve_tenant_kv_budget_bytes{job="kvserve"}')
    assert {s["metric"]["tenant"]: float(s["value"][1]) for s in budgets} == {
        "acme": ACME_KV_BUDGET, "beta": 0, "monitoring": 0}, budgets

    # Each request was charged to its key's tenant, and Prometheus has the server's counts.
    acme_generated = kvserve.metric("kvserve_tenant_tokens_total", tenant="acme",
                                    kind="generation")
    assert acme_generated >= rounds * 48 + 8
    prometheus.wait_for(f'kvserve_tenant_tokens_total{{tenant="acme", kind="generation"}} '
                        f'>= {acme_generated}')
    prometheus.wait_for('kvserve_tenant_tokens_total{tenant="beta", kind="generation"} == 16')
    prometheus.wait_for('kvserve_tenant_requests_total{tenant="beta", outcome="finished"} == 2')
    prometheus.wait_for('kvserve_tenant_tokens_total{tenant="monitoring"} == 0',
                        ok=lambda r: len(r) == 3)

    # The per-tenant recording rules, with the values this load must give: acme's cache
    # was compressed (savings ratio above 0) and held part of its budget; only acme has
    # a budget; nobody had prefix-cache hits (the cache is off), so the hit ratio is 0
    # for both tenants with prompt traffic and absent for monitoring, which has none.
    prometheus.wait_for('max_over_time(kvserve:tenant_kv_saved_ratio{tenant="acme"}[5m]) > 0')
    prometheus.wait_for('max_over_time(kvserve:tenant_kv_budget_usage_ratio{tenant="acme"}[5m])'
                        ' > 0')
    assert prometheus.query('count_over_time(kvserve:tenant_kv_budget_usage_ratio'
                            '{tenant!="acme"}[10m])') == []
    hits = prometheus.wait_for('kvserve:tenant_prefix_cache_hit_ratio:rate5m',
                               ok=lambda r: len(r) == 2)
    assert {s["metric"]["tenant"]: float(s["value"][1]) for s in hits} == {"acme": 0, "beta": 0}
    prometheus.wait_for('kvserve:tenant_requests:rate5m{tenant="acme", outcome="finished"} > 0')
    prometheus.wait_for('kvserve:tenant_requests:rate5m{tenant="beta", outcome="finished"} > 0')
    prometheus.wait_for('kvserve:tenant_generation_tokens:rate5m{tenant="acme"} > 0')
    # TTFT p95 of acme's requests: a real number of seconds, not NaN.
    prometheus.wait_for('max_over_time(kvserve:tenant_ttft_seconds:p95_5m{tenant="acme"}[5m])'
                        ' > 0')


# --- 2. the dashboard and rules name only what kvserve exports -----------------


def promql_in_dashboard(dash):
    """(where, PromQL) for every panel query and every query variable, nested rows included."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            title = node.get("title") or node.get("name") or where
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    found.append((f"{title}.{key}", value))
                elif key == "query" and isinstance(value, str) and "(" in value:
                    found.append((f"{title}.query", value))  # a query variable
                elif key == "query" and isinstance(value, dict):
                    found.append((f"{title}.query", value.get("query", "")))
                else:
                    walk(value, title)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    walk(dash, "dashboard")
    return found


def promql_in_rules():
    found = []
    for path in (RECORDING_RULES, ALERT_RULES):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule.get("alert")
                found.append((f"{path.name}:{name}", str(rule["expr"])))
    return found


def exported_names(metrics_text):
    """(families from the # TYPE lines with the names their samples may take, names of the
    samples present)."""
    allowed, sampled = set(), set()
    for line in metrics_text.splitlines():
        m = re.match(r"#\s*TYPE\s+(\S+)\s+(\S+)", line)
        if m:
            family, kind = m.groups()
            allowed.add(family)
            if kind == "histogram":
                allowed.update(family + s for s in HISTOGRAM_SUFFIXES)
            elif kind == "summary":
                allowed.update((family + "_sum", family + "_count"))
            elif kind == "counter" and not family.endswith("_total"):
                allowed.add(family + "_total")  # OpenMetrics names counters without it
        elif line and not line.startswith("#"):
            sampled.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return allowed, sampled


@pytest.mark.parametrize("kvserve", ["tenants"], indirect=True)
def test_dashboard_and_rules_name_only_exported_metrics(kvserve):
    # With the tenants file: acme's compressed request and beta's plain one, so the
    # per-policy series and both tenants' series and histograms exist.
    usage = stream_compressed(kvserve, max_tokens=4)
    assert usage is not None and usage.prompt_tokens >= 500, usage
    plain_request(kvserve, TENANT_KEYS["beta"])
    text = scrape_as_prometheus(kvserve)
    assert re.search(r'^kvserve_request_kv_compression_ratio_count\{[^}]*'
                     r'policy="attention-guided"', text, re.M), "no per-policy series"
    for tenant in ("acme", "beta"):
        assert re.search(r'^kvserve_tenant_time_to_first_token_seconds_count\{[^}]*'
                         rf'tenant="{tenant}"[^}}]*\}} [1-9]', text, re.M), (
                             f"no first token observed for {tenant}")
    allowed, sampled = exported_names(text)
    assert "kvserve_kv_cache_capacity_bytes" in allowed, text[:2000]

    exprs = promql_in_dashboard(json.loads(DASHBOARD.read_text())) + promql_in_rules()
    assert len(exprs) >= 20, exprs
    unexported, unsampled, named = [], [], set()
    for where, expr in exprs:
        for name in sorted(set(METRIC_RE.findall(expr))):
            named.add(name)
            if name not in allowed:
                unexported.append((where, name))
            elif name not in sampled:
                unsampled.append((where, name))
    assert named, "no kvserve_* metric named anywhere"
    assert not unexported, (f"queries name metrics the live /metrics does not export: "
                            f"{unexported}\nexported: {sorted(allowed)}")
    assert not unsampled, (f"queries name metrics declared but without samples after a "
                           f"compressed and a plain request: {unsampled}")
