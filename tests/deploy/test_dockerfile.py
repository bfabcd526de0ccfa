"""The Dockerfile, checked offline (no Docker daemon here): its stages for both
backends, and the facts it shares with the rest of the repo (the CMake switch,
where the binary looks for the CUDA module, the serve flags, the apt packages
of scripts/lib.sh)."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def instructions():
    """(KEYWORD, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", read("Dockerfile"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages():
    """{stage name: base image} in order."""
    found = {}
    for word, rest in instructions():
        if word == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert m, f"every stage is named: FROM {rest}"
            found[m.group(2)] = m.group(1)
    return found


def global_args():
    args = {}
    for word, rest in instructions():
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def stage_body(name):
    body, inside = [], False
    for word, rest in instructions():
        if word == "FROM":
            inside = rest.lower().endswith(f" as {name}")
            continue
        if inside:
            body.append((word, rest))
    return body


def expand(image, backend):
    values = dict(global_args(), BACKEND=backend)
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], image)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_each_backend_resolves_to_real_base_images(backend):
    s = stages()
    assert global_args()["BACKEND"] == "cpu", "the CPU image is the default"
    build = expand(s["build"], backend)
    runtime = expand(s["runtime"], backend)
    assert build == f"build-base-{backend}" and runtime == f"runtime-base-{backend}"
    if backend == "cpu":
        assert s[build] == "debian:12" and s[runtime] == "debian:12-slim"
    else:
        version = global_args()["CUDA_VERSION"]
        assert re.fullmatch(r"1[23]\.\d+\.\d+", version), version
        assert expand(s[build], backend) == f"nvidia/cuda:{version}-devel-ubuntu24.04"
        assert expand(s[runtime], backend) == f"nvidia/cuda:{version}-runtime-ubuntu24.04"


def test_build_stage_maps_the_backend_to_the_cmake_switch():
    run = " ".join(rest for word, rest in stage_body("build") if word == "RUN")
    assert "cpu) cuda=OFF" in run and "cuda) cuda=ON" in run
    assert "-DKVSERVE_CUDA=$cuda" in run
    # The switch's values are the ones CMakeLists.txt accepts.
    cmake = read("CMakeLists.txt")
    assert 'KVSERVE_CUDA STREQUAL "ON"' in cmake and 'KVSERVE_CUDA STREQUAL "AUTO"' in cmake


def test_build_stage_rejects_an_unknown_backend():
    run = next(rest for word, rest in stage_body("build") if word == "RUN" and "case" in rest)
    case = run[run.index("case"):run.index("esac") + len("esac")]
    for backend, rc in (("cpu", 0), ("cuda", 0), ("rocm", 1)):
        r = subprocess.run(["sh", "-c", case], env={"BACKEND": backend}, capture_output=True,
                           text=True)
        assert r.returncode == rc, (backend, r.stderr)


def test_cuda_module_lands_where_the_binary_looks_for_it():
    body = stage_body("runtime")
    copies = [rest for word, rest in body if word == "COPY"]
    binary = next(c for c in copies if c.endswith(" /usr/local/bin/kvserve"))
    assert binary
    module_dir = next(c.split()[-1] for c in copies if "/lib/kvserve" in c)
    assert module_dir.rstrip("/") == "/usr/local/lib/kvserve"
    # engine/model/device.cc: <exe dir>/../lib/kvserve/libkvserve_cuda.so
    assert '"/../lib/kvserve/libkvserve_cuda.so"' in read("engine", "model", "device.cc")
    build_run = " ".join(rest for word, rest in stage_body("build") if word == "RUN")
    assert "cp build/server/libkvserve_cuda.so /out/lib/kvserve/" in build_run
    # engine/cuda/CMakeLists.txt puts the module beside the binary.
    assert "LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/server" in read(
        "engine", "cuda", "CMakeLists.txt")


def test_entrypoint_passes_the_device_of_the_build():
    body = stage_body("runtime")
    envs = [rest for word, rest in body if word == "ENV"]
    assert "KVSERVE_DEVICE=${BACKEND}" in envs
    assert ("ARG", "BACKEND") in body, "the runtime stage must re-declare BACKEND to read it"
    entry = next(rest for word, rest in body if word == "ENTRYPOINT")
    assert '--device \\"$KVSERVE_DEVICE\\"' in entry
    assert ("USER", "kvserve") in body
    assert any(word == "HEALTHCHECK" and "/health" in rest for word, rest in body)
    assert ("EXPOSE", "8080 50051") in body


def test_build_packages_are_the_ones_setup_installs():
    lib = read("scripts", "lib.sh")
    block = re.search(r"KVSERVE_APT_PACKAGES=\((.*?)\n\)", lib, re.S).group(1)
    setup = {w for line in block.splitlines() for w in line.split("#")[0].split()}
    run = next(rest for word, rest in stage_body("build") if word == "RUN" and "apt-get" in rest)
    wanted = set(run.split("--no-install-recommends", 1)[1].split("&&")[0].split())
    assert wanted <= setup, sorted(wanted - setup)
