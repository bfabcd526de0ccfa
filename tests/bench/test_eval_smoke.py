"""End-to-end smoke test of kvserve-eval: `bench/kvserve-eval sweep --grid
bench/eval/smoke.json` against the real server, started by the tool from $KVSERVE_BIN
(default build/server/kvserve) with $KVSERVE_MODEL, into a temporary directory.

Checks the files' rows and that their values are plausible for SmolLM2-135M: the
uncompressed model finds a passkey in 512 tokens, compression stores fewer bytes,
perplexity of a 256-token WikiText window is in a sane range, the server tokenises the
prompts as the Python tokenizer does, and rerunning into the same directory resumes
(skips everything) with the same results. Skips when the binary, model or data are
missing; takes about 15 s on 2 cores.
"""
import csv
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("KVSERVE_BIN", os.path.join(ROOT, "build", "server", "kvserve"))
MODEL = os.environ.get("KVSERVE_MODEL", os.path.expanduser(
    "~/.cache/kvserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
GRID = os.path.join(ROOT, "bench", "eval", "smoke.json")
SETTINGS = [("none", 1.0), ("h2o", 0.25), ("attention-guided", 0.25)]


def sweep_command(out_dir):
    return [sys.executable, os.path.join(ROOT, "bench", "kvserve-eval"), "sweep", "--grid", GRID,
            "--out-dir", str(out_dir), "--bin", BIN, "--model", MODEL]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    for path, what in ((BIN, "kvserve binary"), (MODEL, "model"),
                       (os.path.join(DATA, "wikitext-2-raw", "wiki.test.raw"), "WikiText-2"),
                       (os.path.join(DATA, "gutenberg", "austen-emma.txt"), "Gutenberg books")):
        if not os.path.exists(path):
            pytest.skip(f"{what} missing: {path}")
    out = tmp_path_factory.mktemp("smoke")
    proc = subprocess.run(sweep_command(out), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_results_have_one_row_per_setting_and_metric(out_dir):
    rows = read_csv(out_dir / "results.csv")
    got = {(r["policy"], float(r["ratio"]), r["task"], r["setting"], r["metric"]) for r in rows}
    assert len(got) == len(rows)
    want = set()
    for policy, ratio in SETTINGS:
        for depth in ("0.25", "0.75"):
            want.add((policy, ratio, "passkey", f"length=512,depth={depth}", "accuracy"))
            for variant in ("single", "multikey"):
                want.add((policy, ratio, "niah", f"variant={variant},length=512,depth={depth}",
                          "accuracy"))
        for task in ("passkey", "niah"):
            want.add((policy, ratio, task, "all", "accuracy"))
        for setting in ("context=256,chunk=64", "all"):
            for metric in ("nll", "perplexity"):
                want.add((policy, ratio, "perplexity", setting, metric))
    assert got == want
    assert all(r["errors"] == "0" for r in rows), [r for r in rows if r["errors"] != "0"]


def test_values_are_plausible(out_dir):
    rows = {(r["policy"], r["task"], r["setting"], r["metric"]): r
            for r in read_csv(out_dir / "results.csv")}
    for (policy, task, setting, metric), r in rows.items():
        value, low, high = float(r["value"]), float(r["ci_low"]), float(r["ci_high"])
        assert low <= value <= high
        assert float(r["kv_bytes"]) > 0
        kv_ratio = float(r["kv_ratio"])
        if policy == "none":
            assert kv_ratio == 1.0
        else:
            assert 0.0 < kv_ratio < 0.75, (policy, task, kv_ratio)
        if metric == "accuracy":
            assert 0.0 <= value <= 1.0
        if metric == "perplexity":
            assert 5.0 < value < 200.0, (policy, value)
    assert float(rows[("none", "passkey", "all", "accuracy")]["value"]) == 1.0
    assert int(rows[("none", "passkey", "all", "accuracy")]["n"]) == 2
    assert int(rows[("none", "niah", "all", "accuracy")]["n"]) == 4
    none_nll = float(rows[("none", "perplexity", "all", "nll")]["value"])
    for policy in ("h2o", "attention-guided"):
        assert abs(float(rows[(policy, "perplexity", "all", "nll")]["value"]) - none_nll) < 1.0


def test_server_counts_the_prompt_tokens_the_generators_built(out_dir):
    with open(out_dir / "items.jsonl") as f:
        items = [json.loads(line) for line in f]
    assert len(items) == 3 * (2 + 4 + 1)
    for item in items:
        extra = item["extra"]
        assert "error" not in extra
        if item["task"] in ("passkey", "niah"):
            assert extra["prompt_tokens"] == extra["n_tokens"] == 512
        else:
            assert extra["prompt_tokens"] == 256 and extra["tokens_scored"] == 255
            assert "token_mismatch" not in extra


def test_significance_and_meta(out_dir):
    tests = read_csv(out_dir / "significance.csv")
    got = {(t["task"], t["metric"], t["baseline"]): int(t["n"]) for t in tests}
    assert got == {("passkey", "accuracy", "none"): 2, ("passkey", "accuracy", "h2o"): 2,
                   ("niah", "accuracy", "none"): 4, ("niah", "accuracy", "h2o"): 4,
                   ("perplexity", "nll", "none"): 1, ("perplexity", "nll", "h2o"): 1}
    assert all(t["policy"] == "attention-guided" and t["ratio"] == "0.25" for t in tests)
    meta = json.loads((out_dir / "meta.json").read_text())
    assert set(meta["task_seconds"]) == {"passkey", "niah", "perplexity"}
    assert meta["failures"] == [] and len(meta["completed"]) == 9
    assert meta["commit"] and meta["start_time"] and meta["end_time"]
    assert "--kv-cache-bytes" in meta["server"]


def test_rerun_resumes_without_running_anything(out_dir):
    before = (out_dir / "results.csv").read_text()
    proc = subprocess.run(sweep_command(out_dir), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("done earlier, skipped") == 9
    assert "starting:" not in proc.stderr  # no server needed
    assert (out_dir / "results.csv").read_text() == before
