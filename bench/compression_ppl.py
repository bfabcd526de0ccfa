#!/usr/bin/env python3
"""WikiText-2 perplexity under KV-cache compression, with `kvserve perplexity`.

Runs the perplexity command once for policy none (no --kv-policy flag, so it also runs
on a build without compression) and once per other policy x target ratio with
--kv-policy P --kv-ratio R, all with the same --ctx / --max-tokens / --batch. From each
run's stdout it reads

  perplexity: 17.6447 (tokens scored: 4095, chunks: 1, ctx: 4096, 8.6 s, 474.8 tok/s)
  kv: policy h2o, target ratio 0.25, achieved ratio 0.2503, bytes B of U

(the kv line is optional: a run without it has no achieved ratio). Writes every run to
--out (JSON) and a table (policy, target ratio, achieved ratio, perplexity, change vs
none) to --markdown with the command at the top. --from-json rewrites the markdown from
an earlier --out without running anything.

Usage (repository root):
  python3 bench/compression_ppl.py [--policies none,h2o] [--ratios 0.5,0.25]
      [--ctx 4096] [--max-tokens 4096] [--batch 64] [--bin build/server/kvserve]
      [--out bench/results/compression_ppl.json] [--markdown docs/compression_ppl.md]
"""

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from passkey import (POLICIES, RATIOS, REPO, command_line, csv_list, git_commit,  # noqa: E402
                     log, settings, write_file)

DEFAULT_BIN = os.path.join(REPO, "build", "server", "kvserve")
DEFAULT_MODEL = os.environ.get(
    "KVSERVE_MODEL",
    os.path.join(os.path.expanduser("~"), ".cache/kvserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
DEFAULT_FILE = os.path.join(os.path.dirname(REPO), "shared", "data", "wikitext-2-raw",
                            "wiki.test.raw")

_PPL = re.compile(r"^perplexity: ([0-9.eE+-]+|nan|inf) \(tokens scored: (\d+), chunks: (\d+), "
                  r"ctx: (\d+), ([0-9.]+) s, ([0-9.]+) tok/s\)", re.M)
_KV = re.compile(r"^kv: policy (\S+), target ratio ([0-9.eE+-]+), achieved ratio "
                 r"([0-9.eE+-]+|nan), bytes (\d+) of (\d+)", re.M)


def parse_output(text):
    """The fields of the perplexity and kv lines of one run's stdout ({} if absent)."""
    out = {}
    m = _PPL.search(text)
    if m:
        out.update(perplexity=float(m.group(1)), tokens_scored=int(m.group(2)),
                   chunks=int(m.group(3)), ctx=int(m.group(4)), seconds=float(m.group(5)),
                   tok_per_s=float(m.group(6)))
    m = _KV.search(text)
    if m:
        out.update(kv_policy=m.group(1), kv_target_ratio=float(m.group(2)),
                   achieved_ratio=float(m.group(3)), kv_bytes=int(m.group(4)),
                   kv_bytes_uncompressed=int(m.group(5)))
    return out


def run_one(args, policy, ratio):
    cmd = [args.bin, "perplexity", "--model", args.model, "--threads", str(args.threads),
           "--file", args.file, "--ctx", str(args.ctx), "--max-tokens", str(args.max_tokens),
           "--batch", str(args.batch)]
    if policy != "none":
        cmd += ["--kv-policy", policy, "--kv-ratio", f"{ratio:g}"]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        rc, stdout, stderr = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout, stderr = None, e.stdout or "", f"timed out after {args.timeout}s"
        stdout = stdout.decode(errors="replace") if isinstance(stdout, bytes) else stdout
    row = {"policy": policy, "ratio": ratio, "command": shlex.join(cmd), "exit_code": rc,
           "wall_s": round(time.monotonic() - t0, 2)}
    row.update(parse_output(stdout))
    if rc != 0 or "perplexity" not in row:
        row["error"] = (f"exit {rc}: " + (stderr.strip() or stdout.strip())[-500:])
    return row


def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def markdown(data):
    meta, rows = data["meta"], data["runs"]
    base = next((r.get("perplexity") for r in rows
                 if r["policy"] == "none" and not r.get("error")), None)
    out = ["# Perplexity under KV-cache compression", "",
           "Command (repository root):", "", "```", meta["command"], "```", "",
           f"Generated {meta['date']} at commit {meta['commit']}; model "
           f"`{os.path.basename(meta['model'])}`; text `{meta['file_rel']}` (first "
           f"{meta['max_tokens']} tokens), chunks of {meta['ctx']} tokens, {meta['batch']} "
           f"tokens per forward pass, {meta['threads']} threads.", "",
           "Achieved ratio: the final KV bytes of a chunk over its uncompressed KV bytes, as "
           "`kvserve perplexity` reports it (n/a where it printed no kv line). Change: "
           "perplexity relative to policy none.", "",
           "| policy | target ratio | achieved ratio | perplexity | change vs none | "
           "tokens scored | time (s) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("error"):
            out.append(f"| {r['policy']} | {r['ratio']:g} | - | error | - | - | - |")
            continue
        ppl = r["perplexity"]
        delta = "n/a" if base is None else f"{100.0 * (ppl - base) / base:+.2f}%"
        out.append(f"| {r['policy']} | {r['ratio']:g} | {fmt(r.get('achieved_ratio'), '.4f')} "
                   f"| {ppl:.4f} | {delta} | {r['tokens_scored']} | {r['seconds']:.1f} |")
    errors = [r for r in rows if r.get("error")]
    if errors:
        out += ["", f"Failed runs ({len(errors)}); first: `{errors[0]['policy']} "
                f"{errors[0]['ratio']:g}`: `{errors[0]['error'][:300]}`"]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", type=csv_list(str, POLICIES), default=list(POLICIES))
    ap.add_argument("--ratios", type=csv_list(float), default=list(RATIOS),
                    help="target ratios of the policies other than none")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", default=DEFAULT_BIN, help="kvserve binary")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--file", default=DEFAULT_FILE, help="text to score")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results",
                                                  "compression_ppl.json"))
    ap.add_argument("--markdown", default=os.path.join(REPO, "docs", "compression_ppl.md"))
    ap.add_argument("--no-md", action="store_true", help="do not write --markdown")
    ap.add_argument("--from-json", help="only rewrite --markdown from this results file")
    args = ap.parse_args()

    if args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
        write_file(args.markdown, markdown(data))
        log(f"wrote {args.markdown}")
        return 0

    combos = settings(args.policies, args.ratios)
    rows = []
    for i, (policy, ratio) in enumerate(combos, 1):
        r = run_one(args, policy, ratio)
        rows.append(r)
        if r.get("error"):
            log(f"[{i}/{len(combos)}] {policy} {ratio:g}: ERROR {r['error']}")
        else:
            log(f"[{i}/{len(combos)}] {policy} {ratio:g}: perplexity {r['perplexity']:.4f}, "
                f"achieved ratio {fmt(r.get('achieved_ratio'), '.4f')}, {r['wall_s']:.1f}s")
    file_rel = os.path.relpath(args.file, REPO)
    data = {"meta": {"command": command_line(), "date": datetime.datetime.now().isoformat(
                         timespec="seconds"), "commit": git_commit(), "model": args.model,
                     "bin": args.bin, "file": args.file, "file_rel": file_rel,
                     "ctx": args.ctx, "max_tokens": args.max_tokens, "batch": args.batch,
                     "threads": args.threads},
            "runs": rows}
    write_file(args.out, json.dumps(data, indent=1) + "\n")
    log(f"wrote {args.out}")
    if not args.no_md:
        write_file(args.markdown, markdown(data))
        log(f"wrote {args.markdown}")
    return 1 if all(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
