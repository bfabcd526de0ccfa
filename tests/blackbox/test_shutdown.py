"""SIGTERM with streams in flight: the server drains. /ready turns 503 at once, new
requests are refused with 503 (gRPC: UNAVAILABLE, health NOT_SERVING), the streams
already running finish, and the process exits 0; what is still running when
--drain-timeout is over ends with an SSE error event, and the process still exits 0."""
import json
import signal
import threading
import time

import grpc
import requests

from server_util import MODEL_NAME, start_server

PROMPT = "The harbour was quiet that night, and the old captain"
STREAM_TOKENS = 150
DRAIN_TIMEOUT_S = 20
# How long the process may take to exit beyond its drain timeout (the HTTP and gRPC
# servers stop, the model is unloaded).
EXIT_MARGIN_S = 15

# grpc.health.v1 by hand, so that this test needs no generated code:
# HealthCheckRequest{service: ""} is empty; HealthCheckResponse{status: NOT_SERVING}.
HEALTH_NOT_SERVING = b"\x08\x02"


def generate_request_bytes(prompt):
    """kvserve.v1.GenerateRequest{prompt: prompt} (field 2, a short string); the empty
    model selects the server's."""
    data = prompt.encode()
    assert len(data) < 128
    return b"\x12" + bytes([len(data)]) + data


class Stream(threading.Thread):
    """One streaming completion read by the official client on its own thread."""

    def __init__(self, srv, max_tokens):
        super().__init__(daemon=True)
        self.client = srv.client(timeout=120)
        self.max_tokens = max_tokens
        self.first_chunk = threading.Event()
        self.text, self.finish, self.usage, self.error = [], None, None, None

    def run(self):
        try:
            for ch in self.client.completions.create(
                    model=MODEL_NAME, prompt=PROMPT, max_tokens=self.max_tokens, temperature=0,
                    stream=True, stream_options={"include_usage": True},
                    extra_body={"ignore_eos": True}):
                for c in ch.choices:
                    self.text.append(c.text)
                    self.finish = c.finish_reason or self.finish
                self.usage = ch.usage or self.usage
                self.first_chunk.set()
        except Exception as e:  # reported by the test's asserts
            self.error = e
        finally:
            self.first_chunk.set()
            self.client.close()


def wait_for_exit(srv, timeout):
    srv.proc.wait(timeout=timeout)
    return srv.proc.returncode


def test_sigterm_drains_running_streams_and_refuses_new_requests(request, kvserve_bin,
                                                                model_path):
    srv = start_server(request, kvserve_bin, model_path, "--drain-timeout",
                       str(DRAIN_TIMEOUT_S))
    streams = [Stream(srv, STREAM_TOKENS) for _ in range(2)]
    for s in streams:
        s.start()
    for s in streams:
        assert s.first_chunk.wait(timeout=120), "no first chunk"
        assert s.error is None, s.error

    sent = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    # Readiness turns as soon as the signal is handled, so that the load balancer
    # stops sending requests; the generous bound only guards against a hang.
    while True:
        ready = requests.get(srv.url("/ready"), timeout=1)
        if ready.status_code == 503:
            break
        assert ready.status_code == 200
        assert time.monotonic() - sent < 10.0, "/ready still 200 ten seconds after SIGTERM"
        time.sleep(0.02)
    assert ready.json() == {"status": "not_ready"}

    # New requests are refused with a message that says why, over HTTP...
    r = requests.post(srv.url("/v1/completions"), timeout=30,
                      json={"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 4})
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert "draining" in err["message"], err
    assert err["type"] == "server_error"
    r = requests.post(srv.url("/v1/chat/completions"), timeout=30, json={
        "model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert r.status_code == 503, r.text
    # ...and over gRPC, whose health check reports NOT_SERVING like /ready.
    with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as ch:
        complete = ch.unary_unary("/kvserve.v1.Inference/Complete")
        try:
            complete(generate_request_bytes(PROMPT), timeout=30)
            raise AssertionError("gRPC Complete succeeded while draining")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
            assert "draining" in e.details(), e.details()
        check = ch.unary_unary("/grpc.health.v1.Health/Check")
        deadline = time.monotonic() + 10
        while check(b"", timeout=10) != HEALTH_NOT_SERVING:
            assert time.monotonic() < deadline, "gRPC health still SERVING while draining"
            time.sleep(0.05)

    # The streams that were running finish in full.
    for s in streams:
        s.join(timeout=DRAIN_TIMEOUT_S + EXIT_MARGIN_S)
        assert not s.is_alive(), "stream still running"
        assert s.error is None, repr(s.error)
        assert s.finish == "length"
        assert s.usage is not None and s.usage.completion_tokens == STREAM_TOKENS
        assert "".join(s.text)
    assert wait_for_exit(srv, DRAIN_TIMEOUT_S + EXIT_MARGIN_S) == 0
    log = srv.log_text()
    assert "SIGTERM: draining 2 request(s)" in log, log[-2000:]
    assert "drained; shutting down" in log


def test_drain_timeout_ends_long_streams_with_an_error_event(request, kvserve_bin, model_path):
    srv = start_server(request, kvserve_bin, model_path, "--drain-timeout", "1")
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 2000, "temperature": 0,
            "stream": True, "ignore_eos": True}
    with requests.post(srv.url("/v1/completions"), json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        events = []
        lines = r.iter_lines()
        for line in lines:  # up to the first token
            if line.startswith(b"data: "):
                events.append(line[len(b"data: "):])
                break
        srv.proc.send_signal(signal.SIGTERM)
        for line in lines:
            if line.startswith(b"data: "):
                events.append(line[len(b"data: "):])
    assert events[-1] == b"[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    tokens = [c for c in chunks if "choices" in c]
    errors = [c for c in chunks if "error" in c]
    assert len(errors) == 1 and chunks[-1] is errors[0], chunks[-3:]
    assert "shutting down" in errors[0]["error"]["message"]
    assert 1 <= len(tokens) < 2000
    assert all(c["choices"][0]["finish_reason"] is None for c in tokens)
    assert wait_for_exit(srv, 1 + EXIT_MARGIN_S) == 0
    log = srv.log_text()
    assert "drain timeout of 1 s reached with 1 request(s) still in flight" in log, log[-2000:]


def test_second_signal_exits_at_once(request, kvserve_bin, model_path):
    srv = start_server(request, kvserve_bin, model_path, "--drain-timeout",
                       str(DRAIN_TIMEOUT_S))
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 2000, "temperature": 0,
            "stream": True, "ignore_eos": True}
    with requests.post(srv.url("/v1/completions"), json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        # One iterator kept open for the whole test: a discarded generator
        # closes the response, and the server would see the client leave.
        lines = r.iter_lines()
        for line in lines:
            if line.startswith(b"data: "):
                break
        srv.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while requests.get(srv.url("/ready"), timeout=5).status_code != 503:
            assert time.monotonic() < deadline, "/ready still 200 after SIGTERM"
            time.sleep(0.05)
        # Draining, with a long request left: the second signal does not wait for it.
        srv.proc.send_signal(signal.SIGINT)
        assert wait_for_exit(srv, EXIT_MARGIN_S) == 1
