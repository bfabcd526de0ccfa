"""Shared fixtures for black-box tests: they run the real kvserve binary.

KVSERVE_BIN and KVSERVE_MODEL come from scripts/test.sh; without them the
tests fail (not skip), because these checks are part of the test command.
"""
import os
import socket

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _required_path(var, default):
    path = os.environ.get(var, default)
    if not path or not os.path.exists(path):
        pytest.fail(f"{var} is not set to an existing file (got {path!r}); run ./scripts/test.sh")
    return path


@pytest.fixture(scope="session")
def kvserve_bin():
    return _required_path("KVSERVE_BIN", os.path.join(ROOT, "build", "server", "kvserve"))


@pytest.fixture(scope="session")
def model_path():
    return _required_path(
        "KVSERVE_MODEL",
        os.path.expanduser("~/.cache/kvserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))


@pytest.fixture()
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
