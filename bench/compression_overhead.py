#!/usr/bin/env python3
"""What KV compression costs per engine step, against `kvserve serve`.

Runs the same serving workload (--concurrent requests of a --prompt-tokens book excerpt,
--max-tokens greedy outputs each) under several compression settings, round-robin for
--rounds rounds on one server, and reads the engine's own counters from /metrics before
and after each run:
  forward ms/step   kvserve_step_duration_seconds (the forward pass, attention scoring
                    and on-the-fly dequantization included) per step
  policy ms/step    kvserve_kv_compression_seconds_total (policy decisions and moving
                    units between tiers, outside the forward pass) per step
  output tok/s      generated tokens over the run's wall time
Medians over rounds. "attention-guided@1" scores every block and runs the policy but has
nothing to compress: the pure bookkeeping cost.

Usage (repository root):
  python3 bench/compression_overhead.py [--rounds 3] [--markdown docs/compression_overhead.md]
"""
import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import haystack  # noqa: E402
from kvserve_eval.client import Client, http_json  # noqa: E402
from kvserve_eval.server import ServerLauncher  # noqa: E402
from kvserve_eval.util import command_line, git_commit, log  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = [("none", 1.0), ("attention-guided", 1.0), ("attention-guided", 0.25),
            ("attention-guided", 0.125), ("h2o", 0.25), ("quant-uniform", 0.25)]


def scrape(url):
    series = Client(url).metrics()
    names = ("kvserve_step_duration_seconds_sum", "kvserve_step_duration_seconds_count",
             "kvserve_kv_compression_seconds_total", "kvserve_generation_tokens_total")
    return {name: series.get(name, 0.0) for name in names}


def run_setting(url, prompts, policy, ratio, max_tokens):
    body = {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    if policy != "none":
        body["kv_compression"] = {"policy": policy, "ratio": ratio}
    before = scrape(url)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as ex:
        results = list(ex.map(lambda p: http_json(url + "/v1/completions",
                                                  dict(body, prompt=p), timeout=600), prompts))
    wall = time.monotonic() - t0
    after = scrape(url)
    for status, resp in results:
        if status != 200:
            raise RuntimeError(f"{policy}@{ratio}: HTTP {status}: {resp}")
    d = {k: after[k] - before[k] for k in after}
    steps = d["kvserve_step_duration_seconds_count"]
    ratios = [r["usage"]["kv_compression_ratio"] for _, r in results]
    return {"policy": policy, "ratio": ratio, "wall_s": wall, "steps": steps,
            "forward_ms_per_step": 1e3 * d["kvserve_step_duration_seconds_sum"] / steps,
            "policy_ms_per_step": 1e3 * d["kvserve_kv_compression_seconds_total"] / steps,
            "output_tok_s": d["kvserve_generation_tokens_total"] / wall,
            "kv_ratio": statistics.mean(ratios)}


def markdown(rows, args):
    by = {}
    for r in rows:
        by.setdefault((r["policy"], r["ratio"]), []).append(r)
    base = statistics.median(r["forward_ms_per_step"] + r["policy_ms_per_step"]
                             for r in by[("none", 1.0)])
    out = ["# KV compression overhead per engine step", "",
           f"Command: `{args.command}`  ", f"Commit: {args.commit}  ",
           f"Workload: {args.concurrent} concurrent requests of {args.prompt_tokens} prompt tokens "
           f"(Gutenberg prose) and {args.max_tokens} greedy output tokens, {args.threads} threads; "
           f"medians of {args.rounds} rounds, settings interleaved.", "",
           "| setting | achieved KV ratio | steps | forward ms/step | policy ms/step | "
           "total vs none | output tok/s |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (policy, ratio), rs in by.items():
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        total = med("forward_ms_per_step") + med("policy_ms_per_step")
        out.append(f"| {policy}@{ratio:g} | {med('kv_ratio'):.3f} | {med('steps'):.0f} | "
                   f"{med('forward_ms_per_step'):.2f} | {med('policy_ms_per_step'):.3f} | "
                   f"{100 * (total / base - 1):+.1f}% | {med('output_tok_s'):.1f} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrent", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=2000)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "server", "kvserve"))
    ap.add_argument("--model", default=os.path.expanduser(
        "~/.cache/kvserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results",
                                                  "compression_overhead.json"))
    ap.add_argument("--markdown", default=os.path.join(ROOT, "docs", "compression_overhead.md"))
    args = ap.parse_args()
    args.command, args.commit = command_line(), git_commit()
    tok = haystack.load_tokenizer(args.model)
    # Distinct excerpts (the passkey generator's haystack at different seeds).
    prompts = [haystack.make_passkey_prompt(args.prompt_tokens, 0.5, seed=100 + i,
                                            tokenizer=tok).prompt
               for i in range(args.concurrent)]
    server = ServerLauncher(args.bin, args.model, args.threads,
                            ["--kv-cache-bytes", "2GiB", "--log-level", "warn"],
                            startup_timeout=120, name="kvserve-overhead")
    url = server.start()
    rows = []
    try:
        run_setting(url, prompts[:1], "none", 1.0, 8)  # warm-up
        for rnd in range(args.rounds):
            for policy, ratio in SETTINGS:
                row = run_setting(url, prompts, policy, ratio, args.max_tokens)
                row["round"] = rnd
                rows.append(row)
                log(f"round {rnd} {policy}@{ratio:g}: forward {row['forward_ms_per_step']:.2f} "
                    f"ms/step, policy {row['policy_ms_per_step']:.3f} ms/step, "
                    f"{row['output_tok_s']:.1f} tok/s, kv ratio {row['kv_ratio']:.3f}")
    finally:
        server.stop()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"command": args.command, "commit": args.commit, "rows": rows}, f, indent=1)
    with open(args.markdown, "w") as f:
        f.write(markdown(rows, args))
    log(f"wrote {args.out} and {args.markdown}")


if __name__ == "__main__":
    main()
