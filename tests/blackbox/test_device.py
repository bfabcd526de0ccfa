"""--device: where the weight matmuls run, seen from outside the binary.

Without a GPU the CUDA path is exercised through the fake CUDA module the
build makes when the CUDA toolkit is present (tests/engine/cuda: the real
backend and entry points over a CPU fake of the CUDA runtime and cuBLAS),
chosen with KVSERVE_CUDA_MODULE.
"""
import os
import subprocess

import pytest
import requests

from server_util import pick_free_port, start_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_dir(kvserve_bin):
    return os.path.dirname(os.path.dirname(os.path.abspath(kvserve_bin)))


def real_module(kvserve_bin):
    return os.path.join(os.path.dirname(os.path.abspath(kvserve_bin)), "libkvserve_cuda.so")


def fake_module(kvserve_bin):
    return os.path.join(build_dir(kvserve_bin), "tests", "engine", "cuda",
                        "libkvserve_cuda_fake_module.so")


def has_gpu():
    return os.path.exists("/dev/nvidia0")


def run_serve(kvserve_bin, model_path, *flags, env=None):
    return subprocess.run([kvserve_bin, "serve", "--model", model_path, "--port",
                           str(pick_free_port()), "--grpc-port", "0", *flags],
                          capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)


def test_unknown_device_is_a_usage_error(kvserve_bin, model_path):
    for bad in ("tpu", "cuda:x", "GPU"):
        r = run_serve(kvserve_bin, model_path, "--device", bad)
        assert r.returncode == 2, r.stderr
        assert "invalid configuration: device: expected cpu, cuda or cuda:N" in r.stderr


def test_cuda_without_a_usable_gpu_fails_at_startup_with_the_reason(kvserve_bin, model_path):
    if has_gpu():
        pytest.skip("this machine has a GPU; the gpu-labelled tests cover it")
    env = dict(os.environ)
    env.pop("KVSERVE_CUDA_MODULE", None)
    r = run_serve(kvserve_bin, model_path, "--device", "cuda", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    if os.path.exists(real_module(kvserve_bin)):
        assert "no usable CUDA device" in out, out
    else:
        assert "has no CUDA backend" in out, out


def test_a_missing_module_is_named(kvserve_bin, model_path):
    env = dict(os.environ, KVSERVE_CUDA_MODULE="/nonexistent/libkvserve_cuda.so")
    r = run_serve(kvserve_bin, model_path, "--device", "cuda", env=env)
    assert r.returncode == 1
    assert "/nonexistent/libkvserve_cuda.so (absent)" in r.stdout + r.stderr


def test_serves_on_the_fake_cuda_device(request, kvserve_bin, model_path, monkeypatch):
    module = fake_module(kvserve_bin)
    if not os.path.exists(module):
        pytest.skip("built without the CUDA toolkit: no fake CUDA module")
    monkeypatch.setenv("KVSERVE_CUDA_MODULE", module)
    srv = start_server(request, kvserve_bin, model_path, "--device", "cuda")
    out = srv.client().completions.create(model="smollm2", prompt="The capital of France is",
                                          max_tokens=4, temperature=0)
    assert out.choices[0].text.strip(), out
    assert out.usage.completion_tokens == 4
    stats = requests.get(srv.url("/v1/stats"), timeout=10).json()
    assert stats["device"]["name"] == "cuda"
    assert "Fake CUDA device" in stats["device"]["description"]
    # Every weight matrix in f16 on the device: SmolLM2-135M's ~135M weights
    # (the tied output matrix once) take ~270 MB.
    assert 200e6 < stats["device"]["memory_bytes"] < 400e6, stats["device"]
    assert srv.metric("kvserve_model_info", model_name="smollm2", device="cuda") == 1


def test_cpu_is_the_default_device(request, kvserve_bin, model_path):
    srv = start_server(request, kvserve_bin, model_path)
    stats = requests.get(srv.url("/v1/stats"), timeout=10).json()
    assert stats["device"]["name"] == "cpu"
    assert stats["device"]["memory_bytes"] == 0
    assert srv.metric("kvserve_model_info", model_name="smollm2", device="cpu") == 1
