"""Markdown tables of a sweep: what docs/EVALUATION.md shows, made from the sweep's CSVs.

  python3 -m kvserve_eval.tables --out-dir DIR [--markdown FILE]   (from bench/)
  bench/kvserve-eval tables --out-dir DIR [--markdown FILE]

Reads DIR/results.csv and DIR/significance.csv (kvserve-eval sweep / report) and writes:
  * one summary table: every setting (policy @ target ratio) x every task's main metric
    over setting "all" (mean and 95% CI), with the achieved KV fraction;
  * one table per task and setting group (passkey by length, NIAH by variant and
    length, LongBench by dataset), achieved KV fraction included;
  * the paired tests of attention-guided against each baseline at the same target ratio.
Nothing here computes a new number: it formats the CSVs' values, so the report's tables
are reproducible from a sweep directory.
"""

import argparse
import collections
import csv
import os
import sys

# The metric each task is judged by in the summary (first one present wins).
MAIN_METRIC = collections.OrderedDict([
    ("perplexity", ("perplexity",)),
    ("passkey", ("accuracy",)),
    ("niah", ("accuracy",)),
    ("longbench", ("qa_f1", "rouge_l", "classification", "retrieval", "count")),
    ("capacity", ("max_sessions",)),
])
POLICY_ORDER = ("none", "streaming", "h2o", "snapkv", "quant-uniform", "attention-guided")


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _fmt(value, digits=3):
    v = _num(value)
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.{digits}f}"


def _with_ci(row, digits=3):
    lo, hi = _num(row.get("ci_low")), _num(row.get("ci_high"))
    main = _fmt(row.get("value"), digits)
    if lo is None or hi is None or _num(row.get("n")) == 1:  # one item: no interval
        return main
    return f"{main} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def _setting_key(row):
    policy = row["policy"]
    rank = POLICY_ORDER.index(policy) if policy in POLICY_ORDER else len(POLICY_ORDER)
    return (-(_num(row["ratio"]) or 0), rank, policy)


def _label(row):
    return "none" if row["policy"] == "none" else f"{row['policy']} @ {_fmt(row['ratio'], 3)}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def summary_table(results):
    """Settings x tasks over setting "all": main metric with CI, achieved KV fraction."""
    cells = {}
    tasks = []
    settings = {}
    for row in results:
        task = row["task"]
        if row["setting"] != "all" or task not in MAIN_METRIC:
            continue
        if row["metric"] not in MAIN_METRIC[task]:
            continue
        key = (row["policy"], row["ratio"])
        settings[key] = row
        if (key, task) in cells:
            continue
        cells[(key, task)] = row
        if task not in tasks:
            tasks.append(task)
    tasks.sort(key=list(MAIN_METRIC).index)
    header = ["setting"]
    for task in tasks:
        metric = next(r["metric"] for (k, t), r in cells.items() if t == task)
        header.append(f"{task} {metric}")
    header.append("achieved KV fraction")
    body = []
    for key in sorted(settings, key=lambda k: _setting_key(settings[k])):
        row = [_label(settings[key])]
        fractions = []
        for task in tasks:
            cell = cells.get((key, task))
            row.append(_with_ci(cell) if cell else "-")
            if cell and task != "capacity" and _num(cell.get("kv_ratio")) is not None:
                fractions.append(_num(cell["kv_ratio"]))
        row.append(_fmt(sum(fractions) / len(fractions)) if fractions else "-")
        body.append(row)
    return _table(header, body)


def task_table(results, task, metric):
    """One task's settings x its setting groups (e.g. length=2048), CI and achieved ratio."""
    rows = [r for r in results if r["task"] == task and r["metric"] == metric]
    groups = sorted({r["setting"] for r in rows if r["setting"] != "all"}, key=_group_key)
    groups = [g for g in groups if _is_coarse(task, g)] or groups
    if len(groups) <= 1:  # one group is the same as "all"
        groups = []
    by_key = collections.defaultdict(dict)
    labels = {}
    for r in rows:
        key = (r["policy"], r["ratio"])
        by_key[key][r["setting"]] = r
        labels[key] = r
    header = ["setting"] + groups + ["all", "achieved KV fraction"]
    body = []
    for key in sorted(by_key, key=lambda k: _setting_key(labels[k])):
        cells = by_key[key]
        line = [_label(labels[key])]
        line += [_with_ci(cells[g]) if g in cells else "-" for g in groups]
        line.append(_with_ci(cells["all"]) if "all" in cells else "-")
        line.append(_fmt(cells["all"].get("kv_ratio")) if "all" in cells else "-")
        body.append(line)
    return _table(header, body)


def _group_key(setting):
    parts = []
    for kv in setting.split(","):
        k, _, v = kv.partition("=")
        n = _num(v)
        parts.append((k, n if n is not None else 0.0, v))
    return parts


def _is_coarse(task, setting):
    """The grouping a table shows: passkey by length, NIAH by variant x length."""
    keys = [kv.partition("=")[0] for kv in setting.split(",")]
    if task == "passkey":
        return keys == ["length"]
    if task == "niah":
        return keys == ["variant", "length"]
    return True


def significance_table(sig):
    header = ["task", "metric", "target ratio", "baseline", "n", "attention-guided",
              "baseline mean", "difference", "p (paired bootstrap)", "p (McNemar)", "better"]
    body = []
    for r in sorted(sig, key=lambda r: (list(MAIN_METRIC).index(r["task"])
                                        if r["task"] in MAIN_METRIC else 99,
                                        r["metric"], -(_num(r["ratio"]) or 0),
                                        POLICY_ORDER.index(r["baseline"])
                                        if r["baseline"] in POLICY_ORDER else 99)):
        if r["task"] in MAIN_METRIC and r["metric"] not in MAIN_METRIC[r["task"]] + ("nll",):
            continue
        body.append([r["task"], r["metric"], _fmt(r["ratio"]),
                     r["baseline"] if r["baseline"] == "none"
                     else f"{r['baseline']} @ {_fmt(r['baseline_ratio'])}",
                     r["n"], _fmt(r["mean"]), _fmt(r["baseline_mean"]), _fmt(r["mean_diff"]),
                     _fmt(r["p_bootstrap"], 4), _fmt(r["p_mcnemar"], 4), r["better"]])
    return _table(header, body)


def render(out_dir):
    results = read_csv(os.path.join(out_dir, "results.csv"))
    sig = read_csv(os.path.join(out_dir, "significance.csv"))
    if not results:
        raise FileNotFoundError(f"{out_dir}/results.csv is missing or empty")
    parts = ["### Summary (setting \"all\", mean [95% CI])", "", summary_table(results)]
    present = {r["task"] for r in results}
    for task, metrics in MAIN_METRIC.items():
        if task not in present:
            continue
        metric = next((m for m in metrics if any(r["task"] == task and r["metric"] == m
                                                 for r in results)), None)
        if metric is None:
            continue
        parts += ["", f"### {task}: {metric}", "", task_table(results, task, metric)]
    if sig:
        parts += ["", "### Paired tests: attention-guided against each baseline", "",
                  significance_table(sig)]
    return "\n".join(parts) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kvserve-eval tables", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--out-dir", required=True, help="a sweep directory")
    parser.add_argument("--markdown", help="write here instead of standard output")
    args = parser.parse_args(argv)
    try:
        text = render(args.out_dir)
    except FileNotFoundError as e:
        print(f"kvserve-eval tables: {e}", file=sys.stderr)
        return 2
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
