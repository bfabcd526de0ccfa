"""Tests of kvserve-eval's sweep machinery without a server: settings and grids, the task
registry and option handling, aggregation into results.csv (schema, CIs, perplexity
derivation), the significance table's pairing, the sweep runner (order, files, resume,
failures) with fake tasks, and the client's response and metrics parsing."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from kvserve_eval import cli, client, metrics, registry, report, sweep  # noqa: E402
from kvserve_eval.tasks.base import ItemResult, Setting, Task  # noqa: E402


# --- settings, grids, registry ----------------------------------------------------------

def test_none_runs_once_at_ratio_one_and_the_others_at_every_ratio():
    got = sweep.settings(["h2o", "none", "attention-guided"], [0.5, 0.25])
    assert got == [Setting("none", 1.0), Setting("h2o", 0.5), Setting("h2o", 0.25),
                   Setting("attention-guided", 0.5), Setting("attention-guided", 0.25)]
    assert sweep.settings(["snapkv"], [0.125]) == [Setting("snapkv", 0.125)]


@pytest.mark.parametrize("grid,message", [
    ({"policies": ["nope"], "tasks": {"passkey": {}}}, "policies"),
    ({"ratios": [0.0], "tasks": {"passkey": {}}}, "ratios"),
    ({"ratios": [1.5], "tasks": {"passkey": {}}}, "ratios"),
    ({"tasks": {}}, "no tasks"),
    ({"tasks": {"passkey": {}}, "colour": 1}, "unknown grid keys"),
])
def test_bad_grids_are_refused(grid, message):
    with pytest.raises(sweep.SweepError, match=message):
        sweep.normalise_grid(grid)


def test_grid_defaults_are_filled_in():
    grid = sweep.normalise_grid({"tasks": {"passkey": None}, "server": {"flags": ["--x"]}})
    assert grid["policies"] == list(sweep.POLICIES)
    assert grid["server"] == {"threads": 2, "flags": ["--x"]}
    assert grid["tasks"] == {"passkey": {}} and grid["reference"] == "attention-guided"


@pytest.mark.parametrize("path", ["bench/eval/smoke.json", "bench/eval/full.json"])
def test_shipped_grids_load_and_name_known_tasks(path):
    grid = sweep.load_grid(os.path.join(ROOT, path))
    for name, options in grid["tasks"].items():
        task = registry.load_task(name)
        registry.options_from_grid(task, options)  # raises on an unknown or bad option


def test_registry_finds_one_task_per_module():
    names = registry.task_names()
    assert {"passkey", "niah", "perplexity"} <= set(names)
    assert "base" not in names
    task = registry.load_task("passkey")
    assert isinstance(task, Task) and task.name == "passkey"
    with pytest.raises(registry.RegistryError, match="no task"):
        registry.load_task("does_not_exist")


def test_grid_options_go_through_the_task_parser():
    task = registry.load_task("passkey")
    defaults = registry.default_options(task)
    assert defaults["lengths"] == [2048, 4096] and defaults["samples"] == 1
    got = registry.options_from_grid(task, {"lengths": [512, 1024], "depths": "0.5,0.9",
                                            "samples": 3})
    assert got["lengths"] == [512, 1024] and got["depths"] == [0.5, 0.9]
    assert got["samples"] == 3 and got["max_tokens"] == defaults["max_tokens"]
    with pytest.raises(registry.RegistryError, match="unknown option 'lenghts'"):
        registry.options_from_grid(task, {"lenghts": [1]})
    with pytest.raises(registry.RegistryError, match="bad option value"):
        registry.options_from_grid(task, {"samples": "many"})


# --- aggregation ------------------------------------------------------------------------

def record(task, policy, ratio, setting, item_id, metric, value, kv_ratio=None,
           kv_bytes=None, error=None):
    extra = {"error": error} if error else {}
    return dict(ItemResult(task, setting, item_id, metric, value, kv_ratio, kv_bytes,
                           extra).to_json(), policy=policy, ratio=ratio)


def test_aggregate_means_counts_and_all_rows():
    records = [
        record("t", "h2o", 0.5, "length=1", "a", "accuracy", 1.0, 0.5, 100),
        record("t", "h2o", 0.5, "length=1", "b", "accuracy", 0.0, 0.7, 300),
        record("t", "h2o", 0.5, "length=2", "c", "accuracy", 1.0, None, None),
        record("t", "h2o", 0.5, "length=2", "d", "accuracy", 0.0, None, None, error="HTTP 500"),
        record("t", "none", 1.0, "length=1", "a", "accuracy", 1.0, 1.0, 400),
    ]
    rows = report.aggregate(records)
    keys = [(r["policy"], r["setting"]) for r in rows]
    assert keys == [("none", "length=1"), ("none", "all"), ("h2o", "length=1"),
                    ("h2o", "length=2"), ("h2o", "all")]
    by = {(r["policy"], r["setting"]): r for r in rows}
    assert by[("h2o", "length=1")]["value"] == 0.5 and by[("h2o", "length=1")]["n"] == 2
    assert by[("h2o", "length=1")]["kv_ratio"] == pytest.approx(0.6)
    assert by[("h2o", "length=1")]["kv_bytes"] == 200
    assert by[("h2o", "length=2")]["kv_ratio"] is None
    assert by[("h2o", "length=2")]["errors"] == 1
    everything = by[("h2o", "all")]
    assert everything["value"] == 0.5 and everything["n"] == 4 and everything["errors"] == 1
    assert everything["ci_low"] <= everything["value"] <= everything["ci_high"]
    assert everything["ci_low"] < everything["ci_high"]
    mean, low, high = metrics.bootstrap_ci([1.0, 0.0, 1.0, 0.0], seed=0)
    assert (everything["ci_low"], everything["ci_high"]) == (low, high)


def test_nll_rows_get_a_perplexity_row_and_nan_items_are_left_out():
    records = [record("perplexity", "none", 1.0, "context=8", f"w{i}", "nll", v)
               for i, v in enumerate([2.0, 3.0, 4.0])]
    records.append(record("perplexity", "none", 1.0, "context=8", "w9", "nll", float("nan"),
                          error="HTTP 400: bad"))
    rows = report.aggregate(records)
    metrics_seen = [(r["setting"], r["metric"]) for r in rows]
    assert metrics_seen == [("context=8", "nll"), ("context=8", "perplexity"),
                            ("all", "nll"), ("all", "perplexity")]
    nll, ppl = rows[0], rows[1]
    assert nll["value"] == 3.0 and nll["n"] == 3 and nll["errors"] == 1
    assert ppl["value"] == pytest.approx(math.exp(3.0))
    assert ppl["ci_low"] == pytest.approx(math.exp(nll["ci_low"]))
    assert ppl["ci_high"] == pytest.approx(math.exp(nll["ci_high"]))
    assert ppl["n"] == 3


def test_duplicate_records_count_once_the_last_wins():
    records = [record("t", "none", 1.0, "s", "a", "accuracy", 0.0),
               record("t", "none", 1.0, "s", "a", "accuracy", 1.0)]
    rows = report.aggregate(records)
    assert rows[0]["value"] == 1.0 and rows[0]["n"] == 1


def test_csv_schema_and_formatting(tmp_path):
    records = [record("t", "attention-guided", 0.25, "s", "a", "accuracy", 1.0, 0.26, 123456789),
               record("t", "none", 1.0, "s", "a", "accuracy", 1.0, 1.0, 5)]
    report.write_reports(str(tmp_path), records)
    with open(tmp_path / "results.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == report.RESULT_COLUMNS
        rows = list(reader)
    assert rows[0]["policy"] == "none" and rows[0]["ratio"] == "1"
    assert rows[2]["ratio"] == "0.25" and rows[2]["kv_bytes"] == "123456789"
    with open(tmp_path / "significance.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == report.SIGNIFICANCE_COLUMNS
        rows = list(reader)
    assert len(rows) == 1 and rows[0]["p_bootstrap"] == ""  # one pair: no p-value


# --- significance -----------------------------------------------------------------------

def test_significance_pairs_by_item_id_at_the_same_ratio_and_against_none():
    ours = {f"i{k}": 1.0 for k in range(12)}
    theirs = {f"i{k}": (1.0 if k < 3 else 0.0) for k in range(12)}
    records = []
    # Written in different orders; i12 exists for the reference only (no pair).
    for k, (item, value) in enumerate(ours.items()):
        records.append(record("t", "attention-guided", 0.25, "s", item, "accuracy", value))
    records.append(record("t", "attention-guided", 0.25, "s", "i12", "accuracy", 0.0))
    for item, value in reversed(list(theirs.items())):
        records.append(record("t", "h2o", 0.25, "s", item, "accuracy", value))
        records.append(record("t", "h2o", 0.5, "s", item, "accuracy", 1.0))
        records.append(record("t", "none", 1.0, "s", item, "accuracy", 1.0))
    rows = report.significance(records, seed=3)
    assert [(r["baseline"], r["baseline_ratio"]) for r in rows] == [("none", 1.0),
                                                                    ("h2o", 0.25)]
    vs_h2o = rows[1]
    assert vs_h2o["n"] == 12 and vs_h2o["mean"] == 1.0 and vs_h2o["baseline_mean"] == 0.25
    assert vs_h2o["mean_diff"] == pytest.approx(0.75)
    assert vs_h2o["better"] == "attention-guided" and vs_h2o["direction"] == "higher_is_better"
    a = [ours[item] for item in sorted(theirs)]
    b = [theirs[item] for item in sorted(theirs)]
    assert vs_h2o["p_mcnemar"] == metrics.mcnemar_exact(a, b) < 0.01
    assert vs_h2o["p_bootstrap"] == metrics.paired_bootstrap_test(a, b, 10000, 3) < 0.01
    vs_none = rows[0]
    assert vs_none["better"] == "tie" and vs_none["p_mcnemar"] == 1.0


def test_significance_direction_follows_lower_is_better():
    records = []
    for k in range(5):
        records.append(record("p", "attention-guided", 0.125, "s", f"w{k}", "nll", 3.0 + k / 10))
        records.append(record("p", "snapkv", 0.125, "s", f"w{k}", "nll", 3.5 + k / 10))
    row, = report.significance(records)
    assert row["mean_diff"] == pytest.approx(-0.5)
    assert row["direction"] == "lower_is_better" and row["better"] == "attention-guided"
    assert row["p_mcnemar"] is None  # not 0/1 values
    assert report.significance(records, reference="snapkv")[0]["better"] == "attention-guided"
    # Five pairs all on one side: the bootstrap would say p ~ 1e-4 where an exact sign test
    # cannot go below 2 / 2^5; below MIN_BOOTSTRAP_PAIRS no p-value is given.
    assert report.MIN_BOOTSTRAP_PAIRS > 5 and row["p_bootstrap"] is None


# --- the sweep runner -------------------------------------------------------------------

class FakeTask(Task):
    """Scores item i as policy-dependent constants; records the order of its runs."""

    def __init__(self, name, calls, exclusive=False, fail_on=None):
        self.name, self.exclusive = name, exclusive
        self.calls, self.fail_on = calls, fail_on

    def add_arguments(self, parser):
        parser.add_argument(f"--{self.name}-items", type=int, default=3)

    def run(self, ctx, options):
        self.calls.append((self.name, ctx.setting.label, ctx.server is None))
        if self.fail_on == ctx.setting.policy:
            raise RuntimeError("task bug")
        value = 1.0 if ctx.setting.policy in ("none", "attention-guided") else 0.0
        return [ItemResult(self.name, f"n={options['items']}", f"item{i}", "accuracy", value,
                           kv_ratio=ctx.setting.ratio, kv_bytes=1000)
                for i in range(options["items"])]


def make_sweep(tmp_path, calls, grid=None, fresh=False, **task_kw):
    grid = sweep.normalise_grid(grid or {
        "policies": ["none", "h2o", "attention-guided"], "ratios": [0.5, 0.25],
        "tasks": {"solo": {}, "alpha": {"items": 4}}})
    tasks = {}
    for name, options in grid["tasks"].items():
        task = FakeTask(name, calls, exclusive=(name == "solo"), **task_kw.get(name, {}))
        tasks[name] = (task, registry.options_from_grid(task, options))
    return sweep.Sweep(grid, tasks, str(tmp_path / "items.jsonl"), out_dir=str(tmp_path),
                       url="http://127.0.0.1:9", fresh=fresh, command="test",
                       log=lambda msg: None)


def test_sweep_runs_exclusive_tasks_last_and_writes_its_files(tmp_path):
    calls = []
    assert make_sweep(tmp_path, calls).run() == 0
    assert [c[0] for c in calls] == ["alpha"] * 5 + ["solo"] * 5
    assert [c[1] for c in calls[:5]] == ["none", "h2o@0.5", "h2o@0.25", "attention-guided@0.5",
                                         "attention-guided@0.25"]
    items = report.read_items(str(tmp_path / "items.jsonl"))
    assert len(items) == 5 * 4 + 5 * 3
    assert {(r["policy"], r["ratio"]) for r in items} == {
        ("none", 1.0), ("h2o", 0.5), ("h2o", 0.25), ("attention-guided", 0.5),
        ("attention-guided", 0.25)}
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["command"] == "test" and meta["end_time"] and meta["failures"] == []
    assert set(meta["task_seconds"]) == {"alpha", "solo"} and len(meta["completed"]) == 10
    assert meta["task_options"]["alpha"] == {"items": 4}
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    # 5 settings x 2 tasks x (1 setting + "all").
    assert len(rows) == 20
    with open(tmp_path / "significance.csv") as f:
        tests = list(csv.DictReader(f))
    # Per task: attention-guided at 0.5 and 0.25, each vs none and vs h2o.
    assert len(tests) == 2 * 2 * 2
    assert all(t["better"] == "attention-guided" for t in tests if t["baseline"] == "h2o")


def test_sweep_resumes_where_it_stopped_and_refuses_another_grid(tmp_path):
    calls = []
    assert make_sweep(tmp_path, calls, alpha={"fail_on": "h2o"}).run() == 2
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert [f["policy"] for f in meta["failures"]] == ["h2o", "h2o"]
    assert len(meta["completed"]) == 8
    first = len(calls)
    again = []
    assert make_sweep(tmp_path, again).run() == 0
    assert [(c[0], c[1]) for c in again] == [("alpha", "h2o@0.5"), ("alpha", "h2o@0.25")]
    items = report.read_items(str(tmp_path / "items.jsonl"))
    assert len(items) == 5 * 4 + 5 * 3 and first == 10
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["resumed"] == 1 and meta["failures"] == []

    with pytest.raises(sweep.SweepError, match="different grid"):
        make_sweep(tmp_path, [], grid={"policies": ["none"], "tasks": {"alpha": {}}})
    fresh = []
    make_sweep(tmp_path, fresh, grid={"policies": ["none"], "tasks": {"alpha": {}}},
               fresh=True).run()
    assert len(report.read_items(str(tmp_path / "items.jsonl"))) == 3


def test_report_command_rewrites_the_csvs(tmp_path, capsys):
    make_sweep(tmp_path, []).run()
    os.remove(tmp_path / "results.csv")
    assert cli.main(["report", "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "results.csv").exists()
    assert "attention-guided" in capsys.readouterr().out


# --- client parsing ---------------------------------------------------------------------

def test_completion_reports_failures_and_text():
    ok = client.Completion(choices=[{"text": " 12345", "logprobs": {"token_logprobs": [None]}}],
                           usage={"kv_bytes": 5})
    assert ok.ok and ok.text == " 12345" and ok.error is None and ok.usage["kv_bytes"] == 5
    assert ok.token_logprobs == [None]
    chat = client.Completion(choices=[{"message": {"role": "assistant", "content": "hi"}}])
    assert chat.text == "hi"
    bad = client.Completion.failure(400, "unrecognized request argument")
    assert not bad.ok and bad.text == "" and bad.error == "HTTP 400: unrecognized request argument"
    assert "error" in bad


def test_unreachable_server_is_a_failed_completion_not_an_exception():
    c = client.Client("http://127.0.0.1:9", timeout=2)
    resp = c.complete("hello", max_tokens=1)
    assert not resp.ok and resp.status is None and "Error" in resp.error
    assert not c.ready() and c.models() == [] and c.metrics() == {}


def test_prometheus_text_becomes_series():
    text = """# HELP kvserve_preemptions_total Sequences preempted.
# TYPE kvserve_preemptions_total counter
kvserve_preemptions_total 3
kvserve_kv_bytes{tier="int4"} 1024
kvserve_kv_bytes{tier="f16",layer="a b"} 2048.5
kvserve_ttft_seconds_bucket{le="+Inf"} 7 1700000000
"""
    series = client.parse_prometheus(text)
    assert series == {"kvserve_preemptions_total": 3.0, 'kvserve_kv_bytes{tier="int4"}': 1024.0,
                      'kvserve_kv_bytes{layer="a b",tier="f16"}': 2048.5,
                      'kvserve_ttft_seconds_bucket{le="+Inf"}': 7.0}
    assert client.metric_sum(series, "kvserve_kv_bytes") == 3072.5
    assert client.metric_sum(series, "kvserve_missing") == 0.0


# --- the scripts that share kvserve_eval's launcher and client --------------------------

@pytest.mark.parametrize("script", ["kvserve-eval", "passkey.py", "compression_ppl.py",
                                    "compression_overhead.py"])
def test_bench_scripts_start(script):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")
