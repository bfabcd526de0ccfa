"""Small helpers shared by kvserve-eval, its tasks and the older bench scripts.

Standard library only. Nothing here knows about tasks or servers; it names the
repository's paths, parses comma lists on the command line, runs a function over items
with a bounded number in flight, and records provenance (commit, command).
"""

import argparse
import concurrent.futures
import os
import shlex
import subprocess
import sys

# bench/kvserve_eval/util.py -> the repository root.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Evaluation data lives beside the repository, never inside it (notes/common.md).
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(REPO), "shared", "data")
DEFAULT_BIN = os.environ.get("KVSERVE_BIN", os.path.join(REPO, "build", "server", "kvserve"))
DEFAULT_MODEL = os.environ.get(
    "KVSERVE_MODEL",
    os.path.join(os.path.expanduser("~"), ".cache/kvserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))


def log(msg):
    """Progress goes to stderr so stdout stays free for results."""
    print(msg, file=sys.stderr, flush=True)


def repo_path(path):
    """`path` as given if absolute, else relative to the repository root (not the cwd), so
    defaults such as ../shared/data/... work from any directory."""
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(REPO, path))


def csv_list(kind, allowed=None):
    """argparse type: "a,b,c" -> [kind(a), kind(b), kind(c)], optionally restricted to
    `allowed`. A list (from a grid file) is accepted too, element by element."""
    def parse(text):
        raw = text if isinstance(text, (list, tuple)) else str(text).split(",")
        try:
            items = [kind(x.strip() if isinstance(x, str) else x) for x in raw
                     if not (isinstance(x, str) and not x.strip())]
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        if allowed is not None:
            bad = [x for x in items if x not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"{bad} not in {list(allowed)}")
        return items
    parse.__name__ = f"list of {getattr(kind, '__name__', 'value')}"
    return parse


def parallel_map(fn, items, concurrency=1, on_done=None):
    """[fn(item) for item in items], with at most `concurrency` calls in flight.

    Results come back in the order of `items` whatever order they finish in, so output
    files do not depend on scheduling. `on_done(index, result)` is called (from this
    thread) as each finishes, for progress lines. An exception in fn propagates.
    """
    items = list(items)
    if concurrency <= 1 or len(items) <= 1:
        results = []
        for i, item in enumerate(items):
            results.append(fn(item))
            if on_done:
                on_done(i, results[-1])
        return results
    results = [None] * len(items)
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if on_done:
                on_done(i, results[i])
    return results


def git_commit():
    """Short commit of the repository, "+dirty" when tracked files differ from it."""
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "diff", "--quiet", "HEAD", "--"],
                               capture_output=True).returncode != 0
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command_line(argv=None):
    """The command as typed (script path relative to the cwd), for reproducing a run."""
    argv = sys.argv if argv is None else argv
    argv0 = os.path.relpath(os.path.abspath(argv[0]), os.getcwd())
    prefix = [] if os.access(argv[0], os.X_OK) and not argv0.endswith(".py") else ["python3"]
    return shlex.join(prefix + [argv0] + list(argv[1:]))
