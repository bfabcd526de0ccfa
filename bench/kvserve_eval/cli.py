"""Command line of kvserve-eval (bench/kvserve-eval).

  kvserve-eval list
      the tasks found in kvserve_eval/tasks and their options
  kvserve-eval run --task T [--policies none,h2o] [--ratios 0.5,0.25] [--T-option ...]
      [--url URL | --bin B --model M --threads N --server-flag "..."] --out items.jsonl
      one task over the settings; items to --out, a summary table (setting "all") to
      stdout
  kvserve-eval sweep --grid GRID.json --out-dir DIR [--fresh] [--url ... | --bin ...]
      every task of the grid over its settings; DIR/items.jsonl, results.csv,
      significance.csv, meta.json (see sweep.py and report.py); resumes a sweep with the
      same grid in DIR unless --fresh
  kvserve-eval report --out-dir DIR
      rewrites DIR/results.csv and significance.csv from DIR/items.jsonl

Without --url the tool starts `kvserve serve` itself (--bin, --model, --threads, plus
the grid's "server" flags and every --server-flag, each split like a shell would) and
stops it at the end; the server log goes to the output directory (sweep) or the temp
directory (run). Progress goes to
stderr. Exit status: 0 when every run completed, 1 when a task failed, 2 for bad usage.
"""

import argparse
import json
import os
import shlex
import sys

from . import plots, registry, report, sweep, tables, util
from .server import ServerLauncher


def _add_server_args(parser):
    g = parser.add_argument_group("server")
    g.add_argument("--url", help="a running kvserve server (default: start one)")
    g.add_argument("--bin", default=util.DEFAULT_BIN, help="kvserve binary (default %(default)s)")
    g.add_argument("--model", default=util.DEFAULT_MODEL,
                   help="GGUF model; also the tokenizer of the prompts (default %(default)s)")
    g.add_argument("--threads", type=int, default=None,
                   help="server threads (default: the grid's, else 2)")
    g.add_argument("--server-flag", action="append", default=[], metavar="FLAGS",
                   help='more `kvserve serve` flags, e.g. "--kv-cache-bytes 1GiB" (repeatable)')
    g.add_argument("--startup-timeout", type=float, default=180.0,
                   help="seconds to wait for the server to be ready")
    g.add_argument("--timeout", type=float, default=900.0, help="seconds per request")
    g.add_argument("--data-dir", default=util.DEFAULT_DATA_DIR,
                   help="evaluation data (default %(default)s)")


def _launcher(args, grid, log_dir):
    if args.url:
        return None
    flags = list(grid["server"].get("flags") or [])
    for extra in args.server_flag:
        flags += shlex.split(extra)
    threads = args.threads if args.threads is not None else int(grid["server"].get("threads", 2))
    return ServerLauncher(args.bin, args.model, threads, flags,
                          startup_timeout=args.startup_timeout, log_dir=log_dir)


def _print_summary(rows, out=None):
    """The setting "all" rows as an aligned table (to stdout by default)."""
    out = out or sys.stdout
    rows = [r for r in rows if r["setting"] == "all"]
    header = ("policy", "ratio", "task", "metric", "value", "ci_low", "ci_high", "n",
              "kv_ratio", "errors")
    table = [header] + [tuple(str(report._cell(r.get(c))) for c in header) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip(), file=out)


def _cmd_list(args):
    for name in registry.task_names():
        try:
            task = registry.load_task(name)
        except Exception as e:  # report, do not hide, a broken task module
            print(f"{name}: cannot load ({type(e).__name__}: {e})")
            continue
        options = registry.default_options(task)
        kind = " (exclusive: runs alone on its own server)" if task.exclusive else ""
        print(f"{name}{kind}")
        for key, value in options.items():
            print(f"  {key} = {json.dumps(value)}")
    return 0


def _run_parser(task=None):
    parser = argparse.ArgumentParser(prog="kvserve-eval run",
                                     description="Runs one task over compression settings.")
    parser.add_argument("--task", required=True,
                        help=f"task to run: {', '.join(registry.task_names())}")
    parser.add_argument("--policies", type=util.csv_list(str, sweep.POLICIES),
                        default=["none", "attention-guided"],
                        help="comma list (default none,attention-guided)")
    parser.add_argument("--ratios", type=util.csv_list(float), default=[0.25],
                        help="target ratios of the policies other than none (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the items")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument("--out", required=True, help="items file (JSON lines), overwritten")
    _add_server_args(parser)
    if task is not None:
        task.add_arguments(parser)
    return parser


def _cmd_run(argv):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task")
    known, _ = pre.parse_known_args(argv)
    task = None
    if known.task:
        try:
            task = registry.load_task(known.task)
        except registry.RegistryError as e:
            print(f"kvserve-eval run: {e}", file=sys.stderr)
            return 2
    args = _run_parser(task).parse_args(argv)
    options = registry.options_from_namespace(task, args)
    grid = sweep.normalise_grid({"policies": args.policies, "ratios": args.ratios,
                                 "seed": args.seed, "concurrency": args.concurrency,
                                 "tasks": {task.name: {}}})
    runner = sweep.Sweep(grid, {task.name: (task, options)}, args.out, out_dir=None,
                         url=args.url, launcher=_launcher(args, grid, None),
                         model_path=args.model, data_dir=args.data_dir, timeout=args.timeout,
                         fresh=True)
    failures = runner.run()
    _print_summary(report.aggregate(report.read_items(args.out), args.seed))
    return 1 if failures else 0


def _cmd_sweep(args):
    grid = sweep.load_grid(args.grid)
    tasks = {}
    for name, grid_options in grid["tasks"].items():
        task = registry.load_task(name)
        tasks[name] = (task, registry.options_from_grid(task, grid_options))
    os.makedirs(args.out_dir, exist_ok=True)
    runner = sweep.Sweep(grid, tasks, os.path.join(args.out_dir, "items.jsonl"),
                         out_dir=args.out_dir, url=args.url,
                         launcher=_launcher(args, grid, args.out_dir), model_path=args.model,
                         data_dir=args.data_dir, timeout=args.timeout, fresh=args.fresh)
    failures = runner.run()
    if failures:
        util.log(f"{failures} run(s) failed; see {args.out_dir}/meta.json")
    return 1 if failures else 0


def _cmd_report(args):
    items = os.path.join(args.out_dir, "items.jsonl")
    if not os.path.exists(items):
        print(f"kvserve-eval report: {items} does not exist", file=sys.stderr)
        return 2
    grid = {}
    meta_path = os.path.join(args.out_dir, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            grid = json.load(f).get("grid") or {}
    seed = grid.get("seed", 0)
    results, _ = report.write_reports(args.out_dir, report.read_items(items),
                                      grid.get("reference", report.REFERENCE_POLICY),
                                      seed if isinstance(seed, int) else 0)
    _print_summary(results)
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="kvserve-eval", description="Evaluates kvserve KV-cache compression policies "
        "through the HTTP serving path.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the tasks and their options")
    sub.add_parser("run", help="run one task (see kvserve-eval run --help)", add_help=False)
    p_sweep = sub.add_parser("sweep", help="run a grid file")
    p_sweep.add_argument("--grid", required=True, help="grid JSON (bench/eval/*.json)")
    p_sweep.add_argument("--out-dir", required=True, help="output directory")
    p_sweep.add_argument("--fresh", action="store_true",
                         help="start over even if DIR holds an earlier sweep")
    _add_server_args(p_sweep)
    p_report = sub.add_parser("report", help="rewrite the CSVs of a sweep directory")
    p_report.add_argument("--out-dir", required=True)
    sub.add_parser("tables", help="markdown tables of a sweep (see kvserve-eval tables --help)",
                   add_help=False)
    sub.add_parser("plot", help="PNG figures of a sweep (see kvserve-eval plot --help)",
                   add_help=False)

    if argv and argv[0] == "run":
        command, handler = "run", lambda: _cmd_run(argv[1:])
    elif argv and argv[0] == "tables":
        command, handler = "tables", lambda: tables.main(argv[1:])
    elif argv and argv[0] == "plot":
        command, handler = "plot", lambda: plots.main(argv[1:])
    else:
        args = parser.parse_args(argv)
        command = args.command
        handler = {"list": _cmd_list, "sweep": _cmd_sweep, "report": _cmd_report}[command]
        handler = (lambda h: lambda: h(args))(handler)
    try:
        return handler()
    except (sweep.SweepError, registry.RegistryError) as e:
        print(f"kvserve-eval {command}: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # the server did not start
        print(f"kvserve-eval {command}: {e}", file=sys.stderr)
        return 1
