"""API keys and tenants on the real server (`kvserve serve --tenants FILE`), issue #6.

Every HTTP route but /health, and every gRPC Inference method, refuses no key, a wrong key
and a malformed Authorization; each tenant's own key works and charges that tenant; the
official openai client works with a key and raises AuthenticationError with a wrong one;
a tenant's default compression applies to its requests; a tenant's full queue is 429 with
Retry-After; `kvserve hash-key` makes the hashes; SIGHUP reloads the file (a new key works,
a removed key stops, a malformed file keeps the old keys, a stream in flight completes).
"""
import base64
import hashlib
import json
import os
import signal
import subprocess
import threading
import time

import grpc
import openai
import pytest
import requests

from server_util import MODEL_NAME, start_server
from test_grpc_api import stubs  # noqa: F401  (the generated gRPC modules, a fixture)

KEYS = {"acme": "acme-key-1", "beta": "beta-key-1", "tiny": "tiny-key-1"}
WRONG = "not-a-key-of-anyone"
# About 14 tokens; repeated to ~420, long enough for compression to act outside the
# protected sink and recent window (as in test_grpc_api.py).
KV_SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river. "
ACME_COMPRESSION = {"policy": "attention-guided", "ratio": 0.25}

HTTP_ROUTES = [
    ("GET", "/ready", None),
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{MODEL_NAME}", None),
    ("POST", "/v1/completions", {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 2}),
    ("POST", "/v1/chat/completions",
     {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    ("GET", "/metrics", None),
    ("GET", "/v1/stats", None),
    ("GET", "/dashboard", None),
]


def hash_key(kvserve_bin, key):
    r = subprocess.run([kvserve_bin, "hash-key"], input=key, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def tenant(kvserve_bin, tenant_id, keys, **limits):
    return {"id": tenant_id, "api_keys": [hash_key(kvserve_bin, k) for k in keys], **limits}


def write_tenants(path, tenants):
    # Written to a new file and renamed over the old, as a config manager (or the kubelet
    # for a Secret) does, so the server never reads half a file.
    tmp = str(path) + ".new"
    with open(tmp, "w") as f:
        json.dump({"tenants": tenants}, f)
    os.replace(tmp, path)


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def call(server, method, path, body, headers):
    if method == "GET":
        return requests.get(server.url(path), headers=headers, timeout=120)
    return requests.post(server.url(path), json=body, headers=headers, timeout=120)


def assert_401(r, what):
    assert r.status_code == 401, (what, r.status_code, r.text)
    assert r.json() == {"error": {"message": r.json()["error"]["message"],
                                  "type": "invalid_request_error", "param": None,
                                  "code": "invalid_api_key"}}, what
    assert r.headers["WWW-Authenticate"].startswith("Bearer"), what


def tenant_stats(server, tenant_id):
    r = requests.get(server.url("/v1/stats"), headers=bearer(KEYS["acme"]), timeout=10)
    assert r.status_code == 200, r.text
    rows = [t for t in r.json()["tenants"] if t["tenant"] == tenant_id]
    assert len(rows) == 1, r.json()["tenants"]
    return rows[0]


@pytest.fixture(scope="module")
def tenants_file(tmp_path_factory, kvserve_bin):
    path = tmp_path_factory.mktemp("tenants") / "tenants.json"
    write_tenants(path, [
        tenant(kvserve_bin, "acme", [KEYS["acme"]], kv_budget_bytes=268435456, max_concurrent=8,
               max_queued=32, weight=1, compression=ACME_COMPRESSION),
        tenant(kvserve_bin, "beta", [KEYS["beta"]], weight=2),
        # A tenant that can run one request and queue one more.
        tenant(kvserve_bin, "tiny", [KEYS["tiny"]], max_concurrent=1, max_queued=1),
    ])
    return path


@pytest.fixture(scope="module")
def server(request, kvserve_bin, model_path, tenants_file):
    return start_server(request, kvserve_bin, model_path, "--tenants", str(tenants_file),
                        "--kv-cache-bytes", "128MiB", api_key=KEYS["acme"])


def test_hash_key_prints_the_sha256_of_stdin(kvserve_bin):
    want = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_key(kvserve_bin, "abc") == want
    assert hash_key(kvserve_bin, "abc\n") == want  # a final newline is not part of the key
    bad = subprocess.run([kvserve_bin, "hash-key"], input="two words", capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and "printable ASCII without spaces" in bad.stderr


@pytest.mark.parametrize("method,path,body", HTTP_ROUTES, ids=[p for _, p, _ in HTTP_ROUTES])
def test_every_http_route_needs_a_key(server, method, path, body):
    for headers, what in [({}, "no key"), (bearer(WRONG), "wrong key"),
                          ({"Authorization": KEYS["acme"]}, "no scheme"),
                          ({"Authorization": f"Token {KEYS['acme']}"}, "other scheme"),
                          (bearer(hash_key_of_acme()), "the stored hash instead of the key")]:
        assert_401(call(server, method, path, body, headers), f"{method} {path} with {what}")
    for name in ("acme", "beta"):  # each tenant's own key
        r = call(server, method, path, body, bearer(KEYS[name]))
        assert r.status_code == 200, (method, path, name, r.text)


def hash_key_of_acme():
    return "sha256:" + hashlib.sha256(KEYS["acme"].encode()).hexdigest()


def test_health_and_cors_preflight_need_no_key(server):
    r = requests.get(server.url("/health"), timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = requests.options(server.url("/v1/chat/completions"), timeout=10)
    assert r.status_code == 204


def test_dashboard_offers_a_browser_login_and_takes_the_key_as_password(server):
    r = requests.get(server.url("/dashboard"), timeout=10)
    challenges = r.raw.headers.getlist("WWW-Authenticate")
    assert r.status_code == 401 and any(c.startswith("Basic") for c in challenges), challenges
    basic = base64.b64encode(f"admin:{KEYS['beta']}".encode()).decode()
    for path in ("/dashboard", "/v1/stats"):
        r = requests.get(server.url(path), headers={"Authorization": f"Basic {basic}"},
                         timeout=10)
        assert r.status_code == 200, (path, r.text)
    r = requests.get(server.url("/v1/stats"), auth=("admin", WRONG), timeout=10)
    assert_401(r, "Basic with a wrong key")


def test_openai_client_with_a_key_works_and_a_wrong_key_raises(server):
    good = server.client(api_key=KEYS["beta"])
    assert [m.id for m in good.models.list().data] == [MODEL_NAME]
    c = good.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=4,
                                temperature=0)
    assert c.choices[0].text and c.usage.completion_tokens == 4
    chat = good.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)
    assert chat.choices[0].message.content is not None
    stream = good.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Count."}], max_tokens=4,
        stream=True)
    assert len([ch for ch in stream]) > 0

    bad = server.client(api_key=WRONG)
    for attempt in (lambda: bad.models.list(),
                    lambda: bad.completions.create(model=MODEL_NAME, prompt="x", max_tokens=1),
                    lambda: bad.chat.completions.create(
                        model=MODEL_NAME, messages=[{"role": "user", "content": "x"}],
                        max_tokens=1)):
        with pytest.raises(openai.AuthenticationError) as e:
            attempt()
        assert e.value.status_code == 401
        assert e.value.code == "invalid_api_key"


def test_a_request_is_charged_to_the_tenant_of_its_key(server):
    before = {t: tenant_stats(server, t)["requests_finished"] for t in ("acme", "beta")}
    r = requests.post(server.url("/v1/completions"), headers=bearer(KEYS["beta"]),
                      json={"model": MODEL_NAME, "prompt": "Charge beta", "max_tokens": 3},
                      timeout=120)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while tenant_stats(server, "beta")["requests_finished"] == before["beta"]:
        assert time.monotonic() < deadline, "beta's request was not counted"
        time.sleep(0.1)
    # Beta's key is beta, never acme.
    assert tenant_stats(server, "beta")["requests_finished"] == before["beta"] + 1
    assert tenant_stats(server, "acme")["requests_finished"] == before["acme"]


def test_a_tenants_default_compression_applies_to_its_requests(server):
    def usage(key, prefix, **extra):
        r = requests.post(server.url("/v1/completions"), headers=bearer(key), timeout=300,
                          json={"model": MODEL_NAME, "prompt": prefix + KV_SENTENCE * 30,
                                "max_tokens": 8, "temperature": 0, "ignore_eos": True, **extra})
        assert r.status_code == 200, r.text
        return r.json()["usage"]

    # Different first words: no prompt shares a cached prefix with another.
    acme = usage(KEYS["acme"], "Acme. ")
    assert 350 <= acme["prompt_tokens"] <= 500
    assert 0 < acme["kv_bytes"] < acme["kv_bytes_uncompressed"]
    assert acme["kv_compression_ratio"] < 0.6  # acme's default: attention-guided at 1/4
    beta = usage(KEYS["beta"], "Beta. ")  # no default of its own: the server's (none)
    assert beta["kv_compression_ratio"] == 1.0
    own = usage(KEYS["acme"], "Own. ", kv_compression={"policy": "none"})  # the request wins
    assert own["kv_compression_ratio"] == 1.0


def test_a_tenants_full_queue_is_429_with_retry_after(server):
    """tiny may run one request and queue one: a third while both are there is refused."""
    long_request = {"model": MODEL_NAME, "prompt": "Tell a long story.", "max_tokens": 1000,
                    "ignore_eos": True, "stream": True}
    first = requests.post(server.url("/v1/completions"), headers=bearer(KEYS["tiny"]),
                          json=long_request, stream=True, timeout=120)
    second_response = []
    second = threading.Thread(target=lambda: second_response.append(requests.post(
        server.url("/v1/completions"), headers=bearer(KEYS["tiny"]), json=long_request,
        stream=True, timeout=120)))
    try:
        assert first.status_code == 200, first.text
        first_lines = first.iter_lines()  # kept: a discarded iterator closes the response
        next(first_lines)  # running
        second.start()
        deadline = time.monotonic() + 30
        while tenant_stats(server, "tiny")["waiting"] < 1:
            assert time.monotonic() < deadline, tenant_stats(server, "tiny")
            time.sleep(0.05)
        r = requests.post(server.url("/v1/completions"), headers=bearer(KEYS["tiny"]),
                          json={"model": MODEL_NAME, "prompt": "x", "max_tokens": 1},
                          timeout=30)
        assert r.status_code == 429, r.text
        assert r.headers["Retry-After"] == "1"
        err = r.json()["error"]
        assert err["type"] == "rate_limit_error" and "tiny" in err["message"], err
        # Another tenant is not held up by tiny's queue.
        r = requests.post(server.url("/v1/completions"), headers=bearer(KEYS["beta"]),
                          json={"model": MODEL_NAME, "prompt": "x", "max_tokens": 1},
                          timeout=120)
        assert r.status_code == 200, r.text
    finally:
        first.close()  # cancels it; the queued one then runs until closed too
        second.join(timeout=60)
        for resp in second_response:
            resp.close()


# --- gRPC --------------------------------------------------------------------


@pytest.fixture(scope="module")
def inference(stubs, server):  # noqa: F811
    ch = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    grpc.channel_ready_future(ch).result(timeout=30)
    yield stubs[0], stubs[1].InferenceStub(ch), stubs[2], stubs[3].HealthStub(ch)
    ch.close()


def grpc_calls(pb, stub):
    request = pb.GenerateRequest(model=MODEL_NAME, prompt="Hello", max_tokens=2, temperature=0)
    return {
        "ListModels": lambda md: stub.ListModels(pb.ListModelsRequest(), metadata=md, timeout=60),
        "Complete": lambda md: stub.Complete(request, metadata=md, timeout=60),
        "Generate": lambda md: list(stub.Generate(request, metadata=md, timeout=60)),
    }


@pytest.mark.parametrize("method", ["ListModels", "Complete", "Generate"])
def test_every_grpc_method_needs_a_key(inference, method):
    pb, stub, _, _ = inference
    run = grpc_calls(pb, stub)[method]
    for md, what in [((), "no key"), ((("authorization", f"Bearer {WRONG}"),), "wrong key"),
                     ((("authorization", KEYS["acme"]),), "no scheme"),
                     ((("authorization", f"Bearer {KEYS['acme']}"),
                       ("authorization", f"Bearer {KEYS['beta']}")), "two keys")]:
        with pytest.raises(grpc.RpcError) as e:
            run(md)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method, what)
    for name in ("acme", "beta"):
        assert run((("authorization", f"Bearer {KEYS[name]}"),)), (method, name)


def test_grpc_health_needs_no_key(inference):
    _, _, health_pb2, health = inference
    r = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_a_grpc_request_is_charged_to_the_tenant_of_its_key(inference, server):
    pb, stub, _, _ = inference
    before = {t: tenant_stats(server, t)["requests_finished"] for t in ("acme", "beta")}
    stub.Complete(pb.GenerateRequest(model=MODEL_NAME, prompt="gRPC beta", max_tokens=2),
                  metadata=(("authorization", f"Bearer {KEYS['beta']}"),), timeout=60)
    deadline = time.monotonic() + 10
    while tenant_stats(server, "beta")["requests_finished"] == before["beta"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert tenant_stats(server, "acme")["requests_finished"] == before["acme"]


# --- SIGHUP reload ------------------------------------------------------------


@pytest.fixture()
def reload_server(request, kvserve_bin, model_path, tmp_path):
    path = tmp_path / "tenants.json"
    write_tenants(path, [tenant(kvserve_bin, "acme", ["old-key"]),
                         tenant(kvserve_bin, "beta", ["beta-key"])])
    srv = start_server(request, kvserve_bin, model_path, "--tenants", str(path),
                       "--kv-cache-bytes", "64MiB", api_key="beta-key")
    srv.tenants_path = path
    return srv


def status_with(server, key):
    return requests.get(server.url("/v1/models"), headers=bearer(key), timeout=10).status_code


def sighup_and_wait(server, log_marker):
    """Sends SIGHUP and waits until the log shows one more `log_marker` line."""
    seen = server.log_text().count(log_marker)
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while server.log_text().count(log_marker) == seen:
        assert server.alive(), server.log_tail()
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.05)


def test_sighup_reload_adds_and_removes_keys(reload_server, kvserve_bin):
    srv = reload_server
    assert status_with(srv, "old-key") == 200 and status_with(srv, "new-key") == 401
    write_tenants(srv.tenants_path, [tenant(kvserve_bin, "acme", ["new-key"]),
                                     tenant(kvserve_bin, "beta", ["beta-key"])])
    sighup_and_wait(srv, "] tenants from ")
    assert status_with(srv, "new-key") == 200
    assert status_with(srv, "old-key") == 401
    assert status_with(srv, "beta-key") == 200


def test_sighup_with_a_malformed_file_keeps_the_old_keys(reload_server, kvserve_bin):
    srv = reload_server
    for broken in ('{"tenants": [', '{"tenants": []}',
                   json.dumps({"tenants": [{"id": "acme", "api_keys": ["new-key"]}]})):
        with open(srv.tenants_path, "w") as f:
            f.write(broken)
        sighup_and_wait(srv, "tenants reload failed")
        assert status_with(srv, "old-key") == 200, broken
        assert status_with(srv, "beta-key") == 200, broken
        assert status_with(srv, "new-key") == 401, broken
    assert srv.alive()
    assert "new-key" not in srv.log_text()  # a raw key in the file is not echoed


def test_a_stream_in_flight_completes_across_a_reload_that_removes_its_key(reload_server,
                                                                            kvserve_bin):
    srv = reload_server
    client = srv.client(api_key="old-key")
    stream = client.completions.create(model=MODEL_NAME, prompt="Tell a story.", max_tokens=48,
                                       temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    chunks = iter(stream)
    first = next(chunks)
    write_tenants(srv.tenants_path, [tenant(kvserve_bin, "beta", ["beta-key"])])
    sighup_and_wait(srv, "] tenants from ")
    assert status_with(srv, "old-key") == 401  # new requests with the removed key fail
    rest = list(chunks)
    finals = [c.choices[0].finish_reason for c in [first] + rest if c.choices and
              c.choices[0].finish_reason]
    assert finals == ["length"]
    text = "".join(c.choices[0].text for c in [first] + rest if c.choices)
    assert text


def test_sighup_without_a_tenants_file_is_ignored(request, kvserve_bin, model_path):
    srv = start_server(request, kvserve_bin, model_path, "--kv-cache-bytes", "64MiB")
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "nothing to reload" not in srv.log_text():
        assert srv.alive(), srv.log_tail()
        assert time.monotonic() < deadline, srv.log_tail()
        time.sleep(0.05)
    # Single-tenant mode: no key needed anywhere.
    assert requests.get(srv.url("/v1/models"), timeout=10).status_code == 200
