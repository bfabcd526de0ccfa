"""The OpenAI-compatible HTTP API through the official `openai` client (and raw HTTP
where the client would not send the request): completions, chat, streaming, stop
strings, seeds, logprobs, n, and the error bodies of bad requests."""
import json
import math

import openai
import pytest
import requests

from server_util import MODEL_NAME, error_of, start_server

STORY = "Once upon a time, in a small village by the sea, there lived"
QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def server(request, kvserve_bin, model_path):
    return start_server(request, kvserve_bin, model_path)


@pytest.fixture(scope="module")
def limited(request, kvserve_bin, model_path):
    """A server with small caps: n <= 2 and 64 tokens of context."""
    return start_server(request, kvserve_bin, model_path, "--max-n", "2", "--max-context", "64")


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def greedy(client, prompt=STORY, **kw):
    kw.setdefault("max_tokens", 24)
    return client.completions.create(model=MODEL_NAME, prompt=prompt, temperature=0, **kw)


def assert_serves(srv):
    """A normal request after an error: the server still answers."""
    r = srv.client().completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=2,
                                        temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens >= 1
    assert srv.alive()


def test_models_lists_the_served_model(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL_NAME]


def test_completion_text_usage_and_length(client):
    r = greedy(client, max_tokens=8, extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.id and r.model == MODEL_NAME
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0 and c.finish_reason == "length"
    assert isinstance(c.text, str) and c.text.strip()
    u = r.usage
    assert u.completion_tokens == 8
    assert u.prompt_tokens > 5
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_greedy_completion_is_deterministic(client):
    assert greedy(client).choices[0].text == greedy(client).choices[0].text


def test_chat_completion(client):
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": QUESTION}], max_tokens=32,
        temperature=0)
    assert r.object == "chat.completion" and r.model == MODEL_NAME
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str) and "Paris" in c.message.content
    assert c.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_completion_equals_the_non_streamed_one(client):
    want = greedy(client, max_tokens=20)
    chunks = list(greedy(client, max_tokens=20, stream=True,
                         stream_options={"include_usage": True}))
    assert len(chunks) >= 3
    *body, last = chunks
    # The usage chunk comes last, with no choices; the others carry no usage.
    assert last.choices == [] and last.usage is not None
    assert all(ch.usage is None for ch in body)
    assert all(ch.object == "text_completion" and ch.id == body[0].id for ch in body)
    text = "".join(c.text for ch in body for c in ch.choices)
    assert text == want.choices[0].text
    finishes = [c.finish_reason for ch in body for c in ch.choices if c.finish_reason]
    assert finishes == [want.choices[0].finish_reason]
    assert last.usage.prompt_tokens == want.usage.prompt_tokens
    assert last.usage.completion_tokens == want.usage.completion_tokens


def test_streamed_completion_without_usage_option_has_no_usage(client):
    chunks = list(greedy(client, max_tokens=4, stream=True))
    assert chunks and all(ch.usage is None for ch in chunks)
    assert all(len(ch.choices) == 1 for ch in chunks)


def test_streamed_chat_equals_the_non_streamed_one(client):
    msgs = [{"role": "user", "content": QUESTION}]
    want = client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=24,
                                          temperature=0)
    chunks = list(client.chat.completions.create(
        model=MODEL_NAME, messages=msgs, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert body[0].choices[0].delta.role == "assistant"
    text = "".join(c.delta.content or "" for ch in body for c in ch.choices)
    assert text == want.choices[0].message.content
    finishes = [c.finish_reason for ch in body for c in ch.choices if c.finish_reason]
    assert finishes == [want.choices[0].finish_reason]
    assert last.usage.completion_tokens == want.usage.completion_tokens
    assert last.usage.prompt_tokens == want.usage.prompt_tokens


def greedy_tokens(client, prompt=STORY, max_tokens=24):
    """The greedy text and its tokens (from logprobs), with ignore_eos so that it is long."""
    r = greedy(client, prompt, max_tokens=max_tokens, logprobs=0,
               extra_body={"ignore_eos": True})
    c = r.choices[0]
    assert "".join(c.logprobs.tokens) == c.text
    return c.text, c.logprobs.tokens


def stop_cases(text, tokens):
    """(name, stop string) pairs whose first occurrence is inside the greedy text: one
    inside a single token, one that spans two tokens."""
    single = next(t.strip() for t in tokens[3:] if len(t.strip()) >= 3)
    k = next(i for i in range(4, len(tokens) - 1)
             if len(tokens[i]) >= 2 and len(tokens[i + 1]) >= 2)
    spanning = tokens[k][-2:] + tokens[k + 1][:2]
    assert text.find(spanning) >= 0 and text.find(single) >= 0
    return [("single-token", single), ("two-token", spanning)]


def test_stop_strings_truncate_the_text(client):
    text, tokens = greedy_tokens(client)
    for name, stop in stop_cases(text, tokens):
        r = greedy(client, max_tokens=24, stop=[stop], extra_body={"ignore_eos": True})
        c = r.choices[0]
        assert c.text == text[:text.find(stop)], name
        assert c.finish_reason == "stop", name


def test_streamed_stop_strings_never_show_the_stop_text(client):
    text, tokens = greedy_tokens(client)
    for name, stop in stop_cases(text, tokens):
        chunks = list(greedy(client, max_tokens=24, stop=stop, stream=True,
                             extra_body={"ignore_eos": True}))
        pieces = [c.text for ch in chunks for c in ch.choices]
        assert "".join(pieces) == text[:text.find(stop)], name
        assert not any(stop in p for p in pieces), name
        finishes = [c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason]
        assert finishes == ["stop"], name


def test_seed_reproducibility(client):
    def sample(seed):
        return client.completions.create(model=MODEL_NAME, prompt=STORY, max_tokens=16,
                                         temperature=1.0, seed=seed,
                                         extra_body={"ignore_eos": True}).choices[0].text
    a, b, c = sample(1234), sample(1234), sample(98765)
    assert a == b
    assert a != c


def test_completion_logprobs(client):
    r = greedy(client, max_tokens=5, logprobs=3, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    if lp.text_offset is not None:
        assert len(lp.text_offset) == 5 and lp.text_offset == sorted(lp.text_offset)
    for tok, tlp, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert tlp <= 0 and math.isfinite(tlp)
        # Distinct tokens can share a text, which the OpenAI dict format merges.
        assert 1 <= len(top) <= 3
        assert all(v <= 0 for v in top.values())
        # Greedy: the chosen token is the most likely one.
        assert tok in top and math.isclose(top[tok], max(top.values()), abs_tol=1e-4)
        assert math.isclose(tlp, top[tok], abs_tol=1e-4)


def test_chat_logprobs(client):
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": QUESTION}], max_tokens=6,
        temperature=0, logprobs=True, top_logprobs=2)
    c = r.choices[0]
    content = c.logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == c.message.content
    for t in content:
        assert t.logprob <= 0 and math.isfinite(t.logprob)
        assert len(t.top_logprobs) == 2
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        assert t.top_logprobs[0].token == t.token
        assert math.isclose(t.top_logprobs[0].logprob, t.logprob, abs_tol=1e-4)


def test_n_choices(client):
    r = client.completions.create(model=MODEL_NAME, prompt=STORY, max_tokens=12, n=2,
                                  temperature=1.0, seed=7, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(c.finish_reason == "length" and c.text for c in r.choices)
    assert r.choices[0].text != r.choices[1].text
    assert r.usage.completion_tokens == 24


def test_streamed_n_choices_equal_the_non_streamed_ones(client):
    kw = dict(model=MODEL_NAME, prompt=STORY, max_tokens=10, n=2, temperature=1.0, seed=11,
              extra_body={"ignore_eos": True})
    want = {c.index: c.text for c in client.completions.create(**kw).choices}
    got, finishes, usage = {0: "", 1: ""}, {}, None
    for ch in client.completions.create(stream=True, stream_options={"include_usage": True},
                                        **kw):
        for c in ch.choices:
            got[c.index] += c.text
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
        usage = ch.usage or usage
    assert got == want
    assert finishes == {0: "length", 1: "length"}
    assert usage.completion_tokens == 20


def test_n_choices_in_chat(client):
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=8, n=2, temperature=1.0, seed=3)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(c.message.role == "assistant" for c in r.choices)


# --- errors ------------------------------------------------------------------


def test_bad_json_is_a_400_error_body(server):
    for body in (b'{"model": "smollm2", "prompt": ', b"[1, 2", b"not json at all"):
        r = requests.post(server.url("/v1/completions"), data=body,
                          headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert error_of(r)["type"] == "invalid_request_error"
    r = requests.post(server.url("/v1/chat/completions"), data=b"{{", timeout=30,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and error_of(r)["type"] == "invalid_request_error"
    assert_serves(server)


def test_wrong_field_types_are_400(server):
    for body in ({"model": MODEL_NAME, "prompt": "x", "max_tokens": "ten"},
                 {"model": MODEL_NAME, "prompt": 12.5},
                 {"model": MODEL_NAME, "messages": "hello"}):
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        r = requests.post(server.url(path), json=body, timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert error_of(r)["type"] == "invalid_request_error"
    assert_serves(server)


def expect_error(call, status, param):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    e = info.value
    assert e.status_code == status, e.response.text
    err = error_of(e.response)
    if status == 400:
        assert err["type"] == "invalid_request_error", err
    if param is not None:
        assert err.get("param") in param, err
    return err


def test_unknown_model_is_404(server, client):
    err = expect_error(lambda: client.completions.create(model="no-such-model", prompt="Hi",
                                                         max_tokens=2), 404, ("model",))
    assert "no-such-model" in err["message"]
    expect_error(lambda: client.chat.completions.create(
        model="no-such-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=2),
        404, ("model",))
    assert_serves(server)


def test_max_tokens_zero_is_400(server, client):
    expect_error(lambda: client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=0),
                 400, ("max_tokens",))
    assert_serves(server)


def test_negative_temperature_is_400(server, client):
    expect_error(lambda: client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2,
                                                   temperature=-1), 400, ("temperature",))
    expect_error(lambda: client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
        temperature=-1), 400, ("temperature",))
    assert_serves(server)


def test_empty_messages_are_400(server, client):
    expect_error(lambda: client.chat.completions.create(model=MODEL_NAME, messages=[],
                                                        max_tokens=2), 400, ("messages",))
    assert_serves(server)


def test_too_many_logprobs_is_400(server, client):
    # The default cap is 20 (--max-logprobs).
    expect_error(lambda: client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2,
                                                   logprobs=1000), 400, ("logprobs",))
    assert_serves(server)


def test_n_over_the_cap_is_400(limited):
    c = limited.client()
    expect_error(lambda: c.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2, n=3),
                 400, ("n",))
    r = c.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2, n=2, temperature=0)
    assert len(r.choices) == 2
    assert_serves(limited)


def test_prompt_over_the_context_is_400(limited):
    c = limited.client()
    long_prompt = " ".join(["word"] * 200)
    expect_error(lambda: c.completions.create(model=MODEL_NAME, prompt=long_prompt,
                                              max_tokens=2), 400,
                 ("prompt", "messages", "max_tokens"))
    expect_error(lambda: c.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": long_prompt}], max_tokens=2),
        400, ("prompt", "messages", "max_tokens"))
    # Prompt + max_tokens over the context is refused up front too.
    expect_error(lambda: c.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=100),
                 400, ("prompt", "messages", "max_tokens"))
    assert_serves(limited)


def test_streamed_request_errors_before_the_stream(server):
    # A bad streamed request is an ordinary JSON error, not an event stream.
    r = requests.post(server.url("/v1/completions"), timeout=30,
                      json={"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 0,
                            "stream": True})
    assert r.status_code == 400 and error_of(r)["param"] == "max_tokens"
    assert_serves(server)


def test_health_and_ready(server):
    assert requests.get(server.url("/health"), timeout=5).status_code == 200
    assert requests.get(server.url("/ready"), timeout=5).status_code == 200
    r = requests.get(server.url("/v1/models"), timeout=5)
    assert r.status_code == 200 and json.loads(r.text)["object"] == "list"
