"""Checks the monitoring files under deploy/ without starting kvserve or Prometheus.

- deploy/prometheus: `promtool check config`, `promtool check rules` and the promtool
  rule unit tests pass; every alert has a unit test in which it fires and one in which
  it must stay quiet; at least two recording rules, and every per-tenant one, have
  unit tests.
- deploy/grafana/kvserve.json: parses, imports anywhere (data source and tenant
  variables, no `__inputs`), every panel has queries, the queries are valid PromQL and
  use the template variables in ways that survive "All" and multi-select; the Tenants
  row reads the per-tenant series and filters them by the tenant variable.
- Everywhere: every kvserve_* metric a query names is documented in docs/metrics.md, so
  the dashboard and the rules cannot drift from what the server exports.

promtool comes from Debian's `prometheus` package; the tests that run it skip without it.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RECORDING_RULES = PROM_DIR / "recording_rules.yml"
ALERT_RULES = PROM_DIR / "alert_rules.yml"
RULE_TESTS_DIR = PROM_DIR / "tests"
DASHBOARD = REPO / "deploy" / "grafana" / "kvserve.json"
METRICS_DOC = REPO / "docs" / "metrics.md"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install Debian's prometheus package "
    "(apt-get install --no-install-recommends prometheus)")

METRIC_RE = re.compile(r"kvserve_[a-z0-9_]+")
RECORDED_RE = re.compile(r"kvserve:[a-z0-9_:]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Variables Grafana defines itself.
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range",
                    "__range_s", "__range_ms"}


def promtool(*args, cwd=REPO):
    """Runs promtool and fails the test with its output when it exits non-zero."""
    proc = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, (
        f"promtool {' '.join(map(str, args))} exited {proc.returncode}:\n"
        f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


# --- docs/metrics.md -------------------------------------------------------


# A metric in backticks, bare or with its labels: `kvserve_x` or `kvserve_x{tenant, tier}`.
DOC_NAME = r"`(kvserve_[a-z0-9_]+)(?:\{[^}`]*\})?`"


def documented_metrics():
    """Returns (every `kvserve_*` name in backticks, the names documented as histograms)."""
    names, histograms = set(), set()
    heading = ""
    for line in METRICS_DOC.read_text().splitlines():
        if line.startswith("#"):
            heading = line
            continue
        names.update(re.findall(DOC_NAME, line))
        row = re.match(r"\|\s*" + DOC_NAME + r"[^|]*\|(.*)", line)
        if not row:
            continue
        cells = [c.strip() for c in row.group(2).split("|")]
        if "Histograms" in heading or "histogram" in cells:
            histograms.add(row.group(1))
    return names, histograms


def undocumented(names):
    documented, histograms = documented_metrics()
    allowed = set(documented)
    allowed.update(h + s for h in histograms for s in HISTOGRAM_SUFFIXES)
    return sorted(set(names) - allowed)


def test_metrics_doc_parses_into_known_names():
    # Guards the parser above: if docs/metrics.md changed layout so that nothing is
    # found, every "documented" check below would be meaningless.
    documented, histograms = documented_metrics()
    assert "kvserve_kv_cache_bytes" in documented
    assert "kvserve_http_requests_total" in documented
    assert "kvserve_time_to_first_token_seconds" in histograms
    assert "kvserve_request_kv_compression_ratio" in histograms
    assert "kvserve_kv_cache_bytes" not in histograms
    # The per-tenant table writes names with their labels.
    assert {"kvserve_tenant_kv_bytes", "kvserve_tenant_requests_running",
            "kvserve_tenant_requests_waiting", "kvserve_tenant_tokens_total"} <= documented
    assert "kvserve_tenant_time_to_first_token_seconds" in histograms
    assert "kvserve_tenant_request_queue_time_seconds" in histograms
    assert "kvserve_tenant_kv_bytes" not in histograms


def test_undocumented_rejects_unknown_and_non_histogram_suffixes():
    assert undocumented(["kvserve_time_to_first_token_seconds_bucket",
                         "kvserve_request_kv_compression_ratio_count"]) == []
    assert undocumented(["kvserve_kv_cache_bytes_count"]) == ["kvserve_kv_cache_bytes_count"]
    assert undocumented(["kvserve_made_up_total"]) == ["kvserve_made_up_total"]


# --- Prometheus ------------------------------------------------------------


def rule_test_files():
    return sorted(RULE_TESTS_DIR.glob("*_test.yml"))


def recorded_names():
    return set(re.findall(r"^\s*-\s*record:\s*(\S+)", RECORDING_RULES.read_text(), re.M))


def alert_names():
    return set(re.findall(r"^\s*-\s*alert:\s*(\S+)", ALERT_RULES.read_text(), re.M))


@needs_promtool
def test_promtool_check_config():
    # Also checks every rule file the config lists.
    out = promtool("check", "config", PROM_CONFIG)
    assert "2 rule files found" in out


@needs_promtool
@pytest.mark.parametrize("rules", [RECORDING_RULES, ALERT_RULES], ids=lambda p: p.name)
def test_promtool_check_rules(rules):
    promtool("check", "rules", rules)


@needs_promtool
@pytest.mark.parametrize("test_file", rule_test_files(), ids=lambda p: p.name)
def test_promtool_rule_unit_tests(test_file):
    promtool("test", "rules", test_file)


def test_config_scrapes_kvserve_and_loads_both_rule_files():
    text = PROM_CONFIG.read_text()
    assert re.search(r"^\s*-\s*job_name:\s*kvserve\s*$", text, re.M)
    assert '"localhost:8080"' in text
    assert re.search(r"^\s*-\s*recording_rules\.yml\s*$", text, re.M)
    assert re.search(r"^\s*-\s*alert_rules\.yml\s*$", text, re.M)


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    alerts = alert_names()
    assert {"KvserveDown", "KvservePoolNearlyFull", "KvservePreemptionStorm",
            "KvserveHighErrorRate", "KvserveEngineStalled", "KvserveTenantNearKvBudget",
            "KvserveTenantRejecting"} <= alerts
    text = "\n".join(p.read_text() for p in rule_test_files())
    # An alert_rule_test entry lists alertname, then exp_alerts: either [] (must not
    # fire) or a list of expected alerts.
    fires = set(re.findall(r"alertname:\s*(\w+)\s*\n\s*exp_alerts:\s*\n\s*-\s*exp_labels:", text))
    quiet = set(re.findall(r"alertname:\s*(\w+)\s*\n\s*exp_alerts:\s*\[\]", text))
    assert alerts - fires == set(), "alerts without a test in which they fire"
    assert alerts - quiet == set(), "alerts without a test in which they stay quiet"
    assert (fires | quiet) - alerts == set(), "tests for alerts that do not exist"


def test_recording_rules_have_unit_tests():
    recorded = recorded_names()
    text = "\n".join(p.read_text() for p in rule_test_files())
    tested = set(re.findall(r"^\s*-\s*expr:\s*(kvserve:[a-z0-9_:]+)", text, re.M))
    assert tested - recorded == set(), "tests for recording rules that do not exist"
    assert len(tested) >= 2
    assert {"kvserve:kv_saved_bytes", "kvserve:kv_compression_ratio"} <= tested
    # Every per-tenant rule has a unit test.
    tenant_records = {r for r in recorded if r.startswith("kvserve:tenant_")}
    assert {"kvserve:tenant_kv_saved_ratio", "kvserve:tenant_prefix_cache_hit_ratio:rate5m",
            "kvserve:tenant_kv_budget_usage_ratio"} <= tenant_records
    assert tenant_records - tested == set(), "per-tenant rules without a unit test"


def test_rule_files_name_only_documented_metrics_and_defined_records():
    files = [PROM_CONFIG, RECORDING_RULES, ALERT_RULES, *rule_test_files()]
    text = "\n".join(p.read_text() for p in files)
    names = set(METRIC_RE.findall(text))
    # Every rule reads kvserve metrics; an empty set means the regex broke.
    assert "kvserve_kv_cache_saved_bytes" in names
    assert undocumented(names) == []
    assert set(RECORDED_RE.findall(text)) - recorded_names() == set()


# --- Grafana ---------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def all_panels(dash):
    """Top-level panels plus those nested in collapsed rows."""
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


def query_panels(dash):
    return [p for p in all_panels(dash) if p["type"] != "row"]


def variables(dash):
    return {v["name"]: v for v in dash["templating"]["list"]}


def variable_query(var):
    q = var.get("query", "")
    return q.get("query", "") if isinstance(q, dict) else q


def dashboard_exprs(dash):
    """(panel title, refId, expr) for every query of every panel."""
    return [(p["title"], t.get("refId", "?"), t.get("expr", ""))
            for p in query_panels(dash) for t in p.get("targets", [])]


def test_dashboard_is_importable_as_is(dashboard):
    assert "__inputs" not in dashboard
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard.get("id") is None
    ds = variables(dashboard)["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    # Panels and queries use the variable, never a data source uid of one Grafana.
    for panel in query_panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]
    for var in variables(dashboard).values():
        if var["type"] == "query":
            assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_tenant_variable_lists_the_tenants_of_the_selected_instances(dashboard):
    tenant = variables(dashboard)["tenant"]
    assert tenant["type"] == "query"
    # The per-tenant series carry the label; each configured tenant has them.
    assert variable_query(tenant) == (
        'label_values(kvserve_tenant_kv_bytes{instance=~"$instance"}, tenant)')
    assert tenant["includeAll"] and tenant["multi"]
    # All is one regex rather than an alternation of every known tenant, which
    # grows with the tenants file.
    assert tenant["allValue"] == ".*"


def tenant_row_panels(dash):
    """The panels below the "Tenants" row, up to the next row."""
    panels, inside = [], False
    for panel in dash["panels"]:
        if panel["type"] == "row":
            inside = panel["title"] == "Tenants"
            panels.extend(panel.get("panels", []) if inside else [])
        elif inside:
            panels.append(panel)
    return panels


def test_tenant_row_reads_per_tenant_series_filtered_by_tenant(dashboard):
    panels = tenant_row_panels(dashboard)
    assert len(panels) >= 8, [p["title"] for p in panels]
    for panel in panels:
        for target in panel["targets"]:
            expr = target["expr"]
            names = set(METRIC_RE.findall(expr))
            # Only the kvserve_tenant_* series have a tenant label: a server-wide
            # metric filtered by tenant would show nothing.
            assert names and all(n.startswith("kvserve_tenant_") for n in names), expr
            # Every selector filters by the variable and the query keeps one
            # line per tenant.
            selectors = re.findall(r"kvserve_tenant_\w+\{([^}]*)\}", expr)
            assert len(selectors) == len(METRIC_RE.findall(expr)), expr
            for sel in selectors:
                assert 'tenant=~"$tenant"' in sel and 'instance=~"$instance"' in sel, expr
            assert re.search(r"by \((?:[\w, ]*\b)?tenant\b", expr), expr
            assert "{{tenant}}" in target["legendFormat"], panel["title"]
    by_title = {p["title"]: p for p in panels}
    kv = by_title["KV bytes by tenant"]
    assert kv["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"


def test_every_panel_has_queries_and_a_place(dashboard):
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    panels = query_panels(dashboard)
    assert len(panels) >= 12
    for panel in panels:
        assert panel["targets"], f"{panel['title']}: no queries"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{panel['title']}: empty query"
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]


def test_queries_use_defined_variables_as_regex_matchers(dashboard):
    defined = set(variables(dashboard)) | GRAFANA_BUILTINS
    multi = {n for n, v in variables(dashboard).items() if v.get("multi") or v.get("includeAll")}
    for title, ref, expr in dashboard_exprs(dashboard):
        used = set(re.findall(r"\$\{?(\w+)", expr))
        assert used <= defined, f"{title}/{ref}: undefined variables {used - defined}"
        for name in used & multi:
            # A multi-value variable expands to a regex: only =~ (or !~) matches it.
            for m in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"\$\{?' + name + r'\b', expr):
                assert m.group(2) in ("=~", "!~"), f"{title}/{ref}: {m.group(0)}"


def test_dashboard_queries_read_documented_metrics(dashboard):
    exprs = dashboard_exprs(dashboard)
    for title, ref, expr in exprs:
        assert METRIC_RE.search(expr), f"{title}/{ref} reads no kvserve metric: {expr}"
    names = set()
    for _, _, expr in exprs:
        names.update(METRIC_RE.findall(expr))
    for var in variables(dashboard).values():
        names.update(METRIC_RE.findall(variable_query(var)))
    # Panel descriptions name metrics too; they must not point at ones that do not exist.
    for panel in query_panels(dashboard):
        names.update(METRIC_RE.findall(panel.get("description", "")))
    assert undocumented(names) == []
    recorded = set()
    for _, _, expr in exprs:
        recorded.update(RECORDED_RE.findall(expr))
    assert recorded - recorded_names() == set(), "dashboard reads undefined recording rules"


def test_dashboard_shows_what_the_issue_asks_for(dashboard):
    exprs = [e for _, _, e in dashboard_exprs(dashboard)]
    used = set()
    for expr in exprs:
        used.update(METRIC_RE.findall(expr))
    wanted = {
        "kvserve_kv_cache_bytes", "kvserve_kv_cache_uncompressed_bytes",
        "kvserve_kv_cache_saved_bytes", "kvserve_kv_cache_compression_ratio",
        "kvserve_kv_blocks_quantized_total", "kvserve_kv_blocks_evicted_total",
        "kvserve_kv_cache_capacity_bytes", "kvserve_kv_cache_used_bytes",
        "kvserve_requests_running", "kvserve_requests_waiting", "kvserve_preemptions_total",
        "kvserve_prompt_tokens_total", "kvserve_generation_tokens_total",
        "kvserve_time_to_first_token_seconds_bucket",
        "kvserve_time_per_output_token_seconds_bucket",
        "kvserve_request_kv_compression_ratio_bucket",
    }
    assert wanted - used == set()
    for q in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({q}, " in e and "time_to_first_token" in e for e in exprs)
        assert any(f"histogram_quantile({q}, " in e and "time_per_output_token" in e for e in exprs)
    # Per tenant: memory and savings, budget use, latency, outcomes, prefix-cache hits,
    # preemptions.
    assert {"kvserve_tenant_kv_bytes", "kvserve_tenant_kv_saved_bytes",
            "kvserve_tenant_kv_uncompressed_bytes", "kvserve_tenant_kv_budget_bytes",
            "kvserve_tenant_requests_total", "kvserve_tenant_tokens_total",
            "kvserve_tenant_preemptions_total",
            "kvserve_tenant_time_to_first_token_seconds_bucket",
            "kvserve_tenant_request_queue_time_seconds_bucket"} - used == set()
    for q in ("0.5", "0.95"):
        assert any(f"histogram_quantile({q}, sum by (tenant, le)" in e
                   and "kvserve_tenant_time_to_first_token_seconds_bucket" in e for e in exprs)
    assert any("histogram_quantile(0.95, sum by (tenant, le)" in e
               and "kvserve_tenant_request_queue_time_seconds_bucket" in e for e in exprs)
    # Budget use divides by budgets that are set (> 0), and the hit ratio divides cached
    # prompt tokens by all prompt tokens: kind="prompt" counts prefilled ones only.
    assert any(re.search(r"kvserve_tenant_kv_bytes.*/\s*\(.*kvserve_tenant_kv_budget_bytes.*> 0\)",
                         e) for e in exprs)
    assert any('kind="cached"' in e and 'kind=~"prompt|cached"' in e for e in exprs)
    assert any("by (policy, le)" in e for e in exprs)


@needs_promtool
def test_dashboard_queries_are_valid_promql(dashboard, tmp_path):
    # promtool parses every expression of a rule file: wrap each query in a recording
    # rule, with Grafana's variables replaced by values of the right kind. JSON is YAML.
    def concrete(expr):
        expr = re.sub(r"\$\{?__rate_interval\}?|\$\{?__interval\}?", "1m", expr)
        expr = re.sub(r"\$\{?__range\}?", "1h", expr)
        return re.sub(r"\$\{?\w+\}?", ".*", expr)

    rules = [{"record": f"dashboard:panel_{i}", "expr": concrete(expr)}
             for i, (_, _, expr) in enumerate(dashboard_exprs(dashboard))]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = promtool("check", "rules", path)
    assert f"{len(rules)} rules found" in out
