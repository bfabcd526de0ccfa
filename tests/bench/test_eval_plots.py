"""Tests of bench/kvserve_eval/plots.py on a small synthetic results.csv."""
import csv
import os
import struct
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
pytest.importorskip("matplotlib")
from kvserve_eval import plots  # noqa: E402

COLUMNS = ("policy", "ratio", "task", "setting", "metric", "value", "n", "ci_low", "ci_high",
           "kv_ratio", "kv_bytes", "errors")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic_rows(with_capacity=True, with_niah=True):
    rows = []

    def add(policy, ratio, task, setting, metric, value, kv_ratio, ci=0.05):
        rows.append({"policy": policy, "ratio": ratio, "task": task, "setting": setting,
                     "metric": metric, "value": value, "n": 10, "ci_low": value - ci,
                     "ci_high": value + ci, "kv_ratio": kv_ratio, "kv_bytes": 1000,
                     "errors": 0})

    add("none", 1.0, "perplexity", "all", "nll", 2.5, 1.0)
    add("none", 1.0, "perplexity", "all", "perplexity", 12.2, 1.0, ci=0.4)
    add("none", 1.0, "passkey", "all", "accuracy", 1.0, 1.0, ci=0.0)
    add("none", 1.0, "longbench", "all", "qa_f1", 0.2, "")  # kv_ratio left empty
    for policy, base in (("h2o", 0.9), ("attention-guided", 0.95)):
        for ratio in (0.5, 0.25, 0.125):
            kv = ratio * 1.1
            add(policy, ratio, "perplexity", "all", "nll", 2.5 + (1 - ratio), kv)
            add(policy, ratio, "perplexity", "all", "perplexity", 12.2 * (2 - ratio), kv)
            add(policy, ratio, "passkey", "all", "accuracy", base * ratio * 2, kv)
            add(policy, ratio, "longbench", "all", "qa_f1", 0.2 * base, kv)
            add(policy, ratio, "longbench", "dataset=multifieldqa_en", "qa_f1", 0.2 * base, kv)
    if with_niah:
        for policy, ratio in (("none", 1.0), ("h2o", 0.125), ("h2o", 0.5),
                              ("attention-guided", 0.125)):
            for variant in ("single", "multikey"):
                for length in (1024, 2048, 4096):
                    for depth in (0.1, 0.5, 0.9):
                        value = 1.0 if policy == "none" else (0.5 if depth > 0.3 else 1.0)
                        add(policy, ratio, "niah",
                            f"variant={variant},length={length},depth={depth:g}",
                            "accuracy", value, ratio)
            add(policy, ratio, "niah", "all", "accuracy", 0.8, ratio)
    if with_capacity:
        for policy, ratio, kv, sessions, tput in (("none", 1.0, 1.0, 3, 50.0),
                                                  ("h2o", 0.25, 0.3, 9, 60.0),
                                                  ("h2o", 0.5, 0.55, 5, 55.0),
                                                  ("attention-guided", 0.25, 0.35, 8, 58.0)):
            setting = "length=2048,pool_mb=163"
            add(policy, ratio, "capacity", setting, "max_sessions", sessions, kv, ci=0)
            add(policy, ratio, "capacity", setting, "throughput_tok_s", tput, kv, ci=0)
            add(policy, ratio, "capacity", "all", "max_sessions", sessions, kv, ci=0)
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE, path
    # The IHDR chunk comes first and gives a real, non-trivial image size.
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    assert data.rstrip(b"\0").endswith(b"IEND\xaeB`\x82")


def test_all_figures_are_written_as_png(tmp_path, capsys):
    csv_path = tmp_path / "results.csv"
    write_csv(csv_path, synthetic_rows())
    out_dir = tmp_path / "figs"
    assert plots.main(["--csv", str(csv_path), "--out-dir", str(out_dir)]) == 0
    expected = {"perplexity_vs_kv.png", "passkey_vs_kv.png", "niah_vs_kv.png",
                "longbench_vs_kv.png", "niah_heatmap_single.png", "niah_heatmap_multikey.png",
                "memory_vs_speed.png"}
    assert set(os.listdir(out_dir)) == expected
    for name in expected:
        assert_png(out_dir / name)
    printed = capsys.readouterr().out.split()
    assert sorted(os.path.basename(p) for p in printed) == sorted(expected)


def test_missing_tasks_skip_their_figures(tmp_path):
    rows = [r for r in synthetic_rows(with_capacity=False, with_niah=False)
            if r["task"] == "passkey"]
    csv_path = tmp_path / "results.csv"
    write_csv(csv_path, rows)
    written = plots.make_figures(plots.read_rows(str(csv_path)), str(tmp_path / "out"))
    assert [os.path.basename(p) for p in written] == ["passkey_vs_kv.png"]
    assert_png(written[0])


def test_heatmap_without_variant_has_plain_name(tmp_path):
    rows = [{"policy": "none", "ratio": 1.0, "task": "niah",
             "setting": f"length={length},depth={depth}", "metric": "accuracy", "value": 1.0,
             "n": 1, "ci_low": 1.0, "ci_high": 1.0, "kv_ratio": 1.0, "kv_bytes": 1,
             "errors": 0} for length in (1024, 2048) for depth in (0.25, 0.75)]
    csv_path = tmp_path / "results.csv"
    write_csv(csv_path, rows)
    written = plots.make_figures(plots.read_rows(str(csv_path)), str(tmp_path / "out"))
    assert [os.path.basename(p) for p in written] == ["niah_heatmap.png"]


def test_reading_and_helpers():
    assert plots.parse_setting("variant=a,length=4096,depth=0.5") == {
        "variant": "a", "length": "4096", "depth": "0.5"}
    assert plots.parse_setting("all") == {}
    # kv_ratio when reported, else the target ratio, 1.0 for none
    assert plots.kv_fraction({"policy": "h2o", "ratio": 0.25, "kv_ratio": 0.3}) == 0.3
    assert plots.kv_fraction({"policy": "h2o", "ratio": 0.25, "kv_ratio": None}) == 0.25
    assert plots.kv_fraction({"policy": "none", "ratio": 1.0, "kv_ratio": None}) == 1.0
    rows = [{"ratio": r} for r in (0.5, 0.25, 0.1)]
    assert plots._nearest_ratio(rows, 0.125) == 0.1  # nearest on a log scale
    assert plots._nearest_ratio(rows, 0.3) == 0.25
    assert plots._nearest_ratio(rows, 0.25) == 0.25


def test_empty_csv_writes_nothing(tmp_path, capsys):
    csv_path = tmp_path / "results.csv"
    write_csv(csv_path, [])
    assert plots.main(["--csv", str(csv_path), "--out-dir", str(tmp_path / "out")]) == 0
    assert os.listdir(tmp_path / "out") == []
    assert "no figure" in capsys.readouterr().err
