"""The prefix cache (`kvserve serve --prefix-cache true`, issue #6) on the real server.

A long document (a Gutenberg passage, ~1,000 tokens) asked several questions by one
tenant: later requests reuse the document's KV (usage.prompt_tokens_details.cached_tokens
> 0, whole 16-token blocks, less than the prompt) and their greedy answers are the answers
of a server without the cache, so the reused KV is right. The cache never crosses tenants
(tenant B gets 0 on tenant A's document) nor compression specs; streamed usage and gRPC
Usage.cached_tokens report the hits; /v1/stats charges them to the right tenant.

Accounting: on a small pool, concurrent requests over two documents (cache hits, client
aborts mid-stream, preemptions) leave, at idle, only the prefix cache's blocks: all f16,
nothing running, bytes = blocks x block size. The cache's own block count is not exported,
so a request whose prompt needs the whole pool proves the rest: it can only run if every
other used block was an unused cached block (evictable), and afterwards exactly its own
prompt's full blocks remain.
"""
import os
import random
import threading
import time

import grpc
import pytest
import requests

from conftest import ROOT
from server_util import MODEL_NAME, start_server
from test_grpc_api import stubs  # noqa: F401  (the generated gRPC modules, a fixture)
from test_tenants_auth import tenant, write_tenants

BLOCK_TOKENS = 16
LAYERS = 30  # SmolLM2-135M
BLOCK_BYTES = LAYERS * 2 * 192 * 2 * BLOCK_TOKENS  # one f16 block: K and V of 3 x 64 dims
KEYS = {"alpha": "alpha-pc-key", "beta": "beta-pc-key", "gamma": "gamma-pc-key",
        "flush": "flush-pc-key"}
GAMMA_COMPRESSION = {"policy": "attention-guided", "ratio": 0.25}
QUESTIONS = ["Who is this passage about?", "What happens at the party?",
             "Where does the story take place?"]
ANSWER_TOKENS = 24


def book_passage(start, chars, name="austen-emma.txt"):
    """`chars` characters of a Gutenberg book from the first line start after `start`."""
    path = os.path.join(ROOT, "..", "shared", "data", "gutenberg", name)
    with open(path, encoding="utf-8") as f:
        book = f.read()
    begin = book.find("\n", start) + 1
    return book[begin:begin + chars]


# About 1,050 tokens with the chat template and a question.
DOCUMENT = book_passage(20000, 4400)


def messages(document, question):
    return [{"role": "user", "content": f"{document}\n\nQuestion: {question}\nAnswer briefly."}]


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def stats(server, key=None):
    r = requests.get(server.url("/v1/stats"), headers=bearer(key or server.api_key), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def tenant_row(snapshot, tenant_id):
    rows = [t for t in snapshot["tenants"] if t["tenant"] == tenant_id]
    assert len(rows) == 1, snapshot["tenants"]
    return rows[0]


def wait_idle(server, key=None, timeout=30.0):
    """Polls /v1/stats until nothing runs or waits; returns the last snapshot."""
    deadline = time.monotonic() + timeout
    while True:
        s = stats(server, key)
        if (s["requests"]["running"] == 0 and s["requests"]["waiting"] == 0
                and all(t["running"] == 0 and t["waiting"] == 0 for t in s["tenants"])):
            return s
        if time.monotonic() > deadline:
            return s
        time.sleep(0.1)


def cached_of(usage):
    details = usage.prompt_tokens_details
    assert details is not None, usage
    return details.cached_tokens


def assert_idle_blocks_are_cached_f16(s):
    """At idle only the prefix cache holds blocks, and cached blocks are whole f16 blocks."""
    kv = s["kv_cache"]
    assert s["requests"] == {"running": 0, "waiting": 0}, s["requests"]
    for t in s["tenants"]:
        assert (t["running"], t["waiting"], t["kv_bytes"]) == (0, 0, 0), t
    assert kv["capacity_bytes"] == kv["blocks_total"] * BLOCK_BYTES, kv
    assert kv["blocks_used"] + kv["blocks_free"] == kv["blocks_total"], kv
    assert kv["used_bytes"] == kv["blocks_used"] * BLOCK_BYTES, kv
    assert kv["bytes_by_tier"]["f16"] == kv["used_bytes"], kv
    assert kv["units_by_tier"] == {"f16": kv["blocks_used"] * LAYERS, "int8": 0, "int4": 0,
                                   "int2": 0, "evicted": 0}, kv
    assert kv["saved_bytes"] == 0, kv


@pytest.fixture(scope="module")
def tenants_file(tmp_path_factory, kvserve_bin):
    path = tmp_path_factory.mktemp("prefix") / "tenants.json"
    write_tenants(path, [
        tenant(kvserve_bin, "alpha", [KEYS["alpha"]]),
        tenant(kvserve_bin, "beta", [KEYS["beta"]]),
        tenant(kvserve_bin, "gamma", [KEYS["gamma"]], compression=GAMMA_COMPRESSION),
        tenant(kvserve_bin, "flush", [KEYS["flush"]]),
    ])
    return path


@pytest.fixture(scope="module")
def reference_answers(request, kvserve_bin, model_path, tenants_file):
    """Greedy answers to every question from a server without the prefix cache (stopped
    before the cached one starts, so the two never share the CPU)."""
    srv = start_server(request, kvserve_bin, model_path, "--tenants", str(tenants_file),
                       "--kv-cache-bytes", "64MiB", api_key=KEYS["alpha"])
    client = srv.client()
    out = {}
    for q in QUESTIONS:
        r = client.chat.completions.create(model=MODEL_NAME, messages=messages(DOCUMENT, q),
                                           max_tokens=ANSWER_TOKENS, temperature=0)
        assert cached_of(r.usage) == 0  # no cache: never a hit
        out[q] = r.choices[0].message.content
    assert srv.stop() == 0
    return out


class TestHits:
    """One server with the cache; the tests run in order and build on its state."""

    # Cached tokens each tenant saw in its responses, to compare with /v1/stats.
    seen = {"alpha": 0, "beta": 0, "gamma": 0}

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, request, kvserve_bin, model_path, tenants_file, reference_answers):
        # Room for every document of every tenant and spec below (4 x ~68 blocks), so
        # nothing is evicted and each hit or miss is the cache's sharing rule at work.
        return start_server(request, kvserve_bin, model_path, "--tenants", str(tenants_file),
                            "--kv-cache-bytes", "128MiB", "--prefix-cache", "true",
                            api_key=KEYS["alpha"])

    def ask(self, server, who, question, document=DOCUMENT, **kw):
        client = server.client(api_key=KEYS[who])
        r = client.chat.completions.create(model=MODEL_NAME, messages=messages(document, question),
                                           max_tokens=ANSWER_TOKENS, temperature=0, **kw)
        self.seen[who] += cached_of(r.usage)
        return r

    def test_second_question_reuses_the_document_and_answers_as_without_cache(
            self, server, reference_answers):
        first = self.ask(server, "alpha", QUESTIONS[0])
        assert cached_of(first.usage) == 0  # a fresh server has nothing cached
        assert first.choices[0].message.content == reference_answers[QUESTIONS[0]]
        prompt = first.usage.prompt_tokens
        assert prompt > 900, prompt

        second = self.ask(server, "alpha", QUESTIONS[1])
        cached = cached_of(second.usage)
        print(f"second question: {cached} of {second.usage.prompt_tokens} prompt tokens cached")
        assert cached % BLOCK_TOKENS == 0 and 0 < cached < second.usage.prompt_tokens
        # The document is all of the prompt but the question's last ~20 tokens.
        assert cached >= second.usage.prompt_tokens - 48, cached
        assert second.choices[0].message.content == reference_answers[QUESTIONS[1]]

        # The same prompt again: every full block but the one holding the last token
        # (whose logits the answer needs) comes from the cache.
        again = self.ask(server, "alpha", QUESTIONS[0])
        assert cached_of(again.usage) == (prompt - 1) // BLOCK_TOKENS * BLOCK_TOKENS
        assert again.choices[0].message.content == reference_answers[QUESTIONS[0]]

    def test_another_tenant_never_hits_the_first_tenants_blocks(self, server, reference_answers):
        r = self.ask(server, "beta", QUESTIONS[0])
        assert cached_of(r.usage) == 0
        assert r.choices[0].message.content == reference_answers[QUESTIONS[0]]
        # beta's own cache works: its second request hits what its first computed.
        r = self.ask(server, "beta", QUESTIONS[1])
        assert cached_of(r.usage) > 0
        assert r.choices[0].message.content == reference_answers[QUESTIONS[1]]

    def test_another_compression_spec_does_not_share(self, server):
        spec = {"kv_compression": {"policy": "quant-uniform", "ratio": 0.5}}
        r = self.ask(server, "alpha", QUESTIONS[2], extra_body=spec)
        assert cached_of(r.usage) == 0
        r = self.ask(server, "alpha", QUESTIONS[0], extra_body=spec)
        assert cached_of(r.usage) > 0  # the same spec shares
        # A tenant's default compression is its spec: gamma's first request misses, its
        # second hits.
        assert cached_of(self.ask(server, "gamma", QUESTIONS[0]).usage) == 0
        assert cached_of(self.ask(server, "gamma", QUESTIONS[1]).usage) > 0

    def test_streamed_usage_reports_cached_tokens(self, server, reference_answers):
        client = server.client(api_key=KEYS["alpha"])
        pieces, usage = [], None
        for chunk in client.chat.completions.create(
                model=MODEL_NAME, messages=messages(DOCUMENT, QUESTIONS[2]),
                max_tokens=ANSWER_TOKENS, temperature=0, stream=True,
                stream_options={"include_usage": True}):
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
            usage = chunk.usage or usage
        assert usage is not None
        cached = cached_of(usage)
        self.seen["alpha"] += cached
        assert cached > 0 and cached % BLOCK_TOKENS == 0 and cached < usage.prompt_tokens
        assert "".join(pieces) == reference_answers[QUESTIONS[2]]

    def test_grpc_usage_reports_cached_tokens(self, server, stubs):  # noqa: F811
        pb, pb_grpc = stubs[0], stubs[1]
        ch = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        try:
            grpc.channel_ready_future(ch).result(timeout=30)
            stub = pb_grpc.InferenceStub(ch)
            chat = pb.ChatMessages(messages=[pb.ChatMessage(**m)
                                             for m in messages(DOCUMENT, QUESTIONS[1])])
            req = pb.GenerateRequest(model=MODEL_NAME, chat=chat, max_tokens=ANSWER_TOKENS,
                                     temperature=0)
            md = (("authorization", f"Bearer {KEYS['alpha']}"),)
            unary = stub.Complete(req, metadata=md, timeout=120)
            assert unary.usage.cached_tokens > 0
            assert unary.usage.cached_tokens % BLOCK_TOKENS == 0
            assert unary.usage.cached_tokens < unary.usage.prompt_tokens
            last = list(stub.Generate(req, metadata=md, timeout=120))[-1]
            assert last.usage.cached_tokens == unary.usage.cached_tokens  # the same prompt
            self.seen["alpha"] += unary.usage.cached_tokens + last.usage.cached_tokens
            # beta over gRPC hits its own blocks (it asked this question over HTTP).
            md_beta = (("authorization", f"Bearer {KEYS['beta']}"),)
            beta = stub.Complete(req, metadata=md_beta, timeout=120)
            assert beta.usage.cached_tokens > 0
            self.seen["beta"] += beta.usage.cached_tokens
        finally:
            ch.close()

    def test_stats_charge_cached_tokens_to_each_tenant(self, server):
        s = wait_idle(server)
        for who, cached in self.seen.items():
            assert tenant_row(s, who)["cached_prompt_tokens"] == cached, (who, s["tenants"])
        assert tenant_row(s, "flush")["cached_prompt_tokens"] == 0
        samples = server.metric_samples()
        for who, cached in self.seen.items():
            assert server.metric("kvserve_tenant_tokens_total", samples, tenant=who,
                                 kind="cached") == cached
        assert_idle_blocks_are_cached_f16(s)
        assert s["kv_cache"]["blocks_used"] > 0  # the documents stay cached


# --- Accounting under hits, aborts and preemptions --------------------------------------

POOL_BLOCKS = 64  # 1,024 tokens: two ~420-token documents with four answers each overflow it
OUTPUT_TOKENS = 96
SMALL_DOCS = [book_passage(60000, 1700), book_passage(150000, 1700)]
SMALL_QUESTIONS = ["Who speaks first?", "What is the mood of this passage?"]


def completion_prompt(document, question):
    return f"{document}\n\nQuestion: {question}\nAnswer:"


class TestAccounting:

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, request, kvserve_bin, model_path, tenants_file):
        return start_server(request, kvserve_bin, model_path, "--tenants", str(tenants_file),
                            "--kv-cache-bytes", str(POOL_BLOCKS * BLOCK_BYTES),
                            "--prefix-cache", "true", api_key=KEYS["alpha"])

    def test_every_block_is_the_caches_at_idle_after_hits_aborts_and_preemptions(self, server):
        before = stats(server)
        assert before["kv_cache"]["blocks_total"] == POOL_BLOCKS
        # doc x question x copy; copy 1 of two prompts is a stream the client drops.
        plan = [(d, q, c) for d in range(2) for q in range(2) for c in range(2)]
        dropped = {(0, 0, 1), (1, 1, 1)}
        texts, errors, usages = {}, [], {}
        barrier = threading.Barrier(len(plan))

        def run(job):
            d, q, c = job
            client = server.client(api_key=KEYS["alpha"], timeout=300)
            prompt = completion_prompt(SMALL_DOCS[d], SMALL_QUESTIONS[q])
            try:
                barrier.wait(timeout=30)
                # Staggered so that later requests may find their document cached.
                time.sleep(0.4 * (d + 2 * c))
                if job in dropped:
                    stream = client.completions.create(
                        model=MODEL_NAME, prompt=prompt, max_tokens=OUTPUT_TOKENS,
                        temperature=0, stream=True, extra_body={"ignore_eos": True})
                    for i, _ in enumerate(stream):
                        if i >= 5:
                            break
                    stream.close()
                    return
                r = client.completions.create(model=MODEL_NAME, prompt=prompt,
                                              max_tokens=OUTPUT_TOKENS, temperature=0,
                                              extra_body={"ignore_eos": True})
                texts[job] = r.choices[0].text
                usages[job] = r.usage
            except Exception as e:  # reported below with the job
                errors.append((job, repr(e)))

        threads = [threading.Thread(target=run, args=(job,)) for job in plan]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not errors, errors
        assert server.alive()

        s = wait_idle(server)
        preemptions = s["totals"]["preemptions"] - before["totals"]["preemptions"]
        hits = sum(cached_of(u) for u in usages.values())
        print(f"accounting load: {preemptions} preemptions, {hits} cached tokens in "
              f"{len(usages)} completed requests, {s['kv_cache']['blocks_used']} blocks "
              f"cached at idle")
        assert preemptions > 0, "the pool was meant to be too small for every request"
        assert hits > 0, "no request reused a document"
        alpha = tenant_row(s, "alpha")
        assert alpha["preemptions"] == preemptions
        # A recomputed sequence may take its prefix from the cache again, so the tenant's
        # count can exceed what the responses report, never fall short of it.
        assert alpha["cached_prompt_tokens"] >= hits
        assert_idle_blocks_are_cached_f16(s)
        # At most each distinct prompt's full blocks (shared document blocks count once).
        prompt_len = {(d, q): u.prompt_tokens for (d, q, _), u in usages.items()}
        bound = sum(n // BLOCK_TOKENS for n in prompt_len.values())
        assert 0 < s["kv_cache"]["blocks_used"] <= bound, (s["kv_cache"], prompt_len)

        # Preemption, recompute and cache hits never change a greedy result: both copies
        # of a prompt agree, and so does the same prompt asked again alone.
        client = server.client(api_key=KEYS["alpha"])
        for d in range(2):
            for q in range(2):
                done = [texts[(d, q, c)] for c in range(2) if (d, q, c) in texts]
                alone = client.completions.create(
                    model=MODEL_NAME, prompt=completion_prompt(SMALL_DOCS[d], SMALL_QUESTIONS[q]),
                    max_tokens=OUTPUT_TOKENS, temperature=0, extra_body={"ignore_eos": True})
                assert all(t == alone.choices[0].text for t in done), (d, q)

        # A prompt that needs the whole pool: it runs only if every block still in use is
        # an unused cached block the pool can evict. Another tenant's, so nothing matches.
        rng = random.Random(6)
        ids = [rng.randrange(1000, 40000) for _ in range(POOL_BLOCKS * BLOCK_TOKENS - 1)]
        flush = server.client(api_key=KEYS["flush"])
        r = flush.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=1, temperature=0)
        assert r.usage.prompt_tokens == len(ids)
        assert cached_of(r.usage) == 0
        s = wait_idle(server)
        assert_idle_blocks_are_cached_f16(s)
        # Exactly the flush prompt's full blocks remain.
        assert s["kv_cache"]["blocks_used"] == POOL_BLOCKS - 1, s["kv_cache"]
        # The flush prompt again hits all of them.
        r = flush.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=1, temperature=0)
        assert cached_of(r.usage) == (POOL_BLOCKS - 1) * BLOCK_TOKENS
        s = wait_idle(server)
        assert_idle_blocks_are_cached_f16(s)
        assert s["kv_cache"]["blocks_used"] == POOL_BLOCKS - 1, s["kv_cache"]
        assert tenant_row(s, "flush")["cached_prompt_tokens"] == (POOL_BLOCKS - 1) * BLOCK_TOKENS
        # The documents were evicted: asking again computes them afresh.
        r = client.completions.create(
            model=MODEL_NAME, prompt=completion_prompt(SMALL_DOCS[0], SMALL_QUESTIONS[0]),
            max_tokens=4, temperature=0)
        assert cached_of(r.usage) == 0
        assert_idle_blocks_are_cached_f16(wait_idle(server))
        assert server.alive()
