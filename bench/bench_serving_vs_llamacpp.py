#!/usr/bin/env python3
"""Serving benchmark: `kvserve serve` against llama.cpp's llama-server under the same load.

The issue's scenario: 8 concurrent streaming /v1/completions requests, each with a
1000-token prompt (Project Gutenberg text, ../shared/data/gutenberg) and 128 output
tokens (ignore_eos, greedy), repeated for --rounds rounds. Both servers use the same
GGUF and --threads; llama-server runs with --parallel = concurrency, continuous
batching, -c = parallel * 1200 (so every slot holds prompt + output); kvserve runs with
--max-running = concurrency and a KV pool of the same size as llama-server's cache.

Each round starts each server afresh (so no prompt cache survives between rounds), waits
until it is ready, sends one unmeasured warm-up request, then the round's requests through
bench/load_generator.py, and stops it. The two sides alternate, the first side flipping
every round, and both get the same prompts in a round (different prompts in each round).
Before each measured run the script waits for the CPUs to be quiet (other processes), and
a run during which other processes used more than --max-interference of the CPUs is
repeated (up to --max-attempts).

Prompts of exactly --prompt-tokens tokens are cut with llama-server's /tokenize and
/detokenize on the same GGUF (both sides then report prompt_tokens in usage, shown below).

Reported per side: medians over rounds of output tokens/s (all output tokens of the round
/ wall time from the first request sent to the last one finished), requests/s, and the
p50/p90/p99 of TTFT, TPOT and end-to-end latency; the ratio of output throughputs
(target: ours >= llama.cpp). Writes docs/BENCHMARKS_SERVING.md (unless --no-md).

Usage (repository root):
  python3 bench/bench_serving_vs_llamacpp.py [--rounds 5] [--concurrency 8]
      [--prompt-tokens 1000] [--output-tokens 128] [--ours-bin build/server/kvserve]
      [--peer-only] [--json-out FILE] [--from-json FILE]
"""

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load_generator as lg  # noqa: E402
from bench_vs_llamacpp import (_cpu_jiffies, git_commit, lscpu, peer_version,  # noqa: E402
                               wait_for_quiet)

REPO = lg.REPO
DEFAULT_MODEL = os.environ.get(
    "KVSERVE_MODEL",
    os.path.join(os.path.expanduser("~"), ".cache/kvserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
DEFAULT_PEER_DIR = os.environ.get(
    "KVSERVE_PEER_DIR", os.path.join(os.path.expanduser("~"), ".cache/kvserve/peer"))
# f16 K and V of one token in SmolLM2-135M: 30 layers x 2 x (3 KV heads x 64) x 2 bytes.
DEFAULT_KV_BYTES_PER_TOKEN = 30 * 2 * 192 * 2
CTX_PER_SLOT = 1200


class BenchError(RuntimeError):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


class Server:
    """One server process: started, probed until ready, stopped; logs in a temp file."""

    def __init__(self, name, cmd_fn, ready_path, startup_timeout):
        self.name, self.cmd_fn, self.ready_path = name, cmd_fn, ready_path
        self.startup_timeout = startup_timeout
        self.proc, self.log, self.port, self.cmd = None, None, None, None

    def start(self):
        self.port = free_port()
        self.cmd = self.cmd_fn(self.port)
        self.log = tempfile.TemporaryFile(mode="w+")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        except OSError as e:
            raise BenchError(f"cannot start {self.name}: {e}") from e
        deadline = time.monotonic() + self.startup_timeout
        while http_status(self.base_url + self.ready_path) != 200:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} while starting:"
                                 f" {shlex.join(self.cmd)}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"{self.name} not ready after {self.startup_timeout}s\n"
                                 + self.log_tail())
            time.sleep(0.2)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n=3000):
        if self.log is None:
            return ""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-n:]

    def cpu_seconds(self):
        """user + system CPU time of the server process (all its threads)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Interference:
    """CPU used by processes other than the server and this script, as a fraction of
    wall time x CPUs."""

    def __init__(self, server):
        self.server, self.fraction = server, None

    def __enter__(self):
        try:
            self.j0 = _cpu_jiffies()
        except (OSError, ValueError, IndexError):
            self.j0 = None
        self.s0 = self.server.cpu_seconds()
        r = resource.getrusage(resource.RUSAGE_SELF)
        self.self0 = r.ru_utime + r.ru_stime
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        wall = time.monotonic() - self.t0
        s1 = self.server.cpu_seconds()
        if self.j0 is None or self.s0 is None or s1 is None or wall <= 0:
            return False
        t1, i1 = _cpu_jiffies()
        r = resource.getrusage(resource.RUSAGE_SELF)
        busy = ((t1 - self.j0[0]) - (i1 - self.j0[1])) / os.sysconf("SC_CLK_TCK")
        own = (s1 - self.s0) + (r.ru_utime + r.ru_stime - self.self0)
        self.fraction = max(0.0, busy - own) / (wall * (os.cpu_count() or 1))
        return False


def ours_server(args):
    kv_bytes = args.concurrency * CTX_PER_SLOT * args.kv_bytes_per_token
    kv_mib = math.ceil(kv_bytes / (1 << 20))

    def cmd(port):
        return [args.ours_bin, "serve", "--model", args.model, "--host", "127.0.0.1",
                "--port", str(port), "--grpc-port", str(free_port()),
                "--threads", str(args.threads), "--max-running", str(args.concurrency),
                "--kv-cache-bytes", f"{kv_mib}MiB"] + shlex.split(args.ours_flags)
    return Server("kvserve", cmd, "/ready", args.startup_timeout)


def peer_server(args):
    bin_ = os.path.join(args.peer_dir, "bin", "llama-server")

    def cmd(port):
        return [bin_, "-m", args.model, "--host", "127.0.0.1", "--port", str(port),
                "-t", str(args.threads), "-tb", str(args.threads),
                "--parallel", str(args.concurrency), "-c", str(args.concurrency * CTX_PER_SLOT),
                "--cont-batching"] + shlex.split(args.peer_flags)
    return Server("llama-server", cmd, "/health", args.startup_timeout)


def build_prompts(args, n):
    """n prompts of exactly args.prompt_tokens tokens, cut with llama-server's tokenizer."""
    bin_ = os.path.join(args.peer_dir, "bin", "llama-server")
    tok = Server("llama-server (tokenizer)",
                 lambda port: [bin_, "-m", args.model, "--host", "127.0.0.1", "--port", str(port),
                               "-t", str(args.threads), "-c", "2048", "--parallel", "1"],
                 "/health", args.startup_timeout)
    tok.start()
    try:
        prompts = lg.build_prompts(n, args.prompt_tokens, args.output_tokens, "gutenberg",
                                   args.data_dir, tok.base_url, args.seed)
    finally:
        tok.stop()
    bad = [p["prompt_tokens"] for p in prompts if p["prompt_tokens"] != args.prompt_tokens]
    if bad:
        print(f"note: {len(bad)} prompts could not be cut to exactly {args.prompt_tokens} "
              f"tokens: {bad}", file=sys.stderr)
    return prompts


def measure(server, prompts, warmup, args):
    """Starts the server, warms it up, runs the load; returns (summary, interference)."""
    server.start()
    try:
        w = lg.run_load(server.base_url, [warmup], concurrency=1, timeout=args.timeout)
        if w["failed"]:
            raise BenchError(f"{server.name} warm-up failed: {w['errors']}\n{server.log_tail()}")
        with Interference(server) as meter:
            s = lg.run_load(server.base_url, prompts, concurrency=args.concurrency,
                            timeout=args.timeout)
        if s["failed"]:
            raise BenchError(f"{server.name}: {s['failed']} requests failed: {s['errors']}\n"
                             + server.log_tail())
        return s, meter.fraction
    finally:
        server.stop()


METRICS = [  # (key, label, unit, higher is better)
    ("output_throughput_tok_s", "output throughput", "tok/s", True),
    ("request_throughput", "request throughput", "req/s", True),
    ("ttft_ms.p50", "TTFT p50", "ms", False), ("ttft_ms.p90", "TTFT p90", "ms", False),
    ("ttft_ms.p99", "TTFT p99", "ms", False),
    ("tpot_ms.p50", "TPOT p50", "ms", False), ("tpot_ms.p90", "TPOT p90", "ms", False),
    ("tpot_ms.p99", "TPOT p99", "ms", False),
    ("e2e_ms.p50", "e2e latency p50", "ms", False), ("e2e_ms.p90", "e2e latency p90", "ms", False),
    ("e2e_ms.p99", "e2e latency p99", "ms", False),
]


def metric(run, key):
    v = run
    for k in key.split("."):
        v = None if v is None else v.get(k)
    return v


def medians(runs):
    out = {}
    for key, *_ in METRICS + [("mean_prompt_tokens",), ("mean_output_tokens",)]:
        xs = [metric(r, key) for r in runs]
        xs = [x for x in xs if x is not None]
        out[key] = None if not xs else {"median": statistics.median(xs), "min": min(xs),
                                        "max": max(xs), "n": len(xs)}
    return out


def slim(summary, other):
    """What is kept of one measured run."""
    ok = [r for r in summary["requests"] if r and r["ok"]]
    keep = {k: summary[k] for k in ("completed", "failed", "duration_s", "total_output_tokens",
                                    "total_prompt_tokens", "cached_prompt_tokens",
                                    "short_outputs", "request_throughput",
                                    "output_throughput_tok_s", "ttft_ms", "tpot_ms", "e2e_ms")}
    keep["mean_prompt_tokens"] = statistics.fmean(r["prompt_tokens"] or 0 for r in ok)
    keep["mean_output_tokens"] = statistics.fmean(r["output_tokens"] for r in ok)
    keep["other_cpu"] = other
    return keep


def f1(x, unit=""):
    if x is None:
        return "-"
    return f"{x:,.1f}" if unit != "req/s" else f"{x:.3f}"


def write_markdown(path, res):
    m, s = res["machine"], res["summary"]
    L = ["# Serving benchmark: kvserve vs llama.cpp llama-server", "",
         "Generated by `bench/bench_serving_vs_llamacpp.py` from real runs; do not edit the "
         "numbers by hand. Rerun the command below to refresh this file.", "",
         "## Setup", "",
         f"- Date (UTC): {res['date_utc']}",
         f"- Machine: {m['cpu_model']}, {m['cpus']} logical CPUs, {m['kernel']}; load average "
         f"before/after: {m['loadavg_before']} / {m['loadavg_after']}"]
    o = m.get("other_cpu_during_runs")
    if o is not None:
        L.append(f"- CPU used by other processes during the kept runs (fraction of all CPUs): "
                 f"median {o['median']:.0%}, max {o['max']:.0%}. Each run first waited up to "
                 f"{res['max_wait']:.0f} s for the machine to be <= {res['max_busy']:.0%} busy; "
                 f"a run disturbed by more than {res['max_interference']:.0%} was repeated (at "
                 f"most {res['max_attempts']} attempts; a run still disturbed at the last "
                 f"attempt is kept, and the last table shows its share)")
    pv = res["peer_version"]
    L += [f"- Model: `{os.path.basename(res['model'])}` (sha256 `{res['model_sha256']}`), "
          f"threads: {res['threads']} on both sides",
          f"- Peer: llama.cpp `{pv.get('llama_cpp_commit', 'unknown')}` (llama-cpp-python "
          f"{pv.get('llama_cpp_python_sdist', '?')} sdist, `bench/build_llamacpp.sh`)",
          f"- Ours: kvserve git `{res['ours_commit']}`"
          + ("" if res["ours_measured"] else " (not measured in this run: --peer-only)"),
          f"- Workload: {res['requests_per_round']} streaming `/v1/completions` requests per "
          f"round at concurrency {res['concurrency']} (closed loop), prompts of "
          f"{res['prompt_tokens']} tokens of Project Gutenberg text (different in every round, "
          f"the same for both sides within a round), {res['output_tokens']} output tokens each "
          f"(`ignore_eos`, temperature 0); {res['rounds']} rounds, each server started afresh "
          f"for every round and warmed up with one unmeasured request; sides alternate and the "
          f"first side flips every round",
          "- Output throughput = all output tokens of a round / wall time from the first request "
          "sent to the last one finished; TTFT = send to first streamed text; TPOT = (e2e - "
          "TTFT) / (output tokens - 1); percentiles are over the requests of a round, and the "
          "tables show the median (min - max) of the per-round figures", "",
          "Command:", "", "```sh", res["command"], "```", "",
          "Server commands (port numbers vary):", ""]
    for side, cmd in res["server_commands"].items():
        L.append(f"- {side}: `{cmd}`")
    L += ["", "## Results (median over rounds (min - max))", "",
          "| metric | llama.cpp | kvserve | ours/peer (medians) |", "| --- | --- | --- | --- |"]
    for key, label, unit, _ in METRICS:
        p, q = s["peer"].get(key), s["ours"].get(key)
        cell = lambda d: ("not measured" if d is None else  # noqa: E731
                          f"**{f1(d['median'], unit)}** ({f1(d['min'], unit)} - "
                          f"{f1(d['max'], unit)})")
        ratio = ("-" if p is None or q is None or not p["median"] else
                 f"{q['median'] / p['median']:.2f}x")
        L.append(f"| {label} ({unit}) | {cell(p)} | {cell(q)} | {ratio} |")
    for key, label in (("mean_prompt_tokens", "prompt tokens per request (usage)"),
                       ("mean_output_tokens", "output tokens per request (usage)")):
        p, q = s["peer"].get(key), s["ours"].get(key)
        L.append(f"| {label} | {f1(p and p['median'])} | {f1(q and q['median'])} | |")
    L += ["", "## Target", ""]
    t = res["target"]
    L.append(f"Output-token throughput, ours >= llama.cpp: ours {f1(t['ours'])} tok/s, "
             f"llama.cpp {f1(t['peer'])} tok/s, ratio "
             f"{'-' if t['ratio'] is None else format(t['ratio'], '.2f') + 'x'}: "
             f"**{t['status']}**")
    L += ["", "## Every round", "",
          "| round | side | output tok/s | TTFT p50 (ms) | TPOT p50 (ms) | e2e p99 (ms) | "
          "other CPU | attempts |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["runs"]:
        oc = "-" if r["other_cpu"] is None else f"{r['other_cpu']:.0%}"
        L.append(f"| {r['round']} | {r['side']} | {f1(r['output_throughput_tok_s'])} | "
                 f"{f1(metric(r, 'ttft_ms.p50'))} | {f1(metric(r, 'tpot_ms.p50'))} | "
                 f"{f1(metric(r, 'e2e_ms.p99'))} | {oc} | {r['attempts']} |")
    L.append("")
    with open(path, "w") as f:
        f.write("\n".join(L))


def target(summary):
    p = (summary["peer"].get("output_throughput_tok_s") or {}).get("median")
    o = (summary["ours"].get("output_throughput_tok_s") or {}).get("median")
    ratio = None if p is None or o is None else o / p
    return {"ours": o, "peer": p, "ratio": ratio,
            "status": "not measured" if ratio is None else ("PASS" if ratio >= 1.0 else "FAIL")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests-per-round", type=int,
                    help="requests per measured round (default: --concurrency)")
    ap.add_argument("--prompt-tokens", type=int, default=1000)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=lg.DEFAULT_DATA_DIR)
    ap.add_argument("--peer-dir", default=DEFAULT_PEER_DIR)
    ap.add_argument("--peer-flags", default="", help="extra llama-server flags")
    ap.add_argument("--ours-bin", default=os.path.join(REPO, "build/server/kvserve"))
    ap.add_argument("--ours-flags", default="", help="extra kvserve serve flags")
    ap.add_argument("--kv-bytes-per-token", type=int, default=DEFAULT_KV_BYTES_PER_TOKEN,
                    help="sizes our KV pool like llama-server's cache (default: SmolLM2-135M)")
    ap.add_argument("--peer-only", action="store_true")
    ap.add_argument("--startup-timeout", type=float, default=120)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per request")
    ap.add_argument("--max-busy", type=float, default=0.2)
    ap.add_argument("--max-wait", type=float, default=180)
    ap.add_argument("--max-interference", type=float, default=0.1)
    ap.add_argument("--max-attempts", type=int, default=3)
    ap.add_argument("--json-out")
    ap.add_argument("--md-out", default=os.path.join(REPO, "docs/BENCHMARKS_SERVING.md"))
    ap.add_argument("--no-md", action="store_true")
    ap.add_argument("--from-json", metavar="FILE", help="measure nothing: re-render --md-out")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            res = json.load(f)
        write_markdown(args.md_out, res)
        print(f"wrote {args.md_out}", file=sys.stderr)
        return 0
    args.requests_per_round = args.requests_per_round or args.concurrency
    if not os.path.isfile(args.model):
        ap.error(f"model {args.model} not found")
    args.model = os.path.abspath(args.model)
    if not os.access(os.path.join(args.peer_dir, "bin", "llama-server"), os.X_OK):
        ap.error(f"no llama-server in {args.peer_dir}/bin; run bench/build_llamacpp.sh")
    if not args.peer_only and not os.access(args.ours_bin, os.X_OK):
        ap.error(f"{args.ours_bin} is not executable; build it or pass --peer-only")

    h = hashlib.sha256()
    with open(args.model, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    sides = {"peer": peer_server(args)}
    if not args.peer_only:
        sides["ours"] = ours_server(args)
    runs, interference = [], []
    try:
        n = args.rounds * args.requests_per_round
        print(f"building {n + 1} prompts of {args.prompt_tokens} tokens", file=sys.stderr)
        prompts = build_prompts(args, n + 1)
        warmup = dict(prompts[0], max_tokens=8)
        for rnd in range(args.rounds):
            batch = prompts[1 + rnd * args.requests_per_round:
                            1 + (rnd + 1) * args.requests_per_round]
            order = list(sides)
            if rnd % 2 == 1:
                order.reverse()
            for name in order:
                for attempt in range(1, args.max_attempts + 1):
                    if args.max_busy < 1.0:
                        wait_for_quiet(args.max_busy, args.max_wait)
                    s, other = measure(sides[name], batch, warmup, args)
                    oc = "" if other is None else f" (other processes: {other:.0%} of CPU)"
                    print(f"round {rnd + 1}/{args.rounds} {name:4s} "
                          f"{s['output_throughput_tok_s']:8.1f} output tok/s, TTFT p50 "
                          f"{s['ttft_ms']['p50']:8.1f} ms, TPOT p50 {s['tpot_ms']['p50']:6.1f} "
                          f"ms{oc}", file=sys.stderr, flush=True)
                    if other is None or other <= args.max_interference:
                        break
                    if attempt < args.max_attempts:
                        print("  ... disturbed, measuring again", file=sys.stderr, flush=True)
                run = slim(s, other)
                run.update({"round": rnd + 1, "side": name, "attempts": attempt})
                runs.append(run)
                if other is not None:
                    interference.append(other)
    except (BenchError, lg.LoadError) as e:
        print(f"bench_serving_vs_llamacpp: {e}", file=sys.stderr)
        return 1
    finally:
        for srv in sides.values():
            srv.stop()

    cmd = ["python3", "bench/bench_serving_vs_llamacpp.py", "--rounds", str(args.rounds),
           "--concurrency", str(args.concurrency), "--prompt-tokens", str(args.prompt_tokens),
           "--output-tokens", str(args.output_tokens), "--threads", str(args.threads)]
    if args.requests_per_round != args.concurrency:
        cmd += ["--requests-per-round", str(args.requests_per_round)]
    if args.peer_only:
        cmd.append("--peer-only")
    elif os.path.abspath(args.ours_bin) != os.path.join(REPO, "build/server/kvserve"):
        cmd += ["--ours-bin", os.path.relpath(os.path.abspath(args.ours_bin), REPO)]
    for flag in ("ours_flags", "peer_flags"):
        if getattr(args, flag):
            cmd += ["--" + flag.replace("_", "-"), getattr(args, flag)]
    cpu = lscpu()
    summary = {side: medians([r for r in runs if r["side"] == side])
               for side in ("peer", "ours")}
    res = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": shlex.join(cmd), "model": args.model, "model_sha256": h.hexdigest(),
        "threads": args.threads, "concurrency": args.concurrency,
        "requests_per_round": args.requests_per_round, "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens, "rounds": args.rounds,
        "max_busy": args.max_busy, "max_wait": args.max_wait,
        "max_interference": args.max_interference, "max_attempts": args.max_attempts,
        "ours_measured": not args.peer_only, "ours_commit": git_commit(),
        "peer_version": peer_version(args.peer_dir),
        "server_commands": {s.name: shlex.join(s.cmd) for s in sides.values() if s.cmd},
        "machine": {
            "cpu_model": cpu.get("Model name", platform.processor() or "unknown"),
            "cpus": cpu.get("CPU(s)", str(os.cpu_count())), "kernel": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "other_cpu_during_runs": (None if not interference else
                                      {"median": statistics.median(interference),
                                       "max": max(interference)}),
        },
        "runs": runs, "summary": summary,
    }
    res["target"] = target(summary)
    t = res["target"]
    print(f"\noutput tok/s median: llama.cpp {f1(t['peer'])}, kvserve {f1(t['ours'])}, "
          f"ratio {'-' if t['ratio'] is None else format(t['ratio'], '.2f')}: {t['status']}",
          file=sys.stderr)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    if not args.no_md:
        write_markdown(args.md_out, res)
        print(f"wrote {args.md_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
