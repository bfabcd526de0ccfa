"""Tests of the pure parts of bench/longdoc_qa.py: the workload (documents, tenants,
questions, arrivals), the tenants file, the statistics, the tables and the SSE parsing.
The server-facing parts run in the benchmark itself.

Tests that cut real documents use the GGUF's tokenizer when the model file is present
and skip otherwise; the LongBench sample is read from ../shared/data when present.
"""
import hashlib
import os
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import longdoc_qa as lq  # noqa: E402
from kvserve_eval.tasks import longbench  # noqa: E402

SAMPLE = os.path.join(os.path.dirname(ROOT), "shared", "data", lq.DEFAULT_FILE)
MODEL = os.environ.get("KVSERVE_MODEL", os.path.expanduser(
    "~/.cache/kvserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
needs_sample = pytest.mark.skipif(not os.path.isfile(SAMPLE), reason="LongBench sample absent")
needs_model = pytest.mark.skipif(not os.path.isfile(MODEL), reason="model file not present")


def row(context, question, answer="x", dataset="multifieldqa_en", rid=None):
    return {"context": context, "input": question, "answers": [answer], "dataset": dataset,
            "_id": rid or f"{context[:5]}-{question[:5]}"}


def toy_rows():
    # Six documents; "two" and "five" have two rows each.
    rows = []
    for name in ("one", "two", "three", "four", "five", "six"):
        rows.append(row(f"context {name} " * 20, f"question about {name}?"))
        if name in ("two", "five"):
            rows.append(row(f"context {name} " * 20, f"second question about {name}?"))
    return rows


def test_documents_group_rows_by_context_in_file_order():
    docs = lq.documents_from_rows(toy_rows())
    assert [len(d.rows) for d in docs] == [1, 2, 1, 1, 2, 1]
    assert docs[1].rows[1]["input"] == "second question about two?"
    assert len({d.doc_id for d in docs}) == 6
    # The id depends on the context only.
    assert lq.documents_from_rows(toy_rows()[::-1])[-1].doc_id == docs[0].doc_id


@needs_sample
def test_the_sample_has_ten_documents_two_of_them_asked_twice():
    docs = lq.documents_from_rows(longbench.read_rows(SAMPLE))
    assert len(docs) == 10
    assert sorted(len(d.rows) for d in docs) == [1] * 8 + [2, 2]


def test_documents_with_more_rows_go_first_round_robin():
    docs = lq.documents_from_rows(toy_rows())
    tenants = lq.tenant_ids(3)
    assert tenants == ["tenant-a", "tenant-b", "tenant-c"]
    got = lq.assign_documents(docs, tenants, 2)
    assert [len(v) for v in got.values()] == [2, 2, 2]
    # "two" and "five" (two rows each) first, then file order.
    assert [d.context.split()[1] for d in got["tenant-a"]] == ["two", "three"]
    assert [d.context.split()[1] for d in got["tenant-b"]] == ["five", "four"]
    assert [d.context.split()[1] for d in got["tenant-c"]] == ["one", "six"]
    with pytest.raises(ValueError, match="needs 8 distinct documents"):
        lq.assign_documents(docs, lq.tenant_ids(4), 2)


def test_plan_asks_each_document_its_rows_then_generic_questions():
    docs = lq.documents_from_rows(toy_rows())
    assignment = lq.assign_documents(docs, lq.tenant_ids(2), 2)
    plan = lq.build_plan(assignment, questions_per_doc=4, rate=1.0, seed=3)
    assert len(plan) == 4 * 4
    assert [p.index for p in plan] == list(range(len(plan)))
    for tenant, ds in assignment.items():
        for d in ds:
            mine = [p for p in plan if p.doc_id == d.doc_id]
            assert {p.tenant for p in mine} == {tenant}
            scored = [p for p in mine if p.row is not None]
            assert sorted(p.question for p in scored) == sorted(r["input"] for r in d.rows)
            generic = [p.question for p in mine if p.row is None]
            assert sorted(generic) == sorted(lq.GENERIC_QUESTIONS[:4 - len(d.rows)])
    # A document with more rows than questions_per_doc keeps all its rows.
    plan1 = lq.build_plan(assignment, questions_per_doc=1, rate=1.0, seed=3)
    assert len(plan1) == sum(len(d.rows) for ds in assignment.values() for d in ds)
    assert all(p.row is not None for p in plan1)
    with pytest.raises(ValueError, match="questions per document"):
        lq.build_plan(assignment, questions_per_doc=len(lq.GENERIC_QUESTIONS) + 3, rate=1.0,
                      seed=3)


def test_plan_is_deterministic_and_shuffled_by_the_seed():
    assignment = lq.assign_documents(lq.documents_from_rows(toy_rows()), lq.tenant_ids(3), 2)

    def key(plan):
        return [(p.tenant, p.question, p.arrival_s) for p in plan]

    a = lq.build_plan(assignment, 4, 0.5, seed=1)
    assert key(a) == key(lq.build_plan(assignment, 4, 0.5, seed=1))
    b = lq.build_plan(assignment, 4, 0.5, seed=2)
    assert key(a) != key(b)
    assert sorted((p.tenant, p.question) for p in a) == sorted((p.tenant, p.question) for p in b)
    # Tenants interleave: the first half of the arrivals is not one tenant's.
    assert len({p.tenant for p in a[:len(a) // 2]}) > 1


def test_arrivals_are_poisson_at_the_rate():
    times = lq.arrival_times(4000, 2.0, random.Random(0))
    assert times[0] == 0.0
    assert all(b >= a for a, b in zip(times, times[1:]))
    mean_gap = times[-1] / (len(times) - 1)
    assert 0.45 < mean_gap < 0.55
    gaps = [b - a for a, b in zip(times, times[1:])]
    # Exponential: about 1 - 1/e of the gaps are shorter than the mean.
    assert 0.58 < sum(g < 0.5 for g in gaps) / len(gaps) < 0.68
    assert lq.arrival_times(5, 0, random.Random(0)) == [0.0] * 5


def test_questions_over_a_document_share_its_prompt_prefix():
    context = "Some long document text. " * 50
    a = lq.prompt_for("multifieldqa_en", context, "Who?")
    b = lq.prompt_for("multifieldqa_en", context, "Name the author.")
    shared = os.path.commonprefix([a, b])
    assert shared.endswith("Question: ") and context in shared
    assert a == longbench.format_prompt({"dataset": "multifieldqa_en", "context": context,
                                         "input": "Who?"})


def test_tenants_file_stores_key_hashes_and_the_default_compression():
    cfg = lq.tenants_config(["tenant-a", "tenant-b"], lq.COMPRESSION)
    ids = [t["id"] for t in cfg["tenants"]]
    assert ids == ["tenant-a", "tenant-b", lq.ADMIN]
    for t in cfg["tenants"]:
        want = "sha256:" + hashlib.sha256(lq.key_of(t["id"]).encode()).hexdigest()
        assert t["api_keys"] == [want]
        assert lq.key_of(t["id"]) not in str(cfg)  # never the key itself
    assert cfg["tenants"][0]["compression"] == lq.COMPRESSION
    assert "compression" not in cfg["tenants"][2]  # the admin tenant keeps the default
    assert all("compression" not in t for t in lq.tenants_config(["x"], None)["tenants"])
    assert set(lq.CONFIGS) == {"off/none", "on/none", "off/attention-guided@0.25",
                               "on/attention-guided@0.25"}


def test_percentile_interpolates():
    assert lq.percentile([], 50) is None
    assert lq.percentile([3.0], 95) == 3.0
    assert lq.percentile([4, 1, 3, 2], 50) == 2.5
    assert lq.percentile(list(range(101)), 95) == 95
    assert lq.percentile([0, 10], 95) == pytest.approx(9.5)


def result(tenant, ttft, sent, done, out=10, prompt=100, cached=0, kv=None, kv_f16=None,
           score=None, error=None):
    r = {"tenant": tenant, "sent_s": sent, "done_s": done, "scored": score is not None}
    if score is not None:
        r["score"] = score
    if error:
        r["error"] = error
        return r
    r.update({"ttft_s": ttft, "latency_s": done - sent, "completion_tokens": out,
              "prompt_tokens": prompt, "cached_tokens": cached, "kv_bytes": kv,
              "kv_bytes_uncompressed": kv_f16})
    return r


def test_summaries_per_configuration_and_tenant():
    results = [
        result("a", 1.0, 0.0, 4.0, out=20, prompt=1000, cached=0, kv=100, kv_f16=400, score=0.5),
        result("a", 3.0, 1.0, 6.0, out=10, prompt=1000, cached=992, kv=400, kv_f16=400),
        result("b", 2.0, 2.0, 10.0, out=30, prompt=2000, cached=0, score=1.0),
        result("b", None, 3.0, 5.0, score=0.7, error="HTTP 500"),
    ]
    s = lq.summarize_requests(results)
    assert (s["requests"], s["errors"], s["scored"]) == (4, 1, 3)
    assert s["ttft_p50_s"] == 2.0 and s["ttft_p95_s"] == pytest.approx(2.9)
    assert s["span_s"] == 10.0 and s["output_tokens"] == 60 and s["output_tok_per_s"] == 6.0
    assert s["cached_share"] == pytest.approx(992 / 4000)
    assert s["saved_bytes_finished"] == 300
    assert s["mean_f1"] == pytest.approx((0.5 + 1.0 + 0.7) / 3)  # the failed one as scored

    before = {"totals": {"preemptions": 2, "kv_compression_failures": 0},
              "tenants": [{"tenant": "a", "cached_prompt_tokens": 16, "preemptions": 1}]}
    after = {"totals": {"preemptions": 5, "kv_compression_failures": 1},
             "tenants": [{"tenant": "a", "cached_prompt_tokens": 1008, "preemptions": 3},
                         {"tenant": "b", "cached_prompt_tokens": 0, "preemptions": 1}]}
    peaks = {"used_bytes": 9000, "saved_bytes": 300, "running": 3, "waiting": 1,
             "tenant_kv_bytes": {"a": 5000}}
    cfg = lq.summarize_config(results, ["a", "b"], peaks, before, after)
    o = cfg["overall"]
    assert (o["peak_kv_bytes"], o["peak_saved_bytes"], o["preemptions"]) == (9000, 300, 3)
    assert o["kv_compression_failures"] == 1
    a, b = cfg["tenants"]["a"], cfg["tenants"]["b"]
    assert (a["requests"], a["output_tok_per_s"], a["cached_tokens"]) == (2, 5.0, 992)
    assert (a["server_cached_prompt_tokens"], a["preemptions"], a["peak_kv_bytes"]) == \
        (992, 2, 5000)
    assert (b["requests"], b["errors"], b["peak_kv_bytes"], b["preemptions"]) == (2, 1, 0, 1)
    assert b["mean_f1"] == pytest.approx(0.85)

    table = lq.markdown({"configs": {"on/none": cfg}})
    lines = table.splitlines()
    assert lines[0].startswith("| configuration (cache / compression) |")
    overall = [ln for ln in lines if ln.startswith("| on/none | 10 |")]
    assert len(overall) == 1 and "| 2.00 | 2.90 | 6.0 | 25% | 0.0 |" in overall[0]
    assert overall[0].endswith("| 3 | 0.733 (3) | 1 errors")
    assert sum(ln.startswith("| on/none | a |") or ln.startswith("| on/none | b |")
               for ln in lines) == 2


def test_sse_events_parse_data_lines_until_done():
    lines = [b"data: {\"a\": 1}\n", b"\n", b": a comment\n", "data: {\"b\": 2}",
             b"data: [DONE]\n", b"data: {\"c\": 3}\n"]
    assert list(lq.sse_events(lines)) == [{"a": 1}, {"b": 2}]


def test_quick_mode_is_small():
    a = lq.parse_args(["--quick"])
    assert (a.tenants, a.docs_per_tenant, a.questions_per_doc) == (2, 1, 2)
    assert (a.doc_tokens, a.max_new_tokens) == (800, 16)
    d = lq.parse_args([])
    assert (d.tenants, d.docs_per_tenant, d.questions_per_doc, d.doc_tokens) == (3, 3, 4, 3000)
    assert d.configs == list(lq.CONFIGS)
    with pytest.raises(SystemExit):
        lq.parse_args(["--configs", "on/nothing"])


@needs_model
@needs_sample
def test_documents_are_cut_to_the_token_budget():
    docs = lq.documents_from_rows(longbench.read_rows(SAMPLE))[:3]
    tok = lq.haystack.load_tokenizer(MODEL)
    contexts = lq.prepare_documents(docs, 500, tok)
    for d in docs:
        dataset, context = contexts[d.doc_id]
        assert dataset == "multifieldqa_en"
        assert tok.count(context) <= 500
        # The middle goes; the start and the end stay.
        assert d.context.startswith(context[:200]) and d.context.endswith(context[-200:])
