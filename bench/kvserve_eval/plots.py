"""Figures of a kvserve-eval sweep, from its results.csv.

    cd bench && python3 -m kvserve_eval.plots --csv DIR/results.csv --out-dir ../docs/eval

The CSV has one row per (policy, ratio, task, setting, metric) with the columns policy,
ratio, task, setting, metric, value, n, ci_low, ci_high, kv_ratio, kv_bytes (kv_ratio:
the achieved stored / f16 KV bytes; empty when the server reported none). Figures, each
skipped when its rows are missing:

  <task>_vs_kv.png   for perplexity, passkey, niah, longbench: the task's metric (setting
                     "all") against the achieved KV fraction, one line per policy with the
                     bootstrap CI as error bars, "none" as one point (at 1.0); one panel
                     per metric when a task reports several (LongBench over datasets with
                     different metrics).
  niah_heatmap_<variant>.png
                     NIAH accuracy over context length x needle depth, one panel per
                     policy at the ratio nearest --niah-ratio (plus "none"); settings
                     "variant=V,length=L,depth=D" (without a variant: niah_heatmap.png).
  memory_vs_speed.png
                     KV memory saved (1 - kv_ratio) against speed: the capacity task's
                     throughput_tok_s and max_sessions, and any tpot_s / step_s rows, one
                     panel per metric, one line per policy.

main(argv) returns 0 and prints the written paths; the files' names are fixed, so a
second run overwrites the first's.
"""

import argparse
import collections
import csv
import math
import os
import sys
from typing import Dict, List, Optional

from kvserve_eval.tasks import base

VS_KV_TASKS = ("perplexity", "passkey", "niah", "longbench")
# Which metric a task's "vs KV" figure shows when it reports several; otherwise every
# metric of its "all" rows gets a panel.
PREFERRED_METRIC = {
    "perplexity": ("perplexity", "nll"),
    "passkey": ("accuracy", "exact_match"),
    "niah": ("accuracy", "exact_match"),
}
SPEED_METRICS = ("throughput_tok_s", "max_sessions", "tpot_s", "step_s")
LOWER_IS_BETTER = base.LOWER_IS_BETTER | {"ttft_p50_s", "ttft_p95_s"}
METRIC_LABEL = {
    "perplexity": "perplexity", "nll": "NLL (nats / token)", "accuracy": "accuracy",
    "exact_match": "accuracy", "qa_f1": "QA F1", "rouge_l": "ROUGE-L",
    "classification": "classification accuracy", "retrieval": "retrieval accuracy",
    "count": "count accuracy", "throughput_tok_s": "output tokens / s",
    "max_sessions": "concurrent sessions", "tpot_s": "time per output token (s)",
    "step_s": "engine step (s)",
}
_FLOAT_COLUMNS = ("ratio", "value", "n", "ci_low", "ci_high", "kv_ratio", "kv_bytes")


# --- Reading ------------------------------------------------------------------------------


def _float(text) -> Optional[float]:
    if text is None or str(text).strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def read_rows(path: str) -> List[dict]:
    """The CSV's rows, numeric columns as float (None when empty)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for column in _FLOAT_COLUMNS:
            row[column] = _float(row.get(column))
        for column in ("policy", "task", "setting", "metric"):
            row[column] = (row.get(column) or "").strip()
    return rows


def parse_setting(setting: str) -> Dict[str, str]:
    """"variant=a,length=4096,depth=0.5" -> {"variant": "a", "length": "4096", ...}."""
    out = {}
    for part in setting.split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def kv_fraction(row: dict) -> Optional[float]:
    """The achieved KV fraction of f16 bytes: kv_ratio, else the target ratio (1.0 for
    policy none)."""
    if row.get("kv_ratio") is not None:
        return row["kv_ratio"]
    if row.get("policy") == "none":
        return 1.0
    return row.get("ratio")


def _policy_order(policies) -> List[str]:
    return sorted(set(policies), key=lambda p: (p != "none", p))


def _axis_label(metric: str) -> str:
    label = METRIC_LABEL.get(metric, metric)
    return label + (" (lower is better)" if metric in LOWER_IS_BETTER else "")


# --- Figures -------------------------------------------------------------------------------


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out_dir: str, name: str, written: List[str]) -> None:
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    written.append(path)


def _error_bars(points):
    low, high = [], []
    for p in points:
        value = p["value"]
        low.append(max(0.0, value - p["ci_low"]) if p["ci_low"] is not None else 0.0)
        high.append(max(0.0, p["ci_high"] - value) if p["ci_high"] is not None else 0.0)
    return [low, high]


def _plot_lines(ax, rows, x_of, metric):
    """One line (with CI error bars) per policy; "none" as a single marker."""
    by_policy = collections.defaultdict(list)
    for row in rows:
        x = x_of(row)
        if x is not None and row["value"] is not None:
            by_policy[row["policy"]].append(dict(row, x=x))
    for policy in _policy_order(by_policy):
        points = sorted(by_policy[policy], key=lambda p: p["x"])
        xs = [p["x"] for p in points]
        ys = [p["value"] for p in points]
        if policy == "none":
            ax.errorbar(xs, ys, yerr=_error_bars(points), fmt="k*", markersize=11,
                        capsize=3, label="none", zorder=3)
        else:
            ax.errorbar(xs, ys, yerr=_error_bars(points), fmt="o-", capsize=3,
                        label=policy)
    ax.set_ylabel(_axis_label(metric))
    ax.grid(True, alpha=0.3)
    if by_policy:
        ax.legend(fontsize=8)
    return bool(by_policy)


def plot_metric_vs_kv(rows: List[dict], task: str, out_dir: str, written: List[str]) -> None:
    task_rows = [r for r in rows if r["task"] == task and r["setting"] == "all"]
    metrics_present = sorted({r["metric"] for r in task_rows})
    if not metrics_present:
        return
    preferred = [m for m in PREFERRED_METRIC.get(task, ()) if m in metrics_present]
    shown = preferred[:1] or metrics_present
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], shown):
        _plot_lines(ax, [r for r in task_rows if r["metric"] == metric], kv_fraction, metric)
        ax.set_xlabel("achieved KV bytes / f16 bytes")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{task}: {METRIC_LABEL.get(metric, metric)} vs KV size")
    _save(fig, out_dir, f"{task}_vs_kv.png", written)


def _nearest_ratio(rows: List[dict], ratio: float) -> Optional[float]:
    ratios = {r["ratio"] for r in rows if r["ratio"] is not None}
    if not ratios:
        return None
    return min(ratios, key=lambda x: (abs(math.log(x) - math.log(ratio)) if x > 0 else math.inf,
                                      x))


def plot_niah_heatmaps(rows: List[dict], out_dir: str, written: List[str],
                       ratio: float = 0.125) -> None:
    cells = []
    for r in rows:
        if r["task"] != "niah" or r["value"] is None:
            continue
        setting = parse_setting(r["setting"])
        if "length" not in setting or "depth" not in setting:
            continue
        cells.append(dict(r, variant=setting.get("variant", ""),
                          length=int(float(setting["length"])),
                          depth=float(setting["depth"])))
    if not cells:
        return
    metrics_present = {c["metric"] for c in cells}
    metric = next((m for m in PREFERRED_METRIC["niah"] if m in metrics_present),
                  sorted(metrics_present)[0])
    cells = [c for c in cells if c["metric"] == metric]
    plt = _pyplot()
    for variant in sorted({c["variant"] for c in cells}):
        variant_cells = [c for c in cells if c["variant"] == variant]
        panels = []  # (title, cells)
        for policy in _policy_order(c["policy"] for c in variant_cells):
            policy_cells = [c for c in variant_cells if c["policy"] == policy]
            if policy == "none":
                panels.append(("none", policy_cells))
                continue
            chosen = _nearest_ratio(policy_cells, ratio)
            if chosen is not None:
                panels.append((f"{policy}@{chosen:g}",
                               [c for c in policy_cells if c["ratio"] == chosen]))
        lengths = sorted({c["length"] for c in variant_cells})
        depths = sorted({c["depth"] for c in variant_cells})
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1.2, 3.6),
                                 squeeze=False)
        image = None
        for ax, (title, panel_cells) in zip(axes[0], panels):
            grid = [[math.nan] * len(lengths) for _ in depths]
            for c in panel_cells:
                grid[depths.index(c["depth"])][lengths.index(c["length"])] = c["value"]
            image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto",
                              origin="upper")
            for i, row in enumerate(grid):
                for j, value in enumerate(row):
                    if not math.isnan(value):
                        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(lengths)), [str(x) for x in lengths], fontsize=8)
            ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=8)
            ax.set_xlabel("context length (tokens)")
            ax.set_title(title, fontsize=10)
        axes[0][0].set_ylabel("needle depth")
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label=_axis_label(metric))
        fig.suptitle(f"NIAH{' ' + variant if variant else ''}: {metric} by length and depth")
        name = f"niah_heatmap_{_safe(variant)}.png" if variant else "niah_heatmap.png"
        _save(fig, out_dir, name, written)


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


def plot_memory_vs_speed(rows: List[dict], out_dir: str, written: List[str]) -> None:
    # Capacity rows of its own setting (its "all" rows would mix pool sizes); the other
    # tasks' "all" rows.
    speed_rows = [r for r in rows if r["metric"] in SPEED_METRICS
                  and (r["setting"] != "all" if r["task"] == "capacity"
                       else r["setting"] == "all")]
    shown = [m for m in SPEED_METRICS if any(r["metric"] == m for r in speed_rows)]
    if not shown:
        return
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.2), squeeze=False)

    def saved(row):
        fraction = kv_fraction(row)
        return None if fraction is None else 1.0 - fraction

    for ax, metric in zip(axes[0], shown):
        metric_rows = [r for r in speed_rows if r["metric"] == metric]
        settings = sorted({(r["task"], r["setting"]) for r in metric_rows})
        if len(settings) > 1:  # keep one setting per panel: the first, named in the title
            metric_rows = [r for r in metric_rows if (r["task"], r["setting"]) == settings[0]]
        _plot_lines(ax, metric_rows, saved, metric)
        ax.set_xlabel("KV memory saved (1 - achieved KV fraction)")
        ax.set_title(f"{settings[0][0]} {settings[0][1]}", fontsize=9)
    fig.suptitle("memory saved vs speed")
    _save(fig, out_dir, "memory_vs_speed.png", written)


def make_figures(rows: List[dict], out_dir: str, niah_ratio: float = 0.125) -> List[str]:
    """Writes every figure the rows allow into out_dir; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    written: List[str] = []
    for task in VS_KV_TASKS:
        plot_metric_vs_kv(rows, task, out_dir, written)
    plot_niah_heatmaps(rows, out_dir, written, niah_ratio)
    plot_memory_vs_speed(rows, out_dir, written)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m kvserve_eval.plots",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--csv", required=True, help="results.csv of a sweep")
    parser.add_argument("--out-dir", required=True, help="directory for the PNG files")
    parser.add_argument("--niah-ratio", type=float, default=0.125,
                        help="compression ratio of the NIAH heatmaps [default: %(default)s]")
    args = parser.parse_args(argv)
    rows = read_rows(args.csv)
    written = make_figures(rows, args.out_dir, args.niah_ratio)
    if not written:
        print(f"no figure: {args.csv} has no rows of a plotted task", file=sys.stderr)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
