#!/usr/bin/env python3
"""Speed comparison of kvserve against llama.cpp on the same GGUF and thread count.

Three scenarios, each measured --repeat times per side, alternating ours/peer (and
flipping which side goes first every round) so slow drifts in machine load hit both:

  prefill   2048 prompt tokens, batch 1        peer: llama-bench -p 2048 -n 0
  decode1   256 decode steps, batch 1          peer: llama-bench -p 0 -n 256
  decode8   8 x 128 prompt tokens, then 256    peer: llama-batched-bench -npp 128
            steps of all 8 sequences at once          -ntg 256 -npl 8 (aggregate TG speed)

Each measured run is its own process; llama-bench and llama-batched-bench do an
unmeasured warm-up inside that process, and ours is run with --repeat 1+W
(--ours-warmup W, default 1) and its first W repetitions are dropped, so both sides
are measured warm. A run during which other processes used more than
--max-interference of the CPUs (measured from /proc/stat minus the child's own CPU
time) is repeated, up to --max-attempts. Reported: median (min, max) tokens/s, ratios ours/peer of the
medians, and the project's targets:
  prefill ours >= 0.5 x peer; decode1 ours >= 0.5 x peer;
  decode8 ours aggregate >= 4 x peer decode1.

Writes docs/BENCHMARKS.md (unless --no-md) and, with --json-out, every raw sample.

The peer is built by bench/build_llamacpp.sh (default $KVSERVE_PEER_DIR or
~/.cache/kvserve/peer). Ours is `build/server/kvserve bench ... --json`, which prints
one JSON object per repetition:
  {"rep","batch","prompt_tokens","gen_tokens","prefill_s","prefill_tok_s",
   "decode_s","decode_tok_s"}   (decode_tok_s is aggregate: batch*gen/decode_s)

Usage (repository root):
  python3 bench/bench_vs_llamacpp.py [--model PATH] [--threads 2] [--repeat 5]
      [--ours-bin build/server/kvserve] [--peer-only] [--json-out FILE]
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.environ.get(
    "KVSERVE_MODEL",
    os.path.join(os.path.expanduser("~"), ".cache/kvserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
)
DEFAULT_PEER_DIR = os.environ.get(
    "KVSERVE_PEER_DIR", os.path.join(os.path.expanduser("~"), ".cache/kvserve/peer"))

# name -> workload; "ours" are the kvserve bench flags, the metric is the JSON key.
SCENARIOS = {
    "prefill": {"title": "Prefill, 2048-token prompt, batch 1",
                "ours": {"prompt": 2048, "gen": 0, "batch": 1}, "ours_metric": "prefill_tok_s",
                "peer_desc": "llama-bench -p 2048 -n 0"},
    "decode1": {"title": "Decode, batch 1, 256 tokens",
                "ours": {"prompt": 1, "gen": 256, "batch": 1}, "ours_metric": "decode_tok_s",
                "peer_desc": "llama-bench -p 0 -n 256"},
    "decode8": {"title": "Decode, batch 8 (8 x 128 prompt, 256 steps), aggregate",
                "ours": {"prompt": 128, "gen": 256, "batch": 8}, "ours_metric": "decode_tok_s",
                "peer_desc": "llama-batched-bench -npp 128 -ntg 256 -npl 8 (speed_tg)"},
}


class BenchError(RuntimeError):
    pass


def run(cmd, timeout):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise BenchError(f"cannot run {cmd[0]}: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"timed out after {timeout}s: {shlex.join(cmd)}") from e
    if p.returncode != 0:
        raise BenchError(f"exit {p.returncode}: {shlex.join(cmd)}\n--- stderr tail ---\n"
                         + p.stderr[-3000:] + "\n--- stdout tail ---\n" + p.stdout[-2000:])
    return p.stdout, p.stderr


def json_lines(text):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def _cpu_jiffies():
    """(total, idle + iowait) jiffies summed over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]   # user .. steal
    return sum(v), v[3] + v[4]


def cpu_busy_fraction(interval_s=1.0):
    """Fraction of all CPUs busy over `interval_s`; None if /proc/stat is unreadable."""
    try:
        t0, i0 = _cpu_jiffies()
        time.sleep(interval_s)
        t1, i1 = _cpu_jiffies()
    except (OSError, ValueError, IndexError):
        return None
    return None if t1 == t0 else 1.0 - (i1 - i0) / (t1 - t0)


def wait_for_quiet(max_busy, max_wait_s):
    """Waits until other processes leave the CPUs mostly idle, up to max_wait_s.

    Both sides run busy-waiting thread pools on every core they are given, so a
    competing process (a compiler on a shared 2-core machine) can cost a scheduler
    time slice per barrier and distort a run several-fold. Returns the last busy fraction.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = cpu_busy_fraction()
        if busy is None or busy <= max_busy or time.monotonic() >= deadline:
            return busy
        time.sleep(2.0)


class InterferenceMeter:
    """CPU time that processes other than the measured child used during its run.

    Busy jiffies of the whole machine minus the child's own user+system time
    (RUSAGE_CHILDREN; subprocess.run reaps the child, so it is counted), as a
    fraction of wall time x CPUs. 0.5 on a 2-CPU machine means another process took
    a whole core for the entire run.
    """

    def __enter__(self):
        self.fraction = None
        try:
            self._j0 = _cpu_jiffies()
        except (OSError, ValueError, IndexError):
            self._j0 = None
        self._r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        wall = time.monotonic() - self._t0
        if self._j0 is None or wall <= 0:
            return False
        try:
            t1, i1 = _cpu_jiffies()
        except (OSError, ValueError, IndexError):
            return False
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        hz = os.sysconf("SC_CLK_TCK")
        busy_s = ((t1 - self._j0[0]) - (i1 - self._j0[1])) / hz
        child_s = (r1.ru_utime - self._r0.ru_utime) + (r1.ru_stime - self._r0.ru_stime)
        self.fraction = max(0.0, busy_s - child_s) / (wall * (os.cpu_count() or 1))
        return False


# ---------------------------------------------------------------------------
# Peer (llama.cpp)
# ---------------------------------------------------------------------------

class Peer:
    def __init__(self, args):
        self.bin = os.path.join(args.peer_dir, "bin")
        self.model = args.model
        self.threads = args.threads
        self.fa = args.peer_flash_attn
        self.timeout = args.timeout
        for tool in ("llama-bench", "llama-batched-bench"):
            if not os.access(os.path.join(self.bin, tool), os.X_OK):
                raise BenchError(f"peer tool {tool} not found in {self.bin}; "
                                 "run bench/build_llamacpp.sh first")
        self.commands = {}

    def _llama_bench(self, name, p, n):
        cmd = [os.path.join(self.bin, "llama-bench"), "-m", self.model, "-t", str(self.threads),
               "-p", str(p), "-n", str(n), "-r", "1", "-fa", self.fa, "-o", "json"]
        self.commands[name] = cmd
        out, _ = run(cmd, self.timeout)
        rows = json.loads(out[out.index("["):])
        if len(rows) != 1 or len(rows[0].get("samples_ts", [])) != 1:
            raise BenchError(f"unexpected llama-bench output: {out[:500]}")
        r = rows[0]
        return r["samples_ts"][0], {k: r.get(k) for k in (
            "build_commit", "cpu_info", "n_threads", "n_batch", "n_ubatch", "type_k", "type_v",
            "flash_attn", "n_prompt", "n_gen", "model_type", "model_size", "model_n_params")}

    def _batched_bench(self, name):
        cmd = [os.path.join(self.bin, "llama-batched-bench"), "-m", self.model,
               "-t", str(self.threads), "-tb", str(self.threads), "-c", "4096", "-b", "2048",
               "-ub", "512", "-npp", "128", "-ntg", "256", "-npl", "8", "-fa", self.fa,
               "--output-format", "jsonl"]
        self.commands[name] = cmd
        out, err = run(cmd, self.timeout)
        rows = [r for r in json_lines(out + "\n" + err) if "speed_tg" in r]
        if len(rows) != 1 or rows[0]["pl"] != 8 or rows[0]["tg"] != 256 or rows[0]["pp"] != 128:
            raise BenchError(f"unexpected llama-batched-bench output: {out[-800:]}")
        return rows[0]["speed_tg"], rows[0]

    def measure(self, scenario):
        if scenario == "prefill":
            return self._llama_bench(scenario, 2048, 0)
        if scenario == "decode1":
            return self._llama_bench(scenario, 0, 256)
        return self._batched_bench(scenario)


# ---------------------------------------------------------------------------
# Ours (kvserve)
# ---------------------------------------------------------------------------

class Ours:
    def __init__(self, args):
        self.bin = args.ours_bin
        self.model = args.model
        self.threads = args.threads
        self.warmup = args.ours_warmup
        self.timeout = args.timeout
        if not os.access(self.bin, os.X_OK):
            raise BenchError(f"our binary {self.bin} not found or not executable; build it "
                             "(cmake --build <builddir> --target kvserve) or pass --peer-only")
        self.commands = {}

    def measure(self, scenario):
        w = SCENARIOS[scenario]["ours"]
        cmd = [self.bin, "bench", "--model", self.model, "--threads", str(self.threads),
               "--prompt-tokens", str(w["prompt"]), "--gen-tokens", str(w["gen"]),
               "--batch", str(w["batch"]), "--repeat", str(1 + self.warmup), "--json"]
        self.commands[scenario] = cmd
        out, _ = run(cmd, self.timeout)
        reps = [r for r in json_lines(out) if "rep" in r]
        if len(reps) != 1 + self.warmup:
            raise BenchError(f"expected {1 + self.warmup} JSON lines from {shlex.join(cmd)}, "
                             f"got {len(reps)}: {out[-800:]}")
        r = reps[-1]
        for key, want in (("batch", w["batch"]), ("prompt_tokens", w["prompt"]),
                          ("gen_tokens", w["gen"])):
            if r.get(key) != want:
                raise BenchError(f"ours reported {key}={r.get(key)}, asked for {want}")
        return float(r[SCENARIOS[scenario]["ours_metric"]]), r


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------

def summary(samples):
    if not samples:
        return None
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "n": len(samples)}


def lscpu():
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def git_commit():
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def peer_version(peer_dir):
    v = {}
    try:
        with open(os.path.join(peer_dir, "VERSION")) as f:
            for line in f:
                k, _, val = line.rstrip("\n").partition("=")
                v[k] = val
    except OSError:
        pass
    return v


def fmt(x):
    return "-" if x is None else f"{x:,.1f}"


def fmt_summary(s):
    if s is None:
        return "not measured"
    return f"**{fmt(s['median'])}** ({fmt(s['min'])} - {fmt(s['max'])})"


def targets(result):
    s = result["summary"]

    def med(side, sc):
        v = s[side].get(sc)
        return None if v is None else v["median"]

    rows = []
    for ours_sc, peer_sc, label, want in (
            ("prefill", "prefill", "prefill: ours >= 0.5 x llama.cpp", 0.5),
            ("decode1", "decode1", "batch-1 decode: ours >= 0.5 x llama.cpp", 0.5),
            ("decode8", "decode1",
             "batch-8 aggregate decode: ours >= 4 x llama.cpp batch-1 decode", 4.0)):
        o, p = med("ours", ours_sc), med("peer", peer_sc)
        ratio = None if o is None or p is None else o / p
        rows.append({"target": label, "want": want, "ours_tok_s": o,
                     "needed_tok_s": None if p is None else want * p, "ratio": ratio,
                     "status": "not measured" if ratio is None else
                     ("PASS" if ratio >= want else "FAIL")})
    return rows


def write_markdown(path, result):
    m, s = result["machine"], result["summary"]
    L = []
    L.append("# Benchmarks: kvserve vs llama.cpp")
    L.append("")
    L.append("Generated by `bench/bench_vs_llamacpp.py` from real runs; do not edit the numbers "
             "by hand. Rerun the command below to refresh this file.")
    L.append("")
    L.append("This page measures the engine (prefill and decode). Serving throughput and latency "
             "against llama.cpp's llama-server (8 concurrent requests of 1000 prompt / 128 output "
             "tokens) are in [BENCHMARKS_SERVING.md](BENCHMARKS_SERVING.md).")
    L.append("")
    L.append("## Setup")
    L.append("")
    L.append(f"- Date (UTC): {result['date_utc']}")
    L.append(f"- Machine: {m['cpu_model']}, {m['cpus']} logical CPUs "
             f"({m['cores_per_socket']} cores/socket x {m['sockets']} socket(s), "
             f"{m['threads_per_core']} thread(s)/core), {m['kernel']}; "
             f"load average before/after: {m['loadavg_before']} / {m['loadavg_after']}")
    b = m.get("other_cpu_during_runs")
    if b is not None:
        L.append(f"- CPU used by other processes during the kept runs (fraction of all CPUs): "
                 f"median {b['median']:.0%}, max {b['max']:.0%}. Each run first waited up "
                 f"to {result['max_wait']:.0f} s for the machine to be <= "
                 f"{result['max_busy']:.0%} busy, and a run disturbed by more than "
                 f"{result['max_interference']:.0%} was repeated (at most "
                 f"{result['max_attempts']} attempts)")
    L.append(f"- Threads used by both sides: {result['threads']}")
    L.append(f"- Model: `{os.path.basename(result['model'])}` (sha256 `{result['model_sha256']}`)")
    pv = result["peer_version"]
    L.append(f"- Peer: llama.cpp `{pv.get('llama_cpp_commit', 'unknown')}` as vendored in "
             f"llama-cpp-python {pv.get('llama_cpp_python_sdist', '?')} sdist, built by "
             f"`bench/build_llamacpp.sh` ({pv.get('compiler', '?')}; "
             f"{pv.get('cmake_flags', '?')}); flash attention `-fa {result['peer_flash_attn']}`")
    L.append(f"- Ours: kvserve git `{result['ours_commit']}`"
             + ("" if result["ours_measured"] else " (not measured in this run: --peer-only)"))
    L.append(f"- Repetitions: {result['repeat']} kept runs per side and scenario"
             + (", alternating ours/peer (the first side flips every round)"
                if result["ours_measured"] else "")
             + "; each run is a separate process, measured after a warm-up in that process")
    L.append("")
    L.append("Command:")
    L.append("")
    L.append("```sh")
    L.append(result["command"])
    L.append("```")
    L.append("")
    L.append("## Results (tokens/s: median (min - max))")
    L.append("")
    L.append("| scenario | llama.cpp | kvserve | ours/peer (medians) |")
    L.append("| --- | --- | --- | --- |")
    for sc, spec in SCENARIOS.items():
        p, o = s["peer"].get(sc), s["ours"].get(sc)
        ratio = "-" if p is None or o is None else f"{o['median'] / p['median']:.2f}x"
        L.append(f"| {spec['title']} | {fmt_summary(p)} | {fmt_summary(o)} | {ratio} |")
    L.append("")
    L.append("Peer commands (one measured run each):")
    L.append("")
    for sc, cmd in result["peer_commands"].items():
        L.append(f"- {sc}: `{cmd}`")
    if result["ours_commands"]:
        L.append("")
        L.append(f"Our commands (last of {1 + result['ours_warmup']} repetitions kept):")
        L.append("")
        for sc, cmd in result["ours_commands"].items():
            L.append(f"- {sc}: `{cmd}`")
    L.append("")
    L.append("## Targets")
    L.append("")
    L.append("| target | needed (tok/s, from peer medians) | ours (median tok/s) | ratio | status |")
    L.append("| --- | --- | --- | --- | --- |")
    for t in result["targets"]:
        r = "-" if t["ratio"] is None else f"{t['ratio']:.2f}x"
        L.append(f"| {t['target']} | {fmt(t['needed_tok_s'])} | {fmt(t['ours_tok_s'])} | {r} "
                 f"| {t['status']} |")
    L.append("")
    L.append("Notes: the machine is shared, so numbers move with background load (see load "
             "average above); medians over alternating runs are the comparison, min/max show "
             "the spread. llama-batched-bench's aggregate TG speed is 8 x 256 / (time of the "
             "256 batched decode steps), which is what ours reports as decode_tok_s for batch 8.")
    L.append("")
    with open(path, "w") as f:
        f.write("\n".join(L))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="measured runs per side (>= 5)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--peer-dir", default=DEFAULT_PEER_DIR)
    ap.add_argument("--peer-flash-attn", default="auto", choices=["auto", "on", "off"],
                    help="llama.cpp -fa setting (its default is auto)")
    ap.add_argument("--ours-bin", default=os.path.join(REPO, "build/server/kvserve"))
    ap.add_argument("--ours-warmup", type=int, default=1,
                    help="leading repetitions of ours to drop in each process")
    ap.add_argument("--peer-only", action="store_true", help="measure llama.cpp only")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per process")
    ap.add_argument("--max-busy", type=float, default=0.2,
                    help="before each run wait until the CPUs are at most this busy "
                         "(fraction over 1 s; 1 disables the wait)")
    ap.add_argument("--max-wait", type=float, default=180,
                    help="give up waiting for a quiet machine after this many seconds "
                         "and measure anyway")
    ap.add_argument("--max-interference", type=float, default=0.1,
                    help="a run during which other processes used more than this fraction "
                         "of all CPUs is measured again (up to --max-attempts); the kept "
                         "run's figure is recorded either way")
    ap.add_argument("--max-attempts", type=int, default=4)
    ap.add_argument("--json-out", help="write all samples and metadata here")
    ap.add_argument("--md-out", default=os.path.join(REPO, "docs/BENCHMARKS.md"))
    ap.add_argument("--no-md", action="store_true", help="do not write docs/BENCHMARKS.md")
    ap.add_argument("--from-json", metavar="FILE",
                    help="measure nothing: re-render --md-out from a saved --json-out file")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            result = json.load(f)
        result["targets"] = targets(result)
        write_markdown(args.md_out, result)
        print(f"wrote {args.md_out}", file=sys.stderr)
        return 0
    if args.repeat < 5:
        ap.error("--repeat must be at least 5")
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}; known: {', '.join(SCENARIOS)}")
    if not os.path.isfile(args.model):
        ap.error(f"model {args.model} not found (set --model or KVSERVE_MODEL)")
    args.model = os.path.abspath(args.model)

    try:
        peer = Peer(args)
        ours = None if args.peer_only else Ours(args)
    except BenchError as e:
        print(f"bench_vs_llamacpp: {e}", file=sys.stderr)
        return 2

    h = hashlib.sha256()
    with open(args.model, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)

    cpu = lscpu()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    samples = {"peer": {s: [] for s in scenarios}, "ours": {s: [] for s in scenarios}}
    details = {"peer": {s: [] for s in scenarios}, "ours": {s: [] for s in scenarios}}
    interference = []
    try:
        for rnd in range(args.repeat):
            for sc in scenarios:
                sides = [("peer", peer)] + ([("ours", ours)] if ours else [])
                if rnd % 2 == 1:
                    sides.reverse()
                for name, side in sides:
                    for attempt in range(1, args.max_attempts + 1):
                        busy = (wait_for_quiet(args.max_busy, args.max_wait)
                                if args.max_busy < 1.0 else None)
                        with InterferenceMeter() as meter:
                            tps, detail = side.measure(sc)
                        other = meter.fraction
                        note = "" if other is None else f"  (other processes: {other:.0%} of CPU)"
                        print(f"round {rnd + 1}/{args.repeat} {sc:8s} {name:4s} {tps:10.2f} "
                              f"tok/s{note}", file=sys.stderr, flush=True)
                        if other is None or other <= args.max_interference:
                            break
                        if attempt < args.max_attempts:
                            print("  ... disturbed, measuring again", file=sys.stderr, flush=True)
                    samples[name][sc].append(tps)
                    details[name][sc].append({"tok_s": tps, "attempts": attempt,
                                              "cpu_busy_before": busy,
                                              "other_cpu_during": other, "raw": detail})
                    if other is not None:
                        interference.append(other)
    except BenchError as e:
        print(f"bench_vs_llamacpp: {e}", file=sys.stderr)
        return 1

    cmd = ["python3", "bench/bench_vs_llamacpp.py", "--model", args.model,
           "--threads", str(args.threads), "--repeat", str(args.repeat)]
    if args.scenarios != ",".join(SCENARIOS):
        cmd += ["--scenarios", args.scenarios]
    if args.peer_flash_attn != "auto":
        cmd += ["--peer-flash-attn", args.peer_flash_attn]
    if args.peer_only:
        cmd.append("--peer-only")
    elif os.path.abspath(args.ours_bin) != os.path.join(REPO, "build/server/kvserve"):
        cmd += ["--ours-bin", os.path.relpath(os.path.abspath(args.ours_bin), REPO)]
    result = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": shlex.join(cmd),
        "model": args.model,
        "model_sha256": h.hexdigest(),
        "threads": args.threads,
        "repeat": args.repeat,
        "peer_flash_attn": args.peer_flash_attn,
        "ours_warmup": args.ours_warmup,
        "max_busy": args.max_busy,
        "max_wait": args.max_wait,
        "max_interference": args.max_interference,
        "max_attempts": args.max_attempts,
        "ours_measured": ours is not None,
        "ours_commit": git_commit(),
        "peer_version": peer_version(args.peer_dir),
        "machine": {
            "cpu_model": cpu.get("Model name", platform.processor() or "unknown"),
            "cpus": cpu.get("CPU(s)", str(os.cpu_count())),
            "cores_per_socket": cpu.get("Core(s) per socket", "?"),
            "sockets": cpu.get("Socket(s)", "?"),
            "threads_per_core": cpu.get("Thread(s) per core", "?"),
            "flags_avx512f": "avx512f" in cpu.get("Flags", "").split(),
            "kernel": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "other_cpu_during_runs": (None if not interference else
                                      {"median": statistics.median(interference),
                                       "max": max(interference)}),
        },
        "peer_commands": {k: shlex.join(v) for k, v in peer.commands.items()},
        "ours_commands": {k: shlex.join(v) for k, v in (ours.commands if ours else {}).items()},
        "samples_tok_s": samples,
        "details": details,
        "summary": {side: {sc: summary(v) for sc, v in samples[side].items()}
                    for side in samples},
    }
    result["targets"] = targets(result)

    print("\nscenario   llama.cpp median (min-max)        kvserve median (min-max)")
    for sc in scenarios:
        p, o = result["summary"]["peer"][sc], result["summary"]["ours"][sc]
        fp = "-" if p is None else f"{p['median']:9.1f} ({p['min']:.1f}-{p['max']:.1f})"
        fo = "-" if o is None else f"{o['median']:9.1f} ({o['min']:.1f}-{o['max']:.1f})"
        print(f"{sc:10s} {fp:32s} {fo}")
    for t in result["targets"]:
        r = "-" if t["ratio"] is None else f"{t['ratio']:.2f}x"
        print(f"target: {t['target']}: {r} {t['status']}")

    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    if not args.no_md:
        os.makedirs(os.path.dirname(args.md_out), exist_ok=True)
        write_markdown(args.md_out, result)
        print(f"wrote {args.md_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
