"""From item results to the sweep's tables: results.csv and significance.csv.

Input records are ItemResult dicts plus "policy" and "ratio" (one line of items.jsonl
each). A record whose value is not finite (NaN: the request failed and the metric has no
meaningful zero, e.g. nll) counts in `errors`, not in the mean.

results.csv, one row per (policy, ratio, task, setting, metric), plus setting "all"
over every item of the task, and for metric "nll" an extra metric "perplexity" row per
setting = exp of the nll mean and of its CI bounds (exp is monotone, so the interval
carries over):
  policy, ratio, task, setting, metric, value (mean), n (finite values), ci_low, ci_high
  (percentile bootstrap 95% over items), kv_ratio (mean achieved usage ratio), kv_bytes
  (mean usage.kv_bytes), errors (items with extra["error"]).

significance.csv: the reference policy (attention-guided) against every other policy
at the same ratio and against none, per task and metric over setting "all", items
paired by item_id (only pairs where both values are finite):
  task, metric, policy, ratio, baseline, baseline_ratio, n, mean, baseline_mean,
  mean_diff (policy - baseline), p_bootstrap (paired bootstrap, two-sided; empty below
  MIN_BOOTSTRAP_PAIRS pairs), p_mcnemar
  (exact McNemar when every value is 0 or 1, else empty), direction
  ("lower_is_better" / "higher_is_better" from base.LOWER_IS_BETTER), better (the policy
  with the better mean, "tie" when equal).

Duplicate records (same task, policy, ratio, setting, item_id and metric, as a resumed
sweep may leave) count once: the last wins. Everything is deterministic for a seed.
"""

import csv
import json
import math
import os

from . import metrics
from .tasks.base import LOWER_IS_BETTER

RESULT_COLUMNS = ("policy", "ratio", "task", "setting", "metric", "value", "n", "ci_low",
                  "ci_high", "kv_ratio", "kv_bytes", "errors")
SIGNIFICANCE_COLUMNS = ("task", "metric", "policy", "ratio", "baseline", "baseline_ratio", "n",
                        "mean", "baseline_mean", "mean_diff", "p_bootstrap", "p_mcnemar",
                        "direction", "better")
POLICY_ORDER = ("none", "streaming", "h2o", "snapkv", "quant-uniform", "attention-guided")
REFERENCE_POLICY = "attention-guided"


def read_items(path):
    """The records of an items.jsonl; a torn last line (a crash mid-write) is skipped."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def dedupe(records):
    latest = {}
    for r in records:
        key = (r["task"], r["policy"], float(r["ratio"]), r["setting"], r["item_id"], r["metric"])
        latest.pop(key, None)  # re-insert so the order is that of the last occurrence
        latest[key] = r
    return list(latest.values())


def _finite(value):
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _mean(values):
    return math.fsum(values) / len(values) if values else None


def _policy_key(policy):
    return (POLICY_ORDER.index(policy) if policy in POLICY_ORDER else len(POLICY_ORDER), policy)


def _summarise(records, seed):
    """value, n, ci_low, ci_high, kv_ratio, kv_bytes, errors of a group of records."""
    values = [float(r["value"]) for r in records if _finite(r["value"])]
    kv_ratios = [r["kv_ratio"] for r in records if _finite(r.get("kv_ratio"))]
    kv_bytes = [r["kv_bytes"] for r in records if _finite(r.get("kv_bytes"))]
    row = {"n": len(values), "kv_ratio": _mean(kv_ratios), "kv_bytes": _mean(kv_bytes),
           "errors": sum(1 for r in records if (r.get("extra") or {}).get("error")),
           "value": None, "ci_low": None, "ci_high": None}
    if values:
        row["value"], row["ci_low"], row["ci_high"] = metrics.bootstrap_ci(values, seed=seed)
    return row


def aggregate(records, seed=0):
    """results.csv rows (dicts keyed by RESULT_COLUMNS) of the records, ordered by task
    (first seen), policy, ratio (high to low), setting (first seen, "all" last), metric."""
    records = dedupe(records)
    tasks, settings, metric_names = {}, {}, {}
    groups = {}
    for r in records:
        tasks.setdefault(r["task"], len(tasks))
        settings.setdefault((r["task"], r["setting"]), len(settings))
        metric_names.setdefault(r["metric"], len(metric_names))
        for setting in (r["setting"], "all"):
            key = (r["task"], r["policy"], float(r["ratio"]), setting, r["metric"])
            groups.setdefault(key, []).append(r)

    def order(key):
        task, policy, ratio, setting, metric = key
        setting_rank = (1, 0) if setting == "all" else (0, settings[(task, setting)])
        return (tasks[task], _policy_key(policy), -ratio, setting_rank, metric_names[metric])

    rows = []
    for key in sorted(groups, key=order):
        task, policy, ratio, setting, metric = key
        summary = _summarise(groups[key], seed)
        row = {"policy": policy, "ratio": ratio, "task": task, "setting": setting,
               "metric": metric, **summary}
        rows.append(row)
        if metric == "nll":
            ppl = dict(row, metric="perplexity")
            for column in ("value", "ci_low", "ci_high"):
                if row[column] is not None:
                    ppl[column] = math.exp(row[column])
            rows.append(ppl)
    return rows


def _is_binary(values):
    return all(v in (0.0, 1.0) for v in values)


# Fewest paired items for which the paired bootstrap's p-value is reported.
MIN_BOOTSTRAP_PAIRS = 8


def significance(records, reference=REFERENCE_POLICY, seed=0, n_resamples=10000):
    """significance.csv rows: `reference` at each ratio against every other policy at
    that ratio and against none, per task and metric, paired by item_id."""
    by_run = {}  # (task, metric, policy, ratio) -> {item_id: value}
    for r in dedupe(records):
        if _finite(r["value"]):
            key = (r["task"], r["metric"], r["policy"], float(r["ratio"]))
            by_run.setdefault(key, {})[r["item_id"]] = float(r["value"])
    rows = []
    for (task, metric, policy, ratio) in sorted(by_run, key=lambda k: (k[0], k[1], -k[3])):
        if policy != reference:
            continue
        baselines = sorted(((p, q) for (t, m, p, q) in by_run
                            if t == task and m == metric and p != reference
                            and (q == ratio or p == "none")),
                           key=lambda b: _policy_key(b[0]))
        ours = by_run[(task, metric, policy, ratio)]
        for base_policy, base_ratio in baselines:
            theirs = by_run[(task, metric, base_policy, base_ratio)]
            common = sorted(set(ours) & set(theirs))
            if not common:
                continue
            a = [ours[i] for i in common]
            b = [theirs[i] for i in common]
            diff = _mean(a) - _mean(b)
            lower = metric in LOWER_IS_BETTER
            if diff == 0:
                better = "tie"
            else:
                better = policy if (diff < 0) == lower else base_policy
            rows.append({
                "task": task, "metric": metric, "policy": policy, "ratio": ratio,
                "baseline": base_policy, "baseline_ratio": base_ratio, "n": len(common),
                "mean": _mean(a), "baseline_mean": _mean(b), "mean_diff": diff,
                # A handful of pairs carries too little spread: with every pair on
                # the same side, the bootstrap calls any difference certain (p = 1 /
                # (1 + n_resamples)) where an exact sign test could not go below
                # 2 / 2^n. Below MIN_BOOTSTRAP_PAIRS no p-value is given.
                "p_bootstrap": (metrics.paired_bootstrap_test(a, b, n_resamples, seed)
                                if len(common) >= MIN_BOOTSTRAP_PAIRS else None),
                "p_mcnemar": (metrics.mcnemar_exact(a, b) if _is_binary(a + b) else None),
                "direction": "lower_is_better" if lower else "higher_is_better",
                "better": better})
    return rows


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.0f}"
    return value


def write_csv(path, columns, rows):
    """Writes rows (dicts) with the given columns; None becomes an empty cell and
    floats keep 6 significant digits (plenty for means with bootstrap intervals)."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
    os.replace(tmp, path)


def write_reports(out_dir, records, reference=REFERENCE_POLICY, seed=0):
    """Writes out_dir/results.csv and out_dir/significance.csv; returns their rows."""
    results = aggregate(records, seed)
    tests = significance(records, reference, seed)
    write_csv(os.path.join(out_dir, "results.csv"), RESULT_COLUMNS, results)
    write_csv(os.path.join(out_dir, "significance.csv"), SIGNIFICANCE_COLUMNS, tests)
    return results, tests
