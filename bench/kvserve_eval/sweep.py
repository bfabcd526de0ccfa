"""Runs tasks over a grid of compression settings and writes the sweep's files.

A grid (JSON file, or built by `kvserve-eval run`) is
  {"policies": [...], "ratios": [...], "seed": 0, "concurrency": 1,
   "reference": "attention-guided",
   "server": {"threads": 2, "flags": ["--kv-cache-bytes", "1GiB"]},
   "tasks": {"passkey": {"lengths": [2048]}, "perplexity": {}, ...}}
Policy none runs once at ratio 1.0, every other policy at every ratio (`settings`).
Each task runs once per setting; the quality tasks share one server, then each task
with exclusive=True runs alone on a freshly started one (it may restart it with its own
flags through ctx.server). With an external --url there is no restart.

Files in the output directory:
  items.jsonl   every ItemResult plus "policy" and "ratio", appended after each
                (task, setting) run, so an interrupted sweep keeps what it finished;
  results.csv, significance.csv   see report.py, written at the end;
  meta.json     commit, command, grid, model, server command, start/end time, seconds
                per task and per run, completed runs, failures.
Resuming: rerunning into a directory whose meta.json has the same grid skips the
(task, policy, ratio) runs it records as completed; a different grid is refused (use
a new directory or fresh=True). A task that raises is logged and recorded as a failure;
the sweep goes on with the next run and the exit status says so.
"""

import datetime
import json
import os
import time
import traceback

from . import report, util
from .client import Client
from .tasks.base import EvalContext, Setting

POLICIES = report.POLICY_ORDER
GRID_DEFAULTS = {"policies": list(POLICIES), "ratios": [0.5, 0.25, 0.125], "seed": 0,
                 "concurrency": 1, "reference": report.REFERENCE_POLICY,
                 "server": {"threads": 2, "flags": []}, "tasks": {}}


class SweepError(Exception):
    """A grid or output directory the sweep cannot use."""


def settings(policies, ratios):
    """[Setting]: none once at ratio 1.0 (if asked for), then each other policy at each
    ratio, in the order given."""
    out = [Setting("none", 1.0)] if "none" in policies else []
    out += [Setting(p, float(r)) for p in policies if p != "none" for r in ratios]
    return out


def normalise_grid(grid):
    """The grid with defaults filled in, validated (SweepError says what is wrong)."""
    if not isinstance(grid, dict):
        raise SweepError("the grid must be a JSON object")
    unknown = set(grid) - set(GRID_DEFAULTS)
    if unknown:
        raise SweepError(f"unknown grid keys {sorted(unknown)}; known: {sorted(GRID_DEFAULTS)}")
    out = json.loads(json.dumps(GRID_DEFAULTS))
    out.update(json.loads(json.dumps(grid)))
    out["server"] = dict(GRID_DEFAULTS["server"], **(grid.get("server") or {}))
    bad = [p for p in out["policies"] if p not in POLICIES]
    if bad or not out["policies"]:
        raise SweepError(f"policies {bad or '[]'} not in {list(POLICIES)}")
    try:
        out["ratios"] = [float(r) for r in out["ratios"]]
    except (TypeError, ValueError) as e:
        raise SweepError(f"ratios must be numbers: {e}") from e
    if any(not 0.0 < r <= 1.0 for r in out["ratios"]):
        raise SweepError(f"ratios must be in (0, 1]: {out['ratios']}")
    if any(p != "none" for p in out["policies"]) and not out["ratios"]:
        raise SweepError("policies other than none need at least one ratio")
    if not isinstance(out["tasks"], dict) or not out["tasks"]:
        raise SweepError('the grid names no tasks ("tasks": {"passkey": {...}, ...})')
    out["tasks"] = {name: dict(options or {}) for name, options in out["tasks"].items()}
    if int(out["concurrency"]) < 1:
        raise SweepError("concurrency must be at least 1")
    return out


def load_grid(path):
    try:
        with open(path) as f:
            return normalise_grid(json.load(f))
    except (OSError, ValueError) as e:
        raise SweepError(f"cannot read grid {path}: {e}") from e


def _now():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class Sweep:
    """One sweep: a grid, its tasks with their options, a server, an output location.

    `tasks`: {name: (Task, options dict)} in grid order. `url`: an external server, or
    None to start one with `launcher` (a ServerLauncher, not yet started). `items_path`
    receives the items; `out_dir` (optional) gets meta.json and the CSVs.
    """

    def __init__(self, grid, tasks, items_path, out_dir=None, url=None, launcher=None,
                 model_path=util.DEFAULT_MODEL, data_dir=util.DEFAULT_DATA_DIR, timeout=900.0,
                 fresh=False, command=None, log=util.log):
        if url is None and launcher is None:
            raise SweepError("need a server URL or a launcher")
        self.grid, self.tasks = grid, tasks
        self.items_path, self.out_dir = items_path, out_dir
        self.url, self.launcher = url, launcher
        self.model_path, self.data_dir, self.timeout = model_path, data_dir, timeout
        self.log = log
        self.meta_path = os.path.join(out_dir, "meta.json") if out_dir else None
        self.meta = self._initial_meta(fresh, command)

    # --- bookkeeping --------------------------------------------------------------------

    def _initial_meta(self, fresh, command):
        meta = {"commit": util.git_commit(), "command": command or util.command_line(),
                "grid": self.grid,
                "task_options": {name: options for name, (_, options) in self.tasks.items()},
                "model": self.model_path, "data_dir": self.data_dir,
                "server": self.url, "start_time": _now(), "end_time": None,
                "task_seconds": {}, "runs": [], "completed": [], "failures": []}
        have_items = os.path.exists(self.items_path) and os.path.getsize(self.items_path) > 0
        if fresh or not have_items or self.meta_path is None:
            if have_items:
                os.remove(self.items_path)
            return meta
        if not os.path.exists(self.meta_path):
            raise SweepError(f"{self.items_path} exists without meta.json; use --fresh or "
                             "another output directory")
        with open(self.meta_path) as f:
            old = json.load(f)
        if old.get("grid") != self.grid:
            raise SweepError(f"{self.meta_path} records a different grid; use --fresh or "
                             "another output directory")
        old["failures"] = []
        old["resumed"] = old.get("resumed", 0) + 1
        old["commands"] = old.get("commands", [old.get("command")]) + [meta["command"]]
        old["commit"] = meta["commit"]
        old["end_time"] = None
        return old

    def _save_meta(self):
        if self.meta_path is None:
            return
        os.makedirs(self.out_dir, exist_ok=True)
        tmp = self.meta_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.meta, f, indent=1)
            f.write("\n")
        os.replace(tmp, self.meta_path)

    def _append_items(self, setting, results):
        lines = []
        for r in results:
            record = r.to_json()
            record["policy"], record["ratio"] = setting.policy, setting.ratio
            lines.append(json.dumps(record, allow_nan=True))
        os.makedirs(os.path.dirname(os.path.abspath(self.items_path)), exist_ok=True)
        with open(self.items_path, "a") as f:  # one write: a crash tears one line at most
            f.write("".join(line + "\n" for line in lines))

    # --- running ------------------------------------------------------------------------

    def _client(self, exclusive):
        """A client for the next run; starts (or for an exclusive task restarts) the
        tool's server as needed."""
        if self.launcher is None:
            return Client(self.url, timeout=self.timeout)
        if exclusive or not self.launcher.running:
            if self.launcher.proc is not None and not exclusive:
                self.log("server is not running any more; restarting it")
            self.launcher.restart()
            self.meta["server"] = self.launcher.describe()
        return self.launcher.client(timeout=self.timeout)

    def run(self):
        """Runs every (task, setting) not yet completed; returns the number of failed
        runs (0 = all fine)."""
        self._save_meta()
        done = {tuple(x) for x in self.meta["completed"]}
        plan = sorted(self.tasks.items(), key=lambda kv: kv[1][0].exclusive)  # stable
        grid_settings = settings(self.grid["policies"], self.grid["ratios"])
        failures = 0
        try:
            for t_index, (name, (task, options)) in enumerate(plan, start=1):
                for s_index, setting in enumerate(grid_settings, start=1):
                    key = (name, setting.policy, setting.ratio)
                    if key in done:
                        self.log(f"[{name} {t_index}/{len(plan)}] {setting.label}: done "
                                 "earlier, skipped")
                        continue
                    self.log(f"[{name} {t_index}/{len(plan)}] {setting.label} "
                             f"({s_index}/{len(grid_settings)})")
                    if not self._run_one(name, task, options, setting):
                        failures += 1
                if task.exclusive and self.launcher is not None:
                    self.launcher.stop()  # the next exclusive task gets a fresh server
        finally:
            if self.launcher is not None:
                self.launcher.stop()
            self.meta["end_time"] = _now()
            self._save_meta()
        if self.out_dir:
            results, tests = report.write_reports(
                self.out_dir, report.read_items(self.items_path), self.grid["reference"],
                int(self.grid["seed"]) if str(self.grid["seed"]).lstrip("-").isdigit() else 0)
            self.log(f"wrote {self.out_dir}/results.csv ({len(results)} rows), "
                     f"significance.csv ({len(tests)} rows), items.jsonl, meta.json")
        return failures

    def _run_one(self, name, task, options, setting):
        t0 = time.monotonic()
        results, error = [], None
        client = self._client(task.exclusive)  # a server that cannot start ends the sweep
        try:
            ctx = EvalContext(client=client, setting=setting, data_dir=self.data_dir,
                              model_path=self.model_path, seed=self.grid["seed"],
                              concurrency=int(self.grid["concurrency"]), server=self.launcher,
                              log=self.log)
            results = task.run(ctx, dict(options))
        except Exception as e:  # a broken task must not lose the rest of the sweep
            error = f"{type(e).__name__}: {e}"
            self.log(f"  {name} {setting.label} FAILED: {error}\n{traceback.format_exc()}")
        seconds = time.monotonic() - t0
        run = {"task": name, "policy": setting.policy, "ratio": setting.ratio,
               "seconds": round(seconds, 2), "items": len(results),
               "errors": sum(1 for r in results if r.extra.get("error"))}
        self.meta["runs"].append(run)
        self.meta["task_seconds"][name] = round(self.meta["task_seconds"].get(name, 0.0)
                                                + seconds, 2)
        if error is None:
            self._append_items(setting, results)
            self.meta["completed"].append([name, setting.policy, setting.ratio])
            self.log(f"  {name} {setting.label}: {len(results)} items, {run['errors']} "
                     f"failed requests, {seconds:.1f}s")
        else:
            self.meta["failures"].append(dict(run, error=error))
        self._save_meta()
        return error is None
