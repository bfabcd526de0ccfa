"""Clients that go away mid-request: the server must abort their work and free every
KV block, then keep serving."""
import json
import random
import socket
import struct
import threading

import pytest

from server_util import MODEL_NAME, start_server

N_REQUESTS = 60
WAVE = 10
# Long enough that a request the server failed to abort would still be running when
# the metrics are checked.
MAX_TOKENS = 2000


@pytest.fixture(scope="module")
def server(request, kvserve_bin, model_path):
    return start_server(request, kvserve_bin, model_path)


def raw_request(srv, body):
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def drop_raw(srv, body, read_bytes, reset):
    """Sends the request, reads about `read_bytes` of the response, and closes the
    socket: with an RST (SO_LINGER 0) or an orderly FIN."""
    sock = raw_request(srv, body)
    got = 0
    while got < read_bytes:
        chunk = sock.recv(min(4096, read_bytes - got))
        if not chunk:
            break
        got += len(chunk)
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def drop_client(srv, body, chunks):
    """The openai client reads `chunks` stream events, then closes the stream."""
    client = srv.client(timeout=60)
    kw = {k: v for k, v in body.items() if k not in ("model", "prompt", "ignore_eos")}
    stream = client.completions.create(model=MODEL_NAME, prompt=body["prompt"],
                                       extra_body={"ignore_eos": True}, **kw)
    for i, _ in enumerate(stream):
        if i + 1 >= chunks:
            break
    stream.close()
    client.close()


def plan(seed=2024):
    rng = random.Random(seed)
    words = "the sea ship whale captain storm harbour night sail island".split()
    out = []
    for i in range(N_REQUESTS):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(3, 120)))
        body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": MAX_TOKENS,
                "temperature": rng.choice([0, 0.8]), "stream": True, "ignore_eos": True}
        kind = rng.choice(["immediately", "after-bytes", "after-chunks"])
        if kind == "immediately":
            out.append(lambda srv, b=body, r=rng.random() < 0.5: drop_raw(srv, b, 0, r))
        elif kind == "after-bytes":
            n = rng.randint(1, 3000)
            out.append(lambda srv, b=body, n=n, r=rng.random() < 0.5: drop_raw(srv, b, n, r))
        else:
            out.append(lambda srv, b=body, k=rng.randint(1, 40): drop_client(srv, b, k))
    return out


def test_dropped_streams_free_everything(server):
    before = server.metric_samples()
    errors = []
    actions = plan()
    for start in range(0, N_REQUESTS, WAVE):
        wave = actions[start:start + WAVE]

        def run(fn):
            try:
                fn(server)
            except Exception as e:  # reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=run, args=(fn,)) for fn in wave]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors
    assert server.alive()
    s = server.wait_for_metrics({"kvserve_requests_running": 0, "kvserve_requests_waiting": 0,
                                 'kvserve_kv_cache_blocks{state="used"}': 0},
                                timeout=10)
    assert server.metric("kvserve_requests_running", s) == 0
    assert server.metric("kvserve_requests_waiting", s) == 0
    assert server.metric("kvserve_kv_cache_blocks", s, state="used") == 0
    assert server.metric("kvserve_kv_cache_used_bytes", s) == 0
    def delta(name, **labels):
        key = (name, frozenset(labels.items()))
        return s.get(key, 0) - before.get(key, 0)

    # No dropped request ran to its 2000 tokens (nor stopped: ignore_eos); the engine
    # aborted them. A request reset before the server read it never reaches the engine,
    # hence "most".
    assert delta("kvserve_requests_total", finish_reason="length") == 0
    assert delta("kvserve_requests_total", finish_reason="stop") == 0
    aborted = delta("kvserve_requests_total", finish_reason="abort")
    assert N_REQUESTS // 2 <= aborted <= N_REQUESTS
    generated = (server.metric("kvserve_generation_tokens_total", s)
                 - server.metric("kvserve_generation_tokens_total", before))
    assert generated < N_REQUESTS * MAX_TOKENS // 4
    r = server.client().completions.create(model=MODEL_NAME, prompt="The sea was", max_tokens=8,
                                           temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"
