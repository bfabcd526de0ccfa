#!/usr/bin/env python3
"""Passkey retrieval under KV-cache compression, against `kvserve serve`.

For every prompt length x needle depth (x --samples seeds) it builds one passkey prompt
with bench/haystack.py (Gutenberg prose, the needle "The pass key is N. ..." at the
depth, exact length in model tokens) and sends it to /v1/completions once per
compression setting: policy none once (target ratio 1, no kv_compression field), and
every other policy at every ratio with "kv_compression": {"policy": P, "ratio": R}.
Every setting sees the same prompts. Decoding is greedy (temperature 0, max_tokens 8);
a request is correct when its completion, leading white space stripped, starts with the
5 digits. --concurrency requests are in flight at a time.

A prompt of the model's whole context leaves no room for the answer, so a length is
capped at context - max_tokens (8192 becomes 8184 with SmolLM2's 8192); the tables
keep the nominal length and the JSON has both.

Writes every request's result to --out (JSON) and the summary tables (accuracy per
policy x ratio x length and per depth, mean achieved KV ratio from the response's
usage.kv_compression_ratio, mean wall time per request) to --markdown, with the
command at the top. --from-json rewrites the markdown from an earlier --out.

Usage (repository root; starts its own server unless --url is given):
  python3 bench/passkey.py [--policies none,h2o] [--ratios 0.5,0.25] [--lengths 2048]
      [--depths 0.1,0.5] [--samples 1] [--concurrency 2] [--url http://127.0.0.1:8080]
      [--out bench/results/passkey.json] [--markdown docs/compression_passkey.md]
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import shlex
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import haystack  # noqa: E402
from kvserve_eval import sweep  # noqa: E402
from kvserve_eval.client import Client  # noqa: E402
from kvserve_eval.server import ServerLauncher  # noqa: E402
from kvserve_eval.util import command_line, csv_list, git_commit, log  # noqa: E402

REPO = haystack.REPO
POLICIES = sweep.POLICIES
RATIOS = (0.5, 0.25, 0.125)
LENGTHS = (2048, 4096, 8192)
DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
DEFAULT_BIN = os.path.join(REPO, "build", "server", "kvserve")


def settings(policies, ratios):
    """[(policy, target ratio)]: none once at ratio 1, the others at every ratio."""
    return [(s.policy, s.ratio) for s in sweep.settings(policies, ratios)]


# --- requests ---------------------------------------------------------------------------

def run_one(client, job, max_tokens):
    kv = None if job["policy"] == "none" else {"policy": job["policy"], "ratio": job["ratio"]}
    resp = client.complete(job["prompt"], max_tokens=max_tokens, kv_compression=kv)
    row = {k: v for k, v in job.items() if k != "prompt"}
    row["wall_s"] = round(resp.wall_s, 3)
    if not resp.ok:
        row.update(error=resp.error[:500], correct=False, completion=None)
        return row
    usage = resp.usage
    row.update(
        error=None, completion=resp.text, correct=resp.text.lstrip().startswith(job["key"]),
        finish_reason=resp["choices"][0].get("finish_reason"),
        usage_prompt_tokens=usage.get("prompt_tokens"),
        kv_bytes=usage.get("kv_bytes"), kv_bytes_uncompressed=usage.get("kv_bytes_uncompressed"),
        kv_compression_ratio=usage.get("kv_compression_ratio"))
    return row


def build_prompts(args, tok):
    """{(length, depth, sample): PasskeyPrompt}."""
    prompts = {}
    for length in args.lengths:
        n = min(length, args.context - args.max_tokens)
        for depth in args.depths:
            for sample in range(args.samples):
                seed = f"{args.seed}:{length}:{depth}:{sample}"
                prompts[(length, depth, sample)] = haystack.make_passkey_prompt(
                    n, depth, seed, tok, args.gutenberg)
    return prompts


def run_sweep(args, client):
    tok = haystack.load_tokenizer(args.model)
    t0 = time.monotonic()
    prompts = build_prompts(args, tok)
    log(f"built {len(prompts)} prompts in {time.monotonic() - t0:.1f}s")
    jobs = []
    for policy, ratio in settings(args.policies, args.ratios):
        for (length, depth, sample), p in prompts.items():
            jobs.append({"policy": policy, "ratio": ratio, "length": length, "depth": depth,
                         "sample": sample, "seed": p.seed, "key": p.key, "prompt": p.prompt,
                         "prompt_tokens": p.n_tokens, "depth_tokens": round(p.depth_tokens, 4),
                         "needle_token_offset": p.needle_token_offset, "book": p.book})
    rows, done, lock = [], 0, threading.Lock()
    t_start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        futures = [pool.submit(run_one, client, j, args.max_tokens)
                   for j in jobs]
        for fut in concurrent.futures.as_completed(futures):
            r = fut.result()
            with lock:
                rows.append(r)
                done += 1
            verdict = "ok" if r["correct"] else ("ERROR " + r["error"] if r["error"] else "miss")
            got = "" if r["completion"] is None else f" got={r['completion']!r}"
            kv = ("" if r.get("kv_compression_ratio") is None
                  else f" kv={r['kv_compression_ratio']:.3f}")
            log(f"[{done}/{len(jobs)}] len={r['length']} depth={r['depth']} "
                f"policy={r['policy']} ratio={r['ratio']} key={r['key']}{got}{kv} "
                f"{verdict} {r['wall_s']:.1f}s")
            if r.get("usage_prompt_tokens") not in (None, r["prompt_tokens"]):
                log(f"  warning: server counted {r['usage_prompt_tokens']} prompt tokens, "
                    f"haystack.py {r['prompt_tokens']}")
    order = settings(args.policies, args.ratios)
    rows.sort(key=lambda r: (order.index((r["policy"], r["ratio"])), r["length"], r["depth"],
                             r["sample"]))
    return rows, time.monotonic() - t_start


# --- report -----------------------------------------------------------------------------

def fmt_acc(rows):
    """Correct / answered; requests that failed (HTTP error) are counted separately."""
    rows = [r for r in rows if not r.get("error")]
    if not rows:
        return "-"
    k = sum(r["correct"] for r in rows)
    return f"{k}/{len(rows)} ({100.0 * k / len(rows):.0f}%)"


def fmt_ratio(x):
    return f"{x:g}"


def markdown(data):
    meta, rows = data["meta"], data["results"]
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    combos = []
    for r in rows:
        if (r["policy"], r["ratio"]) not in combos:
            combos.append((r["policy"], r["ratio"]))
    out = ["# Passkey retrieval under KV-cache compression", "",
           "Command (repository root):", "", "```", meta["command"], "```", "",
           f"Generated {meta['date']} at commit {meta['commit']}; model "
           f"`{os.path.basename(meta['model'])}`; server `{meta['server']}`; "
           f"{meta['concurrency']} requests in flight; {meta['wall_s']:.0f} s in all.", "",
           "Each prompt (bench/haystack.py) hides \"The pass key is N. Remember it. N is the "
           "pass key.\" (N a seeded 5-digit number) at a sentence boundary at the given depth "
           "(fraction of the haystack's tokens) in Project Gutenberg prose and ends with \"What "
           "is the pass key? The pass key is\". Greedy decoding, max_tokens "
           f"{meta['max_tokens']}; a request is correct when its completion, leading white "
           "space stripped, starts with N. Every setting gets the same prompts: "
           f"{meta['samples']} per length and depth (depths {', '.join(map(str, depths))}). "
           "Lengths are nominal; prompts are capped at the context minus max_tokens "
           f"({meta['context']} - {meta['max_tokens']}).", "",
           "Accuracy counts the requests the server answered; failed requests (HTTP "
           "errors) are in the errors column, and a cell with none answered shows -. "
           "Achieved KV ratio: mean of usage.kv_compression_ratio (final KV bytes over "
           "uncompressed bytes) over the setting's requests; n/a where the server did not "
           "report it.", "",
           "## Accuracy by policy, target ratio and length", "",
           "| policy | target ratio | " + " | ".join(str(n) for n in lengths)
           + " | all | achieved KV ratio | errors |",
           "|---|---:|" + "---:|" * len(lengths) + "---:|---:|---:|"]
    for policy, ratio in combos:
        sel = [r for r in rows if r["policy"] == policy and r["ratio"] == ratio]
        kv = [r["kv_compression_ratio"] for r in sel if r.get("kv_compression_ratio") is not None]
        kv_s = f"{statistics.mean(kv):.3f}" if kv else "n/a"
        errs = sum(1 for r in sel if r.get("error"))
        cells = [fmt_acc([r for r in sel if r["length"] == n]) for n in lengths]
        out.append(f"| {policy} | {fmt_ratio(ratio)} | " + " | ".join(cells)
                   + f" | {fmt_acc(sel)} | {kv_s} | {errs} |")
    out += ["", "## Accuracy by depth (all lengths)", "",
            "| policy | target ratio | " + " | ".join(str(d) for d in depths) + " |",
            "|---|---:|" + "---:|" * len(depths)]
    for policy, ratio in combos:
        sel = [r for r in rows if r["policy"] == policy and r["ratio"] == ratio]
        out.append(f"| {policy} | {fmt_ratio(ratio)} | "
                   + " | ".join(fmt_acc([r for r in sel if r["depth"] == d]) for d in depths)
                   + " |")
    out += ["", "## Wall time per request (s), all settings", "",
            f"With {meta['concurrency']} requests in flight on the machine's shared CPUs; "
            "for orientation, not a latency benchmark.", "",
            "| length | prompt tokens | requests | mean | min | max |",
            "|---:|---:|---:|---:|---:|---:|"]
    for n in lengths:
        sel = [r for r in rows if r["length"] == n and not r.get("error")]
        if not sel:
            continue
        w = [r["wall_s"] for r in sel]
        toks = sorted({r["prompt_tokens"] for r in sel})
        out.append(f"| {n} | {'/'.join(map(str, toks))} | {len(w)} | {statistics.mean(w):.1f} "
                   f"| {min(w):.1f} | {max(w):.1f} |")
    errors = [r for r in rows if r.get("error")]
    if errors:
        out += ["", f"First error ({len(errors)} in all): `{errors[0]['error'][:300]}`"]
    return "\n".join(out) + "\n"


def write_file(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", type=csv_list(str, POLICIES), default=list(POLICIES))
    ap.add_argument("--ratios", type=csv_list(float), default=list(RATIOS),
                    help="target ratios of the policies other than none")
    ap.add_argument("--lengths", type=csv_list(int), default=list(LENGTHS))
    ap.add_argument("--depths", type=csv_list(float), default=list(DEPTHS))
    ap.add_argument("--samples", type=int, default=1, help="prompts per length and depth")
    ap.add_argument("--seed", default="0", help="base seed of the prompts")
    ap.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per request")
    ap.add_argument("--context", type=int, default=0,
                    help="model context in tokens (0 = the GGUF's llama.context_length)")
    ap.add_argument("--url", help="a running server; otherwise one is started")
    ap.add_argument("--bin", default=DEFAULT_BIN, help="kvserve binary")
    ap.add_argument("--model", default=haystack.DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-cache-bytes", default="1GiB")
    ap.add_argument("--max-batch-tokens", type=int, default=512)
    ap.add_argument("--server-flags", default="", help="more `kvserve serve` flags")
    ap.add_argument("--startup-timeout", type=float, default=180)
    ap.add_argument("--gutenberg", default=haystack.DEFAULT_GUTENBERG)
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "passkey.json"))
    ap.add_argument("--markdown", default=os.path.join(REPO, "docs", "compression_passkey.md"))
    ap.add_argument("--no-md", action="store_true", help="do not write --markdown")
    ap.add_argument("--from-json", help="only rewrite --markdown from this results file")
    args = ap.parse_args()

    if args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
        write_file(args.markdown, markdown(data))
        log(f"wrote {args.markdown}")
        return 0

    if args.context <= 0:
        meta = haystack._GgufReader(args.model).meta
        arch = meta.get("general.architecture", "llama")
        args.context = int(meta.get(f"{arch}.context_length", 8192))

    server = None
    if args.url:
        url, server_desc = args.url.rstrip("/"), args.url
    else:
        server = ServerLauncher(args.bin, args.model, args.threads,
                                flags=["--kv-cache-bytes", args.kv_cache_bytes,
                                       "--max-batch-tokens", str(args.max_batch_tokens),
                                       *shlex.split(args.server_flags)],
                                startup_timeout=args.startup_timeout, name="kvserve-passkey")
        url = server.start()
        server_desc = server.describe()
    try:
        client = Client(url, timeout=args.timeout)
        models = client.models()
        client.model = models[0]["id"] if models else None
        rows, wall = run_sweep(args, client)
    finally:
        if server is not None:
            server.stop()

    data = {"meta": {"command": command_line(), "date": datetime.datetime.now().isoformat(
                         timespec="seconds"), "commit": git_commit(), "model": args.model,
                     "server": server_desc, "concurrency": args.concurrency,
                     "max_tokens": args.max_tokens, "samples": args.samples,
                     "context": args.context, "seed": args.seed, "wall_s": round(wall, 1)},
            "results": rows}
    write_file(args.out, json.dumps(data, indent=1) + "\n")
    log(f"wrote {args.out}")
    if not args.no_md:
        write_file(args.markdown, markdown(data))
        log(f"wrote {args.markdown}")
    n_ok = sum(r["correct"] for r in rows)
    log(f"{n_ok}/{len(rows)} correct, {sum(1 for r in rows if r.get('error'))} errors, "
        f"{wall:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
