"""Tests of bench/kvserve_eval/tasks/longbench.py: prompts, truncation, routing, scoring.

The tokenizer tests use the real GGUF's tokenizer when the model file is present (as the
task does) and skip otherwise; everything else runs on fakes.
"""
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from kvserve_eval.tasks import base  # noqa: E402
from kvserve_eval.tasks import longbench as lb  # noqa: E402

MODEL = os.environ.get("KVSERVE_MODEL", os.path.expanduser(
    "~/.cache/kvserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
DATA_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data")
SAMPLE = os.path.join(DATA_DIR, "longbench", "multifieldqa_en.sample12.jsonl")

needs_model = pytest.mark.skipif(not os.path.isfile(MODEL), reason="model file not present")


class WordTokenizer:
    """A stand-in tokenizer: every white-space separated word is one token. Like the real
    pre-tokenizer, its word spans cover the text without gaps (a word owns the spaces
    before it)."""

    add_bos = False
    bos_id = None

    def word_token_counts(self, text):
        out, begin = [], 0
        for m in re.finditer(r"\s*\S+", text):
            out.append((begin, m.end(), 1))
            begin = m.end()
        return out

    def count(self, text):
        return len(text.split())


class FakeClient:
    """Records requests; answers from a table keyed by the question (in the prompt)."""

    def __init__(self, answers, usage=None):
        self.answers = answers
        self.usage = usage or {"prompt_tokens": 10, "completion_tokens": 3,
                               "kv_bytes": 1000, "kv_bytes_uncompressed": 4000,
                               "kv_compression_ratio": 0.25}
        self.calls = []

    def _answer(self, prompt):
        for question, answer in self.answers.items():
            if question in prompt:
                return answer
        return "no idea"

    def complete(self, prompt, max_tokens=16, kv_compression=None, temperature=0.0, **extra):
        self.calls.append(("completion", prompt, max_tokens, kv_compression, temperature))
        return {"choices": [{"text": self._answer(prompt)}], "usage": dict(self.usage)}

    def chat(self, messages, max_tokens=16, kv_compression=None, temperature=0.0, **extra):
        assert len(messages) == 1 and messages[0]["role"] == "user"
        prompt = messages[0]["content"]
        self.calls.append(("chat", prompt, max_tokens, kv_compression, temperature))
        return {"choices": [{"message": {"role": "assistant", "content": self._answer(prompt)}}],
                "usage": dict(self.usage)}


def row(dataset="multifieldqa_en", question="Who won?", context="Some text.",
        answers=("Vice Admiral.",), _id="id0", all_classes=None):
    return {"input": question, "context": context, "answers": list(answers),
            "dataset": dataset, "all_classes": all_classes, "_id": _id, "length": 3}


# --- templates and tables -----------------------------------------------------------------

def test_multifieldqa_prompt_is_longbench_template():
    prompt = lb.format_prompt(row(question="What is X?", context="X is a letter."))
    assert prompt == ("Read the following text and answer briefly.\n\nX is a letter.\n\n"
                      "Now, answer the following question based on the above text, only give "
                      "me the answer and do not output any other words.\n\n"
                      "Question: What is X?\nAnswer:")


def test_braces_in_context_are_kept_verbatim():
    # Code and LaTeX contexts contain braces; str.format would fail or substitute them.
    prompt = lb.format_prompt(row(context="f(x) = {a}{input} {context} }{", question="Q?"))
    assert "f(x) = {a}{input} {context} }{" in prompt
    assert prompt.endswith("Question: Q?\nAnswer:")


def test_tables_cover_the_english_datasets():
    english = {"narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique",
               "gov_report", "qmsum", "multi_news", "trec", "triviaqa", "samsum",
               "passage_count", "passage_retrieval_en", "lcc", "repobench-p"}
    assert set(lb.DATASET_PROMPT) == english
    assert set(lb.DATASET_MAXLEN) == english
    assert lb.DATASET_MAXLEN["multifieldqa_en"] == 64
    assert lb.DATASET_MAXLEN["gov_report"] == 512
    for dataset, template in lb.DATASET_PROMPT.items():
        assert "{context}" in template, dataset


def test_chat_routing_follows_longbench():
    for dataset in ("trec", "triviaqa", "samsum", "lcc", "repobench-p"):
        assert not lb.uses_chat(dataset)
    for dataset in ("multifieldqa_en", "narrativeqa", "gov_report", "passage_count",
                    "multifieldqa_en_e"):
        assert lb.uses_chat(dataset)


def test_code_datasets_are_refused_up_front():
    with pytest.raises(ValueError, match="no metric"):
        lb.check_dataset("lcc")
    with pytest.raises(ValueError, match="not supported"):
        lb.check_dataset("dureader")
    lb.check_dataset("multifieldqa_en")  # no raise


# --- truncation ----------------------------------------------------------------------------

def test_truncation_keeps_head_and_tail_with_word_tokenizer():
    text = " ".join(f"w{i}" for i in range(100))
    out, n, truncated = lb.truncate_middle(text, 10, WordTokenizer())
    assert truncated and n == 10
    assert out.split() == [f"w{i}" for i in range(5)] + [f"w{i}" for i in range(95, 100)]


def test_short_text_is_not_truncated():
    out, n, truncated = lb.truncate_middle("a b c", 10, WordTokenizer())
    assert (out, n, truncated) == ("a b c", 3, False)


@needs_model
def test_truncation_in_model_tokens_stays_within_budget():
    tok = lb._load_tokenizer(MODEL)
    head = "HEADSTART instruction sentence. "
    tail = " Question: where is the TAILEND?"
    text = head + " ".join(f"filler{i} word." for i in range(3000)) + tail
    total = tok.count(text)
    for budget in (100, 501, 2000):
        out, n, truncated = lb.truncate_middle(text, budget, tok)
        assert truncated
        assert n == tok.count(out)
        assert budget - 8 <= n <= budget < total
        assert out.startswith(head)
        assert out.endswith(tail)
        # out = a prefix of text + a suffix of text, the prefix about half the budget.
        k = len(os.path.commonprefix([text, out]))
        assert text.endswith(out[k:])
        assert budget // 2 - 8 <= tok.count(text[:k]) <= budget // 2 + 1


# --- scoring through a fake client ---------------------------------------------------------

def test_scores_fake_answers_with_hand_computed_f1():
    rows = [
        row(question="Rank?", answers=["Vice Admiral."], _id="a"),
        # prediction "admiral of fleet" vs "Vice Admiral": normalised tokens
        # [admiral, of, fleet] vs [vice, admiral]: overlap 1, P = 1/3, R = 1/2, F1 = 0.4
        row(question="Title?", answers=["Vice Admiral"], _id="b"),
        # two references: the best one counts ("jacob c landau" exact -> 1.0)
        row(question="Husband?", answers=["Someone Else", "Jacob C. Landau."], _id="c"),
        row(question="Unknown?", answers=["Paris"], _id="d"),
    ]
    client = FakeClient({"Rank?": "Vice Admiral", "Title?": "The admiral of the fleet",
                         "Husband?": "Jacob C. Landau", "Unknown?": "London"})
    items = lb.prepare(rows, WordTokenizer(), max_context_tokens=7500)
    results = [lb.evaluate(client, item, {"policy": "h2o", "ratio": 0.25}) for item in items]
    values = {r.item_id: r.value for r in results}
    assert values == pytest.approx({"a": 1.0, "b": 0.4, "c": 1.0, "d": 0.0})
    for r in results:
        assert r.metric == "qa_f1" and r.setting == "dataset=multifieldqa_en"
        assert r.task == "longbench"
        assert r.kv_ratio == 0.25 and r.kv_bytes == 1000
        assert "prediction" in r.extra and r.extra["route"] == "chat"
    # multifieldqa_en is a chat dataset: every request went through chat, greedy, 64 tokens.
    assert [c[0] for c in client.calls] == ["chat"] * 4
    assert all(c[2] == 64 and c[3] == {"policy": "h2o", "ratio": 0.25} and c[4] == 0
               for c in client.calls)


def test_few_shot_dataset_goes_to_completions_and_scores_first_line():
    r = row(dataset="triviaqa", question="Q: capital of France?", answers=["Paris"],
            context="Q: x?\nA: y")
    client = FakeClient({"capital of France": "Paris\nQ: next question? Answer: Rome"})
    item = lb.prepare([r], WordTokenizer(), 7500)[0]
    result = lb.evaluate(client, item, None)
    assert client.calls[0][0] == "completion" and client.calls[0][2] == 32
    assert result.value == 1.0  # only the first line is scored for triviaqa
    assert result.extra["route"] == "completion"


def test_failed_request_is_a_zero_item_with_error():
    class Failing(FakeClient):
        def chat(self, *args, **kwargs):
            return {"error": {"message": "prompt too long", "status": 400}}

    item = lb.prepare([row()], WordTokenizer(), 7500)[0]
    result = lb.evaluate(Failing({}), item, None)
    assert result.value == 0.0 and "prompt too long" in result.extra["error"]


def test_chat_fallback_posts_to_chat_completions(monkeypatch):
    # A client without a chat method (kvserve_eval.client.Client today): the task posts the
    # chat request itself to client.url.
    from kvserve_eval import client as client_module
    seen = {}

    def fake_http_json(url, body=None, timeout=30.0):
        seen["url"], seen["body"] = url, body
        return 200, {"choices": [{"message": {"content": "ok"}}], "usage": {}}

    monkeypatch.setattr(client_module, "http_json", fake_http_json)

    class Plain:
        url, model, timeout = "http://127.0.0.1:1", None, 5.0

    response = lb.chat_completion(Plain(), [{"role": "user", "content": "hi"}], max_tokens=7,
                                  kv_compression={"policy": "snapkv", "ratio": 0.5})
    assert seen["url"] == "http://127.0.0.1:1/v1/chat/completions"
    assert seen["body"]["max_tokens"] == 7 and seen["body"]["temperature"] == 0.0
    assert seen["body"]["kv_compression"] == {"policy": "snapkv", "ratio": 0.5}
    assert response["choices"][0]["message"]["content"] == "ok"


def test_item_id_without_id_is_stable_hash():
    a = row(_id=None)
    b = dict(a)
    assert lb.item_id_of(a) == lb.item_id_of(b)
    assert lb.item_id_of(a) != lb.item_id_of(row(_id=None, question="Other?"))


# --- the task over a file -------------------------------------------------------------------

def test_run_reads_file_limits_rows_and_uses_setting(tmp_path, monkeypatch):
    path = tmp_path / "mini.jsonl"
    rows = [row(question=f"Q{i}?", _id=f"r{i}", answers=[f"answer {i}"]) for i in range(5)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setattr(lb, "_load_tokenizer", lambda model: WordTokenizer())
    client = FakeClient({f"Q{i}?": f"answer {i}" if i % 2 == 0 else "wrong" for i in range(5)})
    ctx = base.EvalContext(client=client, setting=base.Setting("streaming", 0.5),
                           data_dir=str(tmp_path), model_path="unused", seed=0, concurrency=2,
                           log=lambda msg: None)
    results = lb.TASK.run(ctx, {"files": ["mini.jsonl"], "limit": 3,
                                "max_context_tokens": 7500, "max_new_tokens": None})
    assert [r.item_id for r in results] == ["r0", "r1", "r2"]
    assert [r.value for r in results] == [1.0, 0.0, 1.0]
    assert all(c[3] == {"policy": "streaming", "ratio": 0.5} for c in client.calls)


@needs_model
@pytest.mark.skipif(not os.path.isfile(SAMPLE), reason="LongBench sample not present")
def test_real_sample_file_prepares_within_budget():
    rows = lb.read_rows(SAMPLE)
    assert len(rows) == 12 and all(r["dataset"] == "multifieldqa_en" for r in rows)
    tok = lb._load_tokenizer(MODEL)
    items = lb.prepare(rows, tok, 7500)
    assert any(item.truncated for item in items) and not all(item.truncated for item in items)
    for item in items:
        assert item.chat and item.max_new_tokens == 64
        assert item.prompt_tokens <= 7500
        assert item.prompt.startswith("Read the following text and answer briefly.")
        assert item.prompt.endswith(f"Question: {item.row['input']}\nAnswer:")
    assert len({item.item_id for item in items}) == 12
