#!/usr/bin/env python3
"""Long-document QA with several tenants: the prefix cache and KV compression, on and off.

The demo of issue #6. Tenants each own a few long documents and ask many questions about
them; the requests arrive concurrently (Poisson arrivals from a seed, open loop: an
arrival never waits for an earlier answer). The same workload runs against four server
configurations, each a fresh `kvserve serve --tenants FILE` process:

    cache off / compression none           cache on / compression none
    cache off / attention-guided@0.25      cache on / attention-guided@0.25

(compression is the tenants' default in the tenants file, so requests carry no
kv_compression of their own). Reported per configuration and per tenant: time to first
token (streamed, p50/p95), output throughput, prompt tokens served from the prefix cache;
overall: peak KV bytes and peak bytes saved (polled from /v1/stats every 0.1 s), bytes
saved by the finished requests' caches (usage.kv_bytes_uncompressed - usage.kv_bytes),
preemptions, and answer quality.

Documents and questions. The documents are the distinct contexts of a LongBench file
(default: multifieldqa_en.sample12.jsonl, 12 rows over 10 documents; two documents carry
two rows each). Each context is cut to --doc-tokens model tokens by dropping its middle
(longbench.truncate_middle, on the context alone so that every question over a document
shares the same prompt prefix), and each question is put in the dataset's LongBench
template (longbench.format_prompt) and sent as one chat message, as kvserve-eval's
longbench task does. A document's questions are its rows' own questions, which are
scored with the dataset's LongBench metric (metrics.score: QA F1 for multifieldqa_en),
plus generic questions about the document (GENERIC_QUESTIONS) up to --questions-per-doc,
which are load only and not scored: LongBench has one question per row, and repeating a
scored question would score the same prompt twice. Documents go to tenants round-robin,
those with more rows first, so the scored rows are spread over the tenants.

Usage (repository root):
  python3 bench/longdoc_qa.py [--quick] [--configs off/none,on/none,...]
      [--out bench/results/longdoc_qa.json] [--markdown docs/fragment.md]

Standard library only (plus the repository's bench/ modules).
"""

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import random
import shlex
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import haystack  # noqa: E402
from kvserve_eval import metrics, util  # noqa: E402
from kvserve_eval.server import ServerLauncher  # noqa: E402
from kvserve_eval.tasks import longbench  # noqa: E402

DEFAULT_FILE = "longbench/multifieldqa_en.sample12.jsonl"  # under --data-dir
DEFAULT_OUT = os.path.join(util.REPO, "bench", "results", "longdoc_qa.json")
COMPRESSION = {"policy": "attention-guided", "ratio": 0.25}
# name -> (prefix cache on, tenants' default compression or None)
CONFIGS = {
    "off/none": (False, None),
    "on/none": (True, None),
    "off/attention-guided@0.25": (False, COMPRESSION),
    "on/attention-guided@0.25": (True, COMPRESSION),
}
# Unscored questions that make sense for any document.
GENERIC_QUESTIONS = (
    "What is the main topic of the text?",
    "Who or what is mentioned first in the text?",
    "Summarize the text in one sentence.",
    "What kind of document is this?",
    "Name one place mentioned in the text.",
    "What is the last subject the text discusses?",
    "List three key terms used in the text.",
    "Which year or date does the text mention first?",
)
ADMIN = "bench-admin"  # the tenant whose key polls /v1/stats and sends the warm-up
POLL_S = 0.1


# --- Workload (pure) --------------------------------------------------------------------

@dataclasses.dataclass
class Document:
    doc_id: str
    dataset: str
    context: str
    rows: list  # the LongBench rows over this context (their questions are scored)


@dataclasses.dataclass
class PlannedRequest:
    index: int
    tenant: str
    doc_id: str
    question: str
    row: dict = None  # the scored LongBench row, or None for a generic question
    arrival_s: float = 0.0


def documents_from_rows(rows):
    """Distinct contexts in first-seen order, each with the rows that ask about it."""
    docs, by_context = [], {}
    for row in rows:
        context = row["context"]
        if context not in by_context:
            digest = hashlib.sha1(context.encode("utf-8")).hexdigest()[:10]
            by_context[context] = Document(doc_id=f"doc-{digest}", dataset=row["dataset"],
                                           context=context, rows=[])
            docs.append(by_context[context])
        by_context[context].rows.append(row)
    return docs


def tenant_ids(n):
    return [f"tenant-{chr(ord('a') + i)}" for i in range(n)]


def assign_documents(docs, tenants, docs_per_tenant):
    """{tenant: [Document]}: documents with more rows first (ties: file order), dealt
    round-robin so each tenant gets docs_per_tenant of them."""
    need = len(tenants) * docs_per_tenant
    if need > len(docs):
        raise ValueError(f"{len(tenants)} tenants x {docs_per_tenant} documents needs {need} "
                         f"distinct documents; the file has {len(docs)}")
    order = sorted(range(len(docs)), key=lambda i: (-len(docs[i].rows), i))[:need]
    out = {t: [] for t in tenants}
    for k, i in enumerate(order):
        out[tenants[k % len(tenants)]].append(docs[i])
    return out


def build_plan(assignment, questions_per_doc, rate, seed):
    """Every request of the run, in arrival order, with Poisson arrival times.

    Per document: its rows' questions (scored) and then generic questions up to
    questions_per_doc (a document with more rows keeps them all). The order of all
    requests is shuffled with `seed`; arrivals are `rate` per second on average (0: all
    at once)."""
    most_rows = max((len(d.rows) for ds in assignment.values() for d in ds), default=0)
    if questions_per_doc - 1 > len(GENERIC_QUESTIONS) or (
            questions_per_doc - most_rows > len(GENERIC_QUESTIONS)):
        raise ValueError(f"at most {len(GENERIC_QUESTIONS) + 1} questions per document")
    items = []
    for tenant, docs in assignment.items():
        for doc in docs:
            for row in doc.rows:
                items.append(PlannedRequest(0, tenant, doc.doc_id, row.get("input") or "", row))
            for q in GENERIC_QUESTIONS[:max(0, questions_per_doc - len(doc.rows))]:
                items.append(PlannedRequest(0, tenant, doc.doc_id, q, None))
    rng = random.Random(seed)
    rng.shuffle(items)
    for i, (item, t) in enumerate(zip(items, arrival_times(len(items), rate, rng))):
        item.index, item.arrival_s = i, t
    return items


def arrival_times(n, rate, rng):
    """n non-decreasing times from 0: exponential gaps of mean 1/rate (rate 0: all 0)."""
    out, t = [], 0.0
    for i in range(n):
        if i > 0 and rate > 0:
            t += rng.expovariate(rate)
        out.append(t)
    return out


def prompt_for(dataset, context, question):
    """The LongBench prompt of `question` over an (already cut) context."""
    return longbench.format_prompt({"dataset": dataset, "context": context, "input": question})


def key_of(tenant):
    """The API key of a tenant in these runs (local, throwaway)."""
    return f"longdoc-{tenant}-key"


def tenants_config(tenants, compression):
    """The tenants file: one entry per tenant (plus ADMIN), keys stored as kvserve
    hash-key prints them, each with `compression` as its default (None: the server's)."""
    out = []
    for t in list(tenants) + [ADMIN]:
        entry = {"id": t,
                 "api_keys": ["sha256:" + hashlib.sha256(key_of(t).encode()).hexdigest()]}
        if compression is not None and t != ADMIN:
            entry["compression"] = dict(compression)
        out.append(entry)
    return {"tenants": out}


# --- Statistics (pure) ------------------------------------------------------------------

def percentile(values, q):
    """Linear-interpolated percentile, q in [0, 100]; None for no values."""
    v = sorted(values)
    if not v:
        return None
    pos = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summarize_requests(results):
    """Aggregates of a list of request results (dicts as run_request returns them)."""
    ok = [r for r in results if not r.get("error")]
    ttfts = [r["ttft_s"] for r in ok if r.get("ttft_s") is not None]
    scored = [r for r in results if r.get("scored")]
    out_tokens = sum(r.get("completion_tokens") or 0 for r in ok)
    prompt_tokens = sum(r.get("prompt_tokens") or 0 for r in ok)
    cached = sum(r.get("cached_tokens") or 0 for r in ok)
    starts = [r["sent_s"] for r in results if r.get("sent_s") is not None]
    ends = [r["done_s"] for r in results if r.get("done_s") is not None]
    span = (max(ends) - min(starts)) if starts and ends else 0.0
    saved = sum(max(0, (r.get("kv_bytes_uncompressed") or 0) - (r.get("kv_bytes") or 0))
                for r in ok)
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "latency_p50_s": percentile([r["latency_s"] for r in ok if r.get("latency_s")], 50),
        "span_s": span,
        "output_tokens": out_tokens,
        "output_tok_per_s": out_tokens / span if span > 0 else None,
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached,
        "cached_share": cached / prompt_tokens if prompt_tokens else 0.0,
        "saved_bytes_finished": saved,
        "scored": len(scored),
        "mean_f1": statistics.fmean(r["score"] for r in scored) if scored else None,
    }


def summarize_config(results, tenants, peaks, before, after):
    """The report of one configuration: overall, per tenant, and the server's counters."""
    overall = summarize_requests(results)
    overall.update({
        "peak_kv_bytes": peaks["used_bytes"],
        "peak_saved_bytes": peaks["saved_bytes"],
        "peak_running": peaks["running"],
        "peak_waiting": peaks["waiting"],
        "preemptions": after["totals"]["preemptions"] - before["totals"]["preemptions"],
        "kv_compression_failures": (after["totals"]["kv_compression_failures"]
                                    - before["totals"]["kv_compression_failures"]),
    })
    per_tenant = {}
    rows_after = {t["tenant"]: t for t in after.get("tenants", [])}
    rows_before = {t["tenant"]: t for t in before.get("tenants", [])}
    for t in tenants:
        s = summarize_requests([r for r in results if r["tenant"] == t])
        s["peak_kv_bytes"] = peaks["tenant_kv_bytes"].get(t, 0)
        a, b = rows_after.get(t, {}), rows_before.get(t, {})
        s["server_cached_prompt_tokens"] = (a.get("cached_prompt_tokens", 0)
                                            - b.get("cached_prompt_tokens", 0))
        s["preemptions"] = a.get("preemptions", 0) - b.get("preemptions", 0)
        per_tenant[t] = s
    return {"overall": overall, "tenants": per_tenant}


def _fmt(v, spec=".2f", none="-"):
    return none if v is None else format(v, spec)


def _mib(v):
    return _fmt(None if v is None else v / 2**20, ".1f")


def markdown(report):
    """Two tables: overall per configuration, then per tenant."""
    lines = ["| configuration (cache / compression) | wall s | TTFT p50 s | TTFT p95 s | "
             "output tok/s | cached prompt share | peak KV MiB | peak saved MiB | "
             "saved by finished requests MiB | preemptions | mean F1 (rows) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, cfg in report["configs"].items():
        o = cfg["overall"]
        lines.append(
            f"| {name} | {_fmt(o['span_s'], '.0f')} | {_fmt(o['ttft_p50_s'])} | "
            f"{_fmt(o['ttft_p95_s'])} | {_fmt(o['output_tok_per_s'], '.1f')} | "
            f"{o['cached_share']:.0%} | {_mib(o['peak_kv_bytes'])} | "
            f"{_mib(o['peak_saved_bytes'])} | {_mib(o['saved_bytes_finished'])} | "
            f"{o['preemptions']} | {_fmt(o['mean_f1'], '.3f')} ({o['scored']}) |"
            + (f" {o['errors']} errors" if o["errors"] else ""))
    lines += ["", "| configuration | tenant | requests | TTFT p50 s | TTFT p95 s | "
              "output tok/s | cached tokens | peak KV MiB | mean F1 (rows) |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, cfg in report["configs"].items():
        for t, s in cfg["tenants"].items():
            lines.append(
                f"| {name} | {t} | {s['requests']} | {_fmt(s['ttft_p50_s'])} | "
                f"{_fmt(s['ttft_p95_s'])} | {_fmt(s['output_tok_per_s'], '.1f')} | "
                f"{s['cached_tokens']} | {_mib(s['peak_kv_bytes'])} | "
                f"{_fmt(s['mean_f1'], '.3f')} ({s['scored']}) |")
    return "\n".join(lines) + "\n"


def sse_events(lines):
    """The JSON events of a server-sent-events body (an iterable of byte or str lines),
    up to "[DONE]"."""
    for raw in lines:
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        line = line.strip()
        if not line.startswith("data:"):
            continue
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            return
        yield json.loads(payload)


# --- Talking to the server --------------------------------------------------------------

def launcher(args, flags, key, log_dir):
    """A kvserve_eval ServerLauncher for `kvserve serve --tenants FILE`: its readiness
    probe sends `key`, since a server with tenants refuses keyless requests."""
    return ServerLauncher(args.bin, args.model, args.threads, flags, log_dir=log_dir,
                          name="longdoc-qa", api_key=key)


def server_stats(server):
    """The server's /v1/stats (with the launcher's key)."""
    status, body = get_json(server.url + "/v1/stats", server.api_key, timeout=10)
    if status != 200:
        raise RuntimeError(f"/v1/stats: {status} {body}")
    return body


def get_json(url, key, timeout=10.0):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def stream_chat(url, key, prompt, max_tokens, timeout):
    """A greedy streamed chat completion: {"text", "ttft_s", "latency_s", "usage"} or
    {"error"}; times from sending the request."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {key}"})
    t0 = time.monotonic()
    pieces, ttft, usage = [], None, None
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            for event in sse_events(response):
                if event.get("error"):
                    return {"error": str(event["error"])}
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        if ttft is None:
                            ttft = time.monotonic() - t0
                        pieces.append(text)
    except urllib.error.HTTPError as e:
        return {"error": f"HTTP {e.code}: {e.read().decode(errors='replace')[:300]}"}
    except (OSError, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {"text": "".join(pieces), "ttft_s": ttft, "latency_s": time.monotonic() - t0,
            "usage": usage or {}}


class StatsPoller:
    """Polls /v1/stats every POLL_S seconds in a thread and keeps the peaks."""

    def __init__(self, server):
        self.server, self.stop_event = server, threading.Event()
        self.peaks = {"used_bytes": 0, "saved_bytes": 0, "running": 0, "waiting": 0,
                      "tenant_kv_bytes": {}}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop_event.is_set():
            try:
                s = server_stats(self.server)
            except (OSError, RuntimeError, ValueError):
                time.sleep(POLL_S)
                continue
            p = self.peaks
            p["used_bytes"] = max(p["used_bytes"], s["kv_cache"]["used_bytes"])
            p["saved_bytes"] = max(p["saved_bytes"], s["kv_cache"]["saved_bytes"])
            p["running"] = max(p["running"], s["requests"]["running"])
            p["waiting"] = max(p["waiting"], s["requests"]["waiting"])
            for t in s.get("tenants", []):
                p["tenant_kv_bytes"][t["tenant"]] = max(p["tenant_kv_bytes"].get(t["tenant"], 0),
                                                        t["kv_bytes"])
            time.sleep(POLL_S)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=30)


# --- Running ----------------------------------------------------------------------------

def prepare_documents(docs, doc_tokens, tokenizer):
    """{doc_id: (dataset, context cut to doc_tokens)}."""
    out = {}
    for doc in docs:
        context, _, _ = longbench.truncate_middle(doc.context, doc_tokens, tokenizer)
        out[doc.doc_id] = (doc.dataset, context)
    return out


def run_request(server, item, contexts, max_new_tokens, t0, timeout):
    dataset, context = contexts[item.doc_id]
    max_tokens = max_new_tokens or longbench.DATASET_MAXLEN[longbench.base_dataset(dataset)]
    sent = time.monotonic() - t0
    r = stream_chat(server.url, key_of(item.tenant), prompt_for(dataset, context, item.question),
                    max_tokens, timeout)
    out = {"index": item.index, "tenant": item.tenant, "doc_id": item.doc_id,
           "question": item.question, "scored": item.row is not None,
           "arrival_s": round(item.arrival_s, 3), "sent_s": round(sent, 3),
           "done_s": round(time.monotonic() - t0, 3)}
    if "error" in r:
        out["error"] = r["error"]
    else:
        usage = r["usage"]
        out.update({
            "ttft_s": r["ttft_s"], "latency_s": r["latency_s"], "answer": r["text"],
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
            "kv_bytes": usage.get("kv_bytes"),
            "kv_bytes_uncompressed": usage.get("kv_bytes_uncompressed")})
    if item.row is not None:
        row = item.row
        out["item_id"] = longbench.item_id_of(row)
        out["score"] = 0.0 if "error" in r else metrics.score(
            longbench.base_dataset(row["dataset"]), r["text"], row.get("answers") or [],
            row.get("all_classes"))
    return out


def run_config(name, args, plan, contexts, tenants, log_dir):
    cache, compression = CONFIGS[name]
    cfg_path = os.path.join(log_dir, f"tenants-{len(os.listdir(log_dir))}.json")
    with open(cfg_path, "w") as f:
        json.dump(tenants_config(tenants, compression), f)
    flags = ["--tenants", cfg_path, "--kv-cache-bytes", args.kv_cache_bytes,
             "--prefix-cache", "true" if cache else "false", *args.server_flag]
    server = launcher(args, flags, key_of(ADMIN), log_dir)
    server.start()
    util.log(f"[{name}] {shlex.join(server.cmd)}")
    try:
        # Warm-up (the admin tenant: nothing it computes is cached for the others).
        stream_chat(server.url, key_of(ADMIN), "Say hello.", 4, args.timeout)
        before = server_stats(server)
        t0 = time.monotonic()
        futures = []
        with StatsPoller(server) as poller, concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, args.max_in_flight)) as pool:
            for item in plan:
                delay = item.arrival_s - (time.monotonic() - t0)
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(run_request, server, item, contexts,
                                           args.max_new_tokens, t0, args.timeout))
            results = [f.result() for f in futures]
            # Let the last stats publish settle before the final snapshot.
            time.sleep(2 * POLL_S)
        after = server_stats(server)
        report = summarize_config(results, tenants, poller.peaks, before, after)
        report["server_command"] = shlex.join(["kvserve", *server.cmd[1:]])
        o = report["overall"]
        util.log(f"[{name}] {o['requests']} requests in {o['span_s']:.0f} s, TTFT p50 "
                 f"{_fmt(o['ttft_p50_s'])} s, cached {o['cached_share']:.0%}, peak KV "
                 f"{_mib(o['peak_kv_bytes'])} MiB, F1 {_fmt(o['mean_f1'], '.3f')}, "
                 f"{o['errors']} errors")
        return report, results
    finally:
        server.stop()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=util.DEFAULT_BIN, help="kvserve binary [%(default)s]")
    p.add_argument("--model", default=util.DEFAULT_MODEL, help="GGUF model [%(default)s]")
    p.add_argument("--threads", type=int, default=2, help="server threads [%(default)s]")
    p.add_argument("--data-dir", default=util.DEFAULT_DATA_DIR, help="[%(default)s]")
    p.add_argument("--longbench-file", default=DEFAULT_FILE,
                   help="LongBench JSONL, relative to --data-dir unless absolute [%(default)s]")
    p.add_argument("--tenants", type=int, default=3, help="tenants [%(default)s]")
    p.add_argument("--docs-per-tenant", type=int, default=3, help="[%(default)s]")
    p.add_argument("--questions-per-doc", type=int, default=4,
                   help="questions per document: its rows' own, then generic ones "
                        "[%(default)s]")
    p.add_argument("--doc-tokens", type=int, default=3000,
                   help="each document cut to this many tokens (middle dropped) [%(default)s]")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length [LongBench's for the dataset: 64 for multifieldqa_en]")
    p.add_argument("--rate", type=float, default=0.5,
                   help="mean arrivals per second over all tenants (0: all at once) "
                        "[%(default)s]")
    p.add_argument("--max-in-flight", type=int, default=64,
                   help="client threads; arrivals beyond it wait for one [%(default)s]")
    p.add_argument("--seed", type=int, default=0, help="[%(default)s]")
    p.add_argument("--configs", type=util.csv_list(str, allowed=list(CONFIGS)),
                   default=list(CONFIGS), help="comma-separated, of: " + ", ".join(CONFIGS))
    p.add_argument("--kv-cache-bytes", default="1GiB", help="server KV pool [%(default)s]")
    p.add_argument("--server-flag", action="append", default=[],
                   help="extra `kvserve serve` argument (repeat; e.g. --server-flag=--foo)")
    p.add_argument("--timeout", type=float, default=900.0, help="per request, s [%(default)s]")
    p.add_argument("--quick", action="store_true",
                   help="a small run for development: 2 tenants x 1 document x 2 questions, "
                        "800-token documents, 16-token answers")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON report [%(default)s]")
    p.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.tenants, args.docs_per_tenant, args.questions_per_doc = 2, 1, 2
        args.doc_tokens, args.max_new_tokens, args.rate = 800, 16, 2.0
    return args


def main(argv=None):
    args = parse_args(argv)
    path = args.longbench_file
    if not os.path.isabs(path):
        path = os.path.join(args.data_dir, path)
    docs = documents_from_rows(longbench.read_rows(path))
    tenants = tenant_ids(args.tenants)
    assignment = assign_documents(docs, tenants, args.docs_per_tenant)
    plan = build_plan(assignment, args.questions_per_doc, args.rate, args.seed)
    used = [d for ds in assignment.values() for d in ds]
    contexts = prepare_documents(used, args.doc_tokens, haystack.load_tokenizer(args.model))
    util.log(f"{len(plan)} requests ({sum(i.row is not None for i in plan)} scored) from "
             f"{len(tenants)} tenants over {len(used)} documents of {args.doc_tokens} tokens; "
             f"arrivals {args.rate}/s; configurations: {', '.join(args.configs)}")
    report = {
        "command": util.command_line(None if argv is None else ["bench/longdoc_qa.py", *argv]),
        "commit": util.git_commit(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "markdown")},
        "workload": {
            "requests": len(plan), "scored": sum(i.row is not None for i in plan),
            "tenants": {t: [d.doc_id for d in ds] for t, ds in assignment.items()},
            "plan": [{"index": i.index, "tenant": i.tenant, "doc_id": i.doc_id,
                      "question": i.question, "scored": i.row is not None,
                      "arrival_s": round(i.arrival_s, 3)} for i in plan]},
        "configs": {}, "requests": {},
    }
    with tempfile.TemporaryDirectory(prefix="longdoc-qa-") as log_dir:
        for name in args.configs:
            cfg, results = run_config(name, args, plan, contexts, tenants, log_dir)
            report["configs"][name] = cfg
            report["requests"][name] = results
    report["machine"]["load_avg_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    table = markdown(report)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    print(table)
    util.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
