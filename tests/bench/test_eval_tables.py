"""kvserve-eval tables: the markdown of docs/EVALUATION.md comes from the sweep's CSVs."""

import csv
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "bench"))

from kvserve_eval import report, tables  # noqa: E402


def _write(path, columns, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})


def _row(policy, ratio, task, setting, metric, value, lo, hi, kv):
    return dict(policy=policy, ratio=ratio, task=task, setting=setting, metric=metric,
                value=value, n=5, ci_low=lo, ci_high=hi, kv_ratio=kv, kv_bytes=1000, errors=0)


@pytest.fixture()
def sweep_dir(tmp_path):
    rows = [
        _row("none", 1.0, "passkey", "all", "accuracy", 1.0, 1.0, 1.0, 1.0),
        _row("none", 1.0, "passkey", "length=2048", "accuracy", 1.0, 1.0, 1.0, 1.0),
        _row("none", 1.0, "passkey", "length=2048,depth=0.5", "accuracy", 1.0, 1.0, 1.0, 1.0),
        _row("none", 1.0, "passkey", "length=4096", "accuracy", 1.0, 1.0, 1.0, 1.0),
        _row("h2o", 0.25, "passkey", "all", "accuracy", 0.4, 0.0, 0.8, 0.27),
        _row("h2o", 0.25, "passkey", "length=2048", "accuracy", 0.4, 0.0, 0.8, 0.27),
        _row("attention-guided", 0.25, "passkey", "all", "accuracy", 0.8, 0.4, 1.0, 0.26),
        _row("attention-guided", 0.25, "passkey", "length=2048", "accuracy", 0.8, 0.4, 1.0,
             0.26),
        _row("none", 1.0, "perplexity", "all", "nll", 3.0, 2.9, 3.1, 1.0),
        _row("none", 1.0, "perplexity", "all", "perplexity", 20.0856, 18.17, 22.2, 1.0),
        _row("attention-guided", 0.25, "perplexity", "all", "perplexity", 21.5, 19.0, 24.0,
             0.27),
    ]
    _write(tmp_path / "results.csv", report.RESULT_COLUMNS, rows)
    sig = [dict(task="passkey", metric="accuracy", policy="attention-guided", ratio=0.25,
                baseline="h2o", baseline_ratio=0.25, n=5, mean=0.8, baseline_mean=0.4,
                mean_diff=0.4, p_bootstrap=0.12, p_mcnemar=0.5, direction="higher_is_better",
                better="attention-guided")]
    _write(tmp_path / "significance.csv", report.SIGNIFICANCE_COLUMNS, sig)
    return tmp_path


def test_summary_has_every_setting_and_task_with_ci_and_fraction(sweep_dir):
    text = tables.render(str(sweep_dir))
    summary = text.split("### passkey")[0]
    lines = [l for l in summary.splitlines() if l.startswith("| ")]
    assert lines[0] == ("| setting | perplexity perplexity | passkey accuracy | "
                        "achieved KV fraction |")
    # none first (ratio 1), then the 0.25 settings in policy order.
    assert lines[2] == "| none | 20.086 [18.170, 22.200] | 1.000 [1.000, 1.000] | 1.000 |"
    assert lines[3] == "| h2o @ 0.250 | - | 0.400 [0.000, 0.800] | 0.270 |"
    # attention-guided's fraction is the mean over its tasks: (0.27 + 0.26) / 2.
    assert lines[4] == ("| attention-guided @ 0.250 | 21.500 [19.000, 24.000] | "
                        "0.800 [0.400, 1.000] | 0.265 |")


def test_task_table_groups_by_length_not_by_cell(sweep_dir):
    text = tables.render(str(sweep_dir))
    passkey = text.split("### passkey: accuracy")[1].split("###")[0]
    header = [l for l in passkey.splitlines() if l.startswith("| ")][0]
    assert header == "| setting | length=2048 | length=4096 | all | achieved KV fraction |"
    assert "depth=0.5" not in passkey


def test_significance_rows_name_the_baseline_and_p_values(sweep_dir):
    text = tables.render(str(sweep_dir))
    sig = text.split("### Paired tests")[1]
    assert ("| passkey | accuracy | 0.250 | h2o @ 0.250 | 5 | 0.800 | 0.400 | 0.400 | "
            "0.1200 | 0.5000 | attention-guided |") in sig


def test_missing_csv_is_a_clear_error(tmp_path, capsys):
    assert tables.main(["--out-dir", str(tmp_path)]) == 2
    assert "results.csv" in capsys.readouterr().err
