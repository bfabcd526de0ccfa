"""The gRPC API (kvserve.v1.Inference, health, reflection) of a running `kvserve serve`.

Python stubs are generated at test time from proto/kvserve/v1/inference.proto with the
venv's grpc_tools, together with minimal definitions of the standard health and
reflection messages written here (only the fields these tests read).
"""
import importlib
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest

from conftest import ROOT
from server_util import MODEL_NAME, start_server

# Standard grpc.health.v1 messages, as far as Check needs them.
HEALTH_PROTO = """
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
"""

# Standard grpc.reflection.v1alpha messages, as far as listing services and fetching
# a file by symbol need them.
REFLECTION_PROTO = """
syntax = "proto3";
package grpc.reflection.v1alpha;
service ServerReflection {
  rpc ServerReflectionInfo(stream ServerReflectionRequest)
      returns (stream ServerReflectionResponse);
}
message ServerReflectionRequest {
  string host = 1;
  oneof message_request {
    string file_by_filename = 3;
    string file_containing_symbol = 4;
    string list_services = 7;
  }
}
message ServerReflectionResponse {
  string valid_host = 1;
  ServerReflectionRequest original_request = 2;
  oneof message_response {
    FileDescriptorResponse file_descriptor_response = 4;
    ListServiceResponse list_services_response = 6;
    ErrorResponse error_response = 7;
  }
}
message FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ServiceResponse { string name = 1; }
message ErrorResponse { int32 error_code = 1; string error_message = 2; }
"""

LONG = 2000  # tokens: far longer than any deadline or cancel below waits
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """Modules generated from the protos: (inference_pb2, inference_pb2_grpc, health_pb2,
    health_pb2_grpc, reflection_pb2, reflection_pb2_grpc)."""
    out = tmp_path_factory.mktemp("grpc_gen")
    extra = tmp_path_factory.mktemp("grpc_proto")
    (extra / "health.proto").write_text(HEALTH_PROTO)
    (extra / "reflection.proto").write_text(REFLECTION_PROTO)
    proto_root = os.path.join(ROOT, "proto")
    for include, name in ((proto_root, "kvserve/v1/inference.proto"), (str(extra), "health.proto"),
                          (str(extra), "reflection.proto")):
        r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{include}",
                            f"--python_out={out}", f"--grpc_python_out={out}", name],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    sys.path.insert(0, str(out))
    try:
        return tuple(importlib.import_module(m) for m in (
            "kvserve.v1.inference_pb2", "kvserve.v1.inference_pb2_grpc", "health_pb2",
            "health_pb2_grpc", "reflection_pb2", "reflection_pb2_grpc"))
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="module")
def server(request, kvserve_bin, model_path):
    return start_server(request, kvserve_bin, model_path)


@pytest.fixture(scope="module")
def channel(server):
    ch = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    grpc.channel_ready_future(ch).result(timeout=30)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def pb(stubs):
    return stubs[0]


@pytest.fixture(scope="module")
def inference(stubs, channel):
    return stubs[1].InferenceStub(channel)


def greedy(pb, max_tokens=16, **kw):
    kw.setdefault("prompt", PROMPT)
    return pb.GenerateRequest(model=MODEL_NAME, max_tokens=max_tokens, temperature=0.0, **kw)


def wait_idle(server, timeout=10.0):
    """Polls /metrics until no sequence runs and no KV block is held (or the timeout
    passes); returns the last (running, used blocks)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = server.metric_samples()
        got = (server.metric("kvserve_requests_running", samples),
               server.metric("kvserve_kv_cache_blocks", samples, state="used"))
        if got == (0, 0) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_list_models_names_the_served_model(pb, inference):
    r = inference.ListModels(pb.ListModelsRequest(), timeout=30)
    assert [m.name for m in r.models] == [MODEL_NAME]
    assert r.models[0].vocab_size == 49152
    assert r.models[0].max_context == 8192  # SmolLM2's training context


def test_complete_greedy_is_deterministic(pb, inference):
    a = inference.Complete(greedy(pb), timeout=120)
    b = inference.Complete(greedy(pb), timeout=120)
    assert a.model == MODEL_NAME
    assert len(a.choices) == 1 and a.choices[0].index == 0
    assert a.choices[0].text and a.choices[0].text == b.choices[0].text
    assert list(a.choices[0].token_ids) == list(b.choices[0].token_ids)
    assert a.usage.prompt_tokens > 0
    assert a.usage.completion_tokens == len(a.choices[0].token_ids)
    assert a.choices[0].finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


def test_generate_stream_concatenates_to_the_completion(pb, inference):
    req = greedy(pb, max_tokens=24)
    complete = inference.Complete(req, timeout=120)
    text, ids, finals = "", [], []
    for msg in inference.Generate(req, timeout=120):
        assert msg.index == 0
        text += msg.text
        ids += list(msg.token_ids)
        if msg.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
            finals.append(msg)
    assert text == complete.choices[0].text
    assert ids == list(complete.choices[0].token_ids)
    assert len(finals) == 1
    assert finals[0].finish_reason == complete.choices[0].finish_reason
    assert finals[0].usage.prompt_tokens == complete.usage.prompt_tokens
    assert finals[0].usage.completion_tokens == complete.usage.completion_tokens


def test_chat_uses_the_models_template(pb, inference):
    chat = pb.ChatMessages(messages=[pb.ChatMessage(
        role="user", content="What is the capital of France? Answer in one sentence.")])
    r = inference.Complete(pb.GenerateRequest(model=MODEL_NAME, chat=chat, max_tokens=32,
                                              temperature=0.0), timeout=120)
    assert "Paris" in r.choices[0].text
    assert r.choices[0].finish_reason == pb.FINISH_REASON_STOP


def test_logprobs_and_several_choices(pb, inference):
    req = pb.GenerateRequest(model=MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=0.8,
                             seed=11, n=2, logprobs=3, ignore_eos=True)
    r = inference.Complete(req, timeout=120)
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        assert len(c.logprobs) == len(c.token_ids) == 6
        for tok_id, lp in zip(c.token_ids, c.logprobs):
            assert lp.token_id == tok_id and lp.logprob <= 0
            assert len(lp.top_logprobs) == 3
            tops = [t.logprob for t in lp.top_logprobs]
            assert tops == sorted(tops, reverse=True) and tops[0] >= lp.logprob
    assert r.usage.completion_tokens == 12
    again = inference.Complete(req, timeout=120)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]


def test_health_reports_serving(stubs, channel):
    health_pb2, health_grpc = stubs[2], stubs[3]
    health = health_grpc.HealthStub(channel)
    for service in ("", "kvserve.v1.Inference"):
        r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert r.status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_and_describes_the_service(stubs, channel):
    from google.protobuf import descriptor_pb2
    refl_pb2, refl_grpc = stubs[4], stubs[5]
    stub = refl_grpc.ServerReflectionStub(channel)
    reqs = [refl_pb2.ServerReflectionRequest(list_services=""),
            refl_pb2.ServerReflectionRequest(file_containing_symbol="kvserve.v1.Inference")]
    listed, described = list(stub.ServerReflectionInfo(iter(reqs), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"kvserve.v1.Inference", "grpc.health.v1.Health"} <= names
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in described.file_descriptor_response.file_descriptor_proto]
    services = {(f.package, s.name): [m.name for m in s.method] for f in files for s in f.service}
    assert services[("kvserve.v1", "Inference")] == ["Generate", "Complete", "ListModels"]


def code_of(call):
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_bad_requests_get_their_codes(pb, inference):
    req = greedy(pb)
    req.model = "gpt-17"
    assert code_of(lambda: inference.Complete(req, timeout=30)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: list(inference.Generate(req, timeout=30))) == \
        grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: inference.Complete(greedy(pb, max_tokens=0), timeout=30)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    too_long = pb.GenerateRequest(model=MODEL_NAME, max_tokens=16,
                                  prompt_tokens=pb.TokenIds(ids=[1000] * 8190))
    assert code_of(lambda: inference.Complete(too_long, timeout=60)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    no_input = pb.GenerateRequest(model=MODEL_NAME, max_tokens=4)
    assert code_of(lambda: inference.Complete(no_input, timeout=30)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    bad_temp = greedy(pb)
    bad_temp.temperature = -1.0
    assert code_of(lambda: inference.Complete(bad_temp, timeout=30)) == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_cancel_after_first_message_frees_the_kv_cache(pb, inference, server):
    call = inference.Generate(greedy(pb, max_tokens=LONG, ignore_eos=True), timeout=300)
    first = next(call)
    assert first.finish_reason == pb.FINISH_REASON_UNSPECIFIED
    call.cancel()
    assert code_of(lambda: list(call)) == grpc.StatusCode.CANCELLED
    assert wait_idle(server) == (0, 0)
    assert inference.Complete(greedy(pb, max_tokens=4), timeout=60).choices[0].text


def test_deadline_ends_a_long_generation(pb, inference, server):
    req = greedy(pb, max_tokens=LONG, ignore_eos=True)
    assert code_of(lambda: list(inference.Generate(req, timeout=0.2))) == \
        grpc.StatusCode.DEADLINE_EXCEEDED
    assert code_of(lambda: inference.Complete(req, timeout=0.2)) == \
        grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_idle(server) == (0, 0)
    assert inference.Complete(greedy(pb, max_tokens=4), timeout=60).choices[0].text


def test_concurrent_streams_each_get_their_own_output(pb, inference):
    want = inference.Complete(greedy(pb, max_tokens=12, ignore_eos=True), timeout=120)
    results, errors = [None] * 4, []

    def run(i):
        try:
            results[i] = "".join(m.text for m in inference.Generate(
                greedy(pb, max_tokens=12, ignore_eos=True), timeout=300))
        except grpc.RpcError as e:  # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [want.choices[0].text] * 4


# About 14 tokens; repeated to a prompt of ~420, long enough that the policy has
# blocks outside its protected sink and recent window to shrink.
KV_SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river. "


def kv_request(pb, policy="attention-guided", ratio=0.25):
    return greedy(pb, max_tokens=8, ignore_eos=True, prompt=KV_SENTENCE * 30,
                  kv_compression=pb.KvCompression(policy=policy, ratio=ratio))


def test_kv_compression_shrinks_the_cache_and_usage_reports_it(pb, inference, server):
    r = inference.Complete(kv_request(pb), timeout=300)
    u = r.usage
    assert 350 <= u.prompt_tokens <= 500, u.prompt_tokens
    assert u.completion_tokens == 8
    assert 0 < u.kv_bytes < u.kv_bytes_uncompressed
    assert u.kv_compression_ratio < 0.6
    assert u.kv_compression_ratio == pytest.approx(u.kv_bytes / u.kv_bytes_uncompressed)

    finals = [m for m in inference.Generate(kv_request(pb), timeout=300)
              if m.finish_reason != pb.FINISH_REASON_UNSPECIFIED]
    assert len(finals) == 1
    s = finals[0].usage
    assert s.prompt_tokens == u.prompt_tokens
    assert 0 < s.kv_bytes < s.kv_bytes_uncompressed and s.kv_compression_ratio < 0.6

    # The server default (policy none) keeps the same prompt's cache whole.
    plain = kv_request(pb)
    plain.ClearField("kv_compression")
    p = inference.Complete(plain, timeout=300).usage
    assert p.kv_bytes_uncompressed >= u.kv_bytes_uncompressed > 0
    assert p.kv_bytes == p.kv_bytes_uncompressed and p.kv_compression_ratio == 1.0
    assert wait_idle(server) == (0, 0)


def test_bad_kv_compression_is_invalid_argument(pb, inference):
    for req, field in ((kv_request(pb, policy="lru"), "kv_compression.policy"),
                       (kv_request(pb, ratio=1.5), "kv_compression.ratio"),
                       (kv_request(pb, ratio=-0.25), "kv_compression.ratio")):
        for call in (lambda: inference.Complete(req, timeout=30),
                     lambda: list(inference.Generate(req, timeout=30))):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in err.value.details()
