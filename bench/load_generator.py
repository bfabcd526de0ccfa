#!/usr/bin/env python3
"""Load generator for OpenAI-compatible completion servers (kvserve, llama-server, ...).

Sends streaming POST /v1/completions requests, either at a fixed concurrency (closed
loop: C workers, each sends its next request when the previous one finished) or as a
Poisson process at a given rate (open loop; optionally capped at --max-concurrency
requests in flight). Prompt and output lengths are drawn from distributions:

  N                  every request N tokens
  uniform:A:B        integers A..B, uniform
  normal:MEAN:STD    rounded, clipped to >= 1

Prompts are either windows of ../shared/data/gutenberg text with an exact token length
(measured with a llama.cpp-style tokenizer endpoint, POST /tokenize {"content"} and
/detokenize {"tokens"}, by default the target server's own, else --tokenizer-url), or
random token ids (sent as a token-id array). Without a tokenizer endpoint the text is
cut at an estimated 4 characters per token and the lengths are approximate; the
report's prompt-token figures always come from the servers' usage counts.

Every request asks for temperature 0, `ignore_eos: true` (an extension both kvserve
and llama-server accept) so that each one produces exactly max_tokens tokens, and
stream_options.include_usage so that token counts come from the server.

Reported (JSON, stdout or --json-out): completed/failed requests, wall time, requests/s,
output and prompt tokens/s, and mean/p50/p90/p99 of TTFT (send -> first streamed
text), TPOT ((e2e - TTFT) / (output tokens - 1)) and end-to-end latency, in ms.

Only the Python standard library is used, so any python3 runs it.

Usage:
  python3 bench/load_generator.py --base-url http://127.0.0.1:8080 --concurrency 8 \\
      --num-requests 32 --prompt-tokens 1000 --output-tokens 128 [--json-out FILE]
  python3 bench/load_generator.py --base-url ... --request-rate 2.5 --num-requests 100 \\
      --prompt-tokens uniform:200:1000 --output-tokens normal:128:32
"""

import argparse
import http.client
import json
import math
import os
import random
import statistics
import sys
import threading
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_DIR = os.path.join(REPO, "..", "shared", "data", "gutenberg")


class LoadError(RuntimeError):
    pass


# ---------------------------------------------------------------------------
# Length distributions
# ---------------------------------------------------------------------------

def parse_dist(spec):
    """Returns a function rng -> int >= 1 for a distribution spec (see module doc)."""
    parts = str(spec).split(":")
    try:
        if len(parts) == 1:
            n = int(parts[0])
            if n < 1:
                raise ValueError
            return lambda rng: n
        kind, a, b = parts[0], float(parts[1]), float(parts[2])
    except (ValueError, IndexError):
        raise LoadError(f"bad length distribution {spec!r}: want N, uniform:A:B or normal:MEAN:STD")
    if kind == "uniform" and 1 <= a <= b:
        return lambda rng: rng.randint(int(a), int(b))
    if kind == "normal" and a >= 1 and b >= 0:
        return lambda rng: max(1, int(round(rng.gauss(a, b))))
    raise LoadError(f"bad length distribution {spec!r}")


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------

class Endpoint:
    """Host, port and path prefix of a base URL such as http://127.0.0.1:8080."""

    def __init__(self, base_url):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme != "http" or not u.hostname:
            raise LoadError(f"base URL must be http://host:port, got {base_url!r}")
        self.host, self.port = u.hostname, u.port or 80
        self.prefix = u.path.rstrip("/")
        self.base_url = base_url.rstrip("/")

    def connect(self, timeout):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def post_json(self, path, body, timeout=60):
        """POST body as JSON; returns (status, parsed JSON or raw text)."""
        conn = self.connect(timeout)
        try:
            conn.request("POST", self.prefix + path, json.dumps(body),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            raw = r.read().decode("utf-8", "replace")
        finally:
            conn.close()
        try:
            return r.status, json.loads(raw)
        except json.JSONDecodeError:
            return r.status, raw

    def get_json(self, path, timeout=10):
        conn = self.connect(timeout)
        try:
            conn.request("GET", self.prefix + path)
            r = conn.getresponse()
            raw = r.read().decode("utf-8", "replace")
        finally:
            conn.close()
        try:
            return r.status, json.loads(raw)
        except json.JSONDecodeError:
            return r.status, raw


def first_model_id(ep):
    status, body = ep.get_json("/v1/models")
    if status != 200 or not isinstance(body, dict) or not body.get("data"):
        raise LoadError(f"GET /v1/models answered {status}: {str(body)[:300]}")
    return body["data"][0]["id"]


# ---------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------

class Tokenizer:
    """A llama.cpp-style /tokenize + /detokenize endpoint."""

    def __init__(self, base_url):
        self.ep = Endpoint(base_url)

    def available(self):
        try:
            status, body = self.ep.post_json("/tokenize", {"content": "Hello world"}, timeout=10)
        except OSError:
            return False
        return status == 200 and isinstance(body, dict) and isinstance(body.get("tokens"), list)

    def tokenize(self, text):
        status, body = self.ep.post_json("/tokenize", {"content": text, "add_special": False})
        if status != 200:
            raise LoadError(f"/tokenize answered {status}: {str(body)[:300]}")
        return [t if isinstance(t, int) else t["id"] for t in body["tokens"]]

    def detokenize(self, tokens):
        status, body = self.ep.post_json("/detokenize", {"tokens": tokens})
        if status != 200:
            raise LoadError(f"/detokenize answered {status}: {str(body)[:300]}")
        return body["content"]


def load_corpus(data_dir):
    names = sorted(n for n in os.listdir(data_dir) if n.endswith(".txt"))
    if not names:
        raise LoadError(f"no .txt files in {data_dir}")
    texts = []
    for n in names:
        with open(os.path.join(data_dir, n), encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    return "\n\n".join(texts)


def _line_start(corpus, pos):
    nl = corpus.find("\n", pos)
    return pos if nl < 0 else nl + 1


def text_prompt(corpus, n_tokens, rng, tokenizer):
    """A corpus window of exactly n_tokens tokens (approximate without a tokenizer).

    Returns (text, measured_tokens or None).
    """
    span = n_tokens * 8 + 64
    start = _line_start(corpus, rng.randrange(0, max(1, len(corpus) - span - 200)))
    window = corpus[start:start + span]
    if tokenizer is None:
        text = window[:n_tokens * 4]
        cut = text.rfind(" ")
        return (text[:cut] if cut > len(text) // 2 else text), None
    ids = tokenizer.tokenize(window)
    if len(ids) < n_tokens:
        raise LoadError(f"corpus window of {span} chars has only {len(ids)} tokens")
    # Detokenising a token window and tokenising it again can merge or split a token at
    # the edges, so adjust the window until the text has exactly n_tokens tokens.
    take = n_tokens
    for _ in range(8):
        text = tokenizer.detokenize(ids[:take])
        got = len(tokenizer.tokenize(text))
        if got == n_tokens:
            return text, got
        take += n_tokens - got
        if take < 1 or take > len(ids):
            break
    return text, got


def build_prompts(num, prompt_dist, output_dist, source="gutenberg", data_dir=DEFAULT_DATA_DIR,
                  tokenizer_url=None, seed=0, vocab_size=49152):
    """A list of {"prompt": str | [int], "prompt_tokens": int | None, "max_tokens": int}."""
    rng = random.Random(seed)
    pdist, odist = parse_dist(prompt_dist), parse_dist(output_dist)
    out = []
    if source == "random":
        for _ in range(num):
            n = pdist(rng)
            # Low ids of byte-level BPE vocabularies are special and byte tokens.
            out.append({"prompt": [rng.randrange(300, vocab_size) for _ in range(n)],
                        "prompt_tokens": n, "max_tokens": odist(rng)})
        return out
    if source != "gutenberg":
        raise LoadError(f"unknown prompt source {source!r}")
    corpus = load_corpus(data_dir)
    tok = None
    if tokenizer_url:
        tok = Tokenizer(tokenizer_url)
        if not tok.available():
            print(f"load_generator: no tokenizer endpoint at {tokenizer_url}/tokenize; prompt "
                  "lengths are estimated (4 characters per token)", file=sys.stderr)
            tok = None
    for _ in range(num):
        text, measured = text_prompt(corpus, pdist(rng), rng, tok)
        out.append({"prompt": text, "prompt_tokens": measured, "max_tokens": odist(rng)})
    return out


# ---------------------------------------------------------------------------
# One streamed request
# ---------------------------------------------------------------------------

def stream_completion(ep, model, item, timeout=600, extra_body=None):
    """Sends one streaming completion; returns a result dict with timings in seconds."""
    body = {"model": model, "prompt": item["prompt"], "max_tokens": item["max_tokens"],
            "stream": True, "stream_options": {"include_usage": True}, "temperature": 0,
            "ignore_eos": True}
    if extra_body:
        body.update(extra_body)
    res = {"ok": False, "error": None, "max_tokens": item["max_tokens"], "ttft_s": None,
           "e2e_s": None, "tpot_s": None, "output_tokens": 0, "prompt_tokens": None,
           "cached_tokens": None, "chunks": 0, "finish_reason": None}
    conn = ep.connect(timeout)
    t0 = time.perf_counter()
    res["start"] = time.time()
    try:
        conn.request("POST", ep.prefix + "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json", "Accept": "text/event-stream"})
        r = conn.getresponse()
        if r.status != 200:
            res["error"] = f"HTTP {r.status}: {r.read().decode('utf-8', 'replace')[:300]}"
            return res
        usage, done = None, False
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            ev = json.loads(data)
            if "error" in ev:
                res["error"] = f"stream error: {json.dumps(ev['error'])[:300]}"
                return res
            for ch in ev.get("choices") or []:
                if ch.get("text"):
                    if res["ttft_s"] is None:
                        res["ttft_s"] = time.perf_counter() - t0
                    res["chunks"] += 1
                if ch.get("finish_reason"):
                    res["finish_reason"] = ch["finish_reason"]
            if ev.get("usage"):
                usage = ev["usage"]
        res["e2e_s"] = time.perf_counter() - t0
        if not done:
            res["error"] = "stream ended without data: [DONE]"
            return res
        if usage:
            res["output_tokens"] = usage.get("completion_tokens", 0)
            res["prompt_tokens"] = usage.get("prompt_tokens")
            res["cached_tokens"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        else:
            res["output_tokens"] = res["chunks"]  # one token per chunk is the best guess
        if res["ttft_s"] is None:
            res["error"] = "no text was streamed"
            return res
        if res["output_tokens"] > 1:
            res["tpot_s"] = (res["e2e_s"] - res["ttft_s"]) / (res["output_tokens"] - 1)
        res["ok"] = True
        return res
    except (OSError, http.client.HTTPException, json.JSONDecodeError) as e:
        res["error"] = f"{type(e).__name__}: {e}"
        return res
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# Load patterns
# ---------------------------------------------------------------------------

def run_load(base_url, prompts, model=None, concurrency=None, request_rate=None,
             max_concurrency=None, seed=0, timeout=600, extra_body=None):
    """Runs every item of `prompts` once; returns the summary dict (see summarize)."""
    if (concurrency is None) == (request_rate is None):
        raise LoadError("give exactly one of concurrency or request_rate")
    ep = Endpoint(base_url)
    model = model or first_model_id(ep)
    results = [None] * len(prompts)

    def one(i):
        results[i] = stream_completion(ep, model, prompts[i], timeout, extra_body)

    t_start = time.perf_counter()
    if concurrency is not None:
        nxt = iter(range(len(prompts)))
        lock = threading.Lock()

        def worker():
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                one(i)

        threads = [threading.Thread(target=worker, daemon=True)
                   for _ in range(min(concurrency, len(prompts)))]
        for t in threads:
            t.start()
    else:
        rng = random.Random(seed + 1)
        gate = threading.BoundedSemaphore(max_concurrency) if max_concurrency else None

        def gated(i):
            if gate is None:
                one(i)
                return
            with gate:
                one(i)

        threads = []
        t_next = t_start
        for i in range(len(prompts)):
            delay = t_next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t = threading.Thread(target=gated, args=(i,), daemon=True)
            t.start()
            threads.append(t)
            t_next += rng.expovariate(request_rate)
    for t in threads:
        t.join()
    duration = time.perf_counter() - t_start
    return summarize(results, duration, {
        "base_url": base_url, "model": model, "num_requests": len(prompts),
        "concurrency": concurrency, "request_rate": request_rate,
        "max_concurrency": max_concurrency, "seed": seed})


def percentile(xs, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def dist_ms(xs):
    xs = [x * 1000.0 for x in xs if x is not None]
    if not xs:
        return None
    return {"mean": statistics.fmean(xs), "p50": percentile(xs, 50), "p90": percentile(xs, 90),
            "p99": percentile(xs, 99), "min": min(xs), "max": max(xs)}


def summarize(results, duration, config):
    ok = [r for r in results if r and r["ok"]]
    bad = [r for r in results if not r or not r["ok"]]
    out_tok = sum(r["output_tokens"] for r in ok)
    prompt_tok = sum(r["prompt_tokens"] or 0 for r in ok)
    cached = [r["cached_tokens"] for r in ok if r["cached_tokens"] is not None]
    return {
        "config": config,
        "completed": len(ok),
        "failed": len(bad),
        "errors": sorted({(r or {}).get("error") or "no result" for r in bad})[:10],
        "duration_s": duration,
        "total_output_tokens": out_tok,
        "total_prompt_tokens": prompt_tok,
        "cached_prompt_tokens": sum(cached) if cached else None,
        "short_outputs": sum(1 for r in ok if r["output_tokens"] != r["max_tokens"]),
        "request_throughput": len(ok) / duration if duration > 0 else None,
        "output_throughput_tok_s": out_tok / duration if duration > 0 else None,
        "prompt_throughput_tok_s": prompt_tok / duration if duration > 0 else None,
        "ttft_ms": dist_ms([r["ttft_s"] for r in ok]),
        "tpot_ms": dist_ms([r["tpot_s"] for r in ok]),
        "e2e_ms": dist_ms([r["e2e_s"] for r in ok]),
        "requests": [{k: v for k, v in (r or {}).items()} for r in results],
    }


def print_summary(s, file=sys.stderr):
    c = s["config"]
    mode = (f"concurrency {c['concurrency']}" if c["concurrency"] is not None
            else f"Poisson {c['request_rate']}/s")
    print(f"{c['base_url']} ({mode}): {s['completed']} ok, {s['failed']} failed in "
          f"{s['duration_s']:.2f} s; {s['output_throughput_tok_s'] or 0:.1f} output tok/s, "
          f"{s['request_throughput'] or 0:.3f} req/s", file=file)
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        d = s[key]
        if d:
            print(f"  {key[:-3]:5s} ms  p50 {d['p50']:9.1f}  p90 {d['p90']:9.1f}  "
                  f"p99 {d['p99']:9.1f}  mean {d['mean']:9.1f}", file=file)
    for e in s["errors"]:
        print(f"  error: {e}", file=file)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080")
    ap.add_argument("--model", help="model name to send (default: the first of /v1/models)")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--concurrency", type=int, help="closed loop with this many in flight")
    mode.add_argument("--request-rate", type=float, help="Poisson arrivals, requests per second")
    ap.add_argument("--max-concurrency", type=int, help="cap in-flight requests (Poisson mode)")
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--prompt-tokens", default="1000", help="length distribution (module doc)")
    ap.add_argument("--output-tokens", default="128", help="length distribution (module doc)")
    ap.add_argument("--prompt-source", choices=["gutenberg", "random"], default="gutenberg")
    ap.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    ap.add_argument("--tokenizer-url",
                    help="server with llama.cpp-style /tokenize and /detokenize "
                         "(default: --base-url)")
    ap.add_argument("--vocab-size", type=int, default=49152, help="for random token prompts")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured requests first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per request")
    ap.add_argument("--extra-body", type=json.loads, default=None,
                    help="JSON object merged into every request body")
    ap.add_argument("--json-out", help="write the summary here (default: stdout)")
    args = ap.parse_args()
    try:
        prompts = build_prompts(args.warmup + args.num_requests, args.prompt_tokens,
                                args.output_tokens, args.prompt_source, args.data_dir,
                                args.tokenizer_url or args.base_url, args.seed, args.vocab_size)
        model = args.model or first_model_id(Endpoint(args.base_url))
        if args.warmup:
            w = run_load(args.base_url, prompts[:args.warmup], model, concurrency=args.warmup,
                         timeout=args.timeout, extra_body=args.extra_body)
            if w["failed"]:
                raise LoadError(f"warm-up failed: {w['errors']}")
        s = run_load(args.base_url, prompts[args.warmup:], model,
                     concurrency=args.concurrency, request_rate=args.request_rate,
                     max_concurrency=args.max_concurrency, seed=args.seed,
                     timeout=args.timeout, extra_body=args.extra_body)
    except (LoadError, OSError) as e:
        print(f"load_generator: {e}", file=sys.stderr)
        return 2
    s["config"].update({"prompt_tokens": args.prompt_tokens, "output_tokens": args.output_tokens,
                        "prompt_source": args.prompt_source, "warmup": args.warmup})
    print_summary(s)
    text = json.dumps(s, indent=1)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
