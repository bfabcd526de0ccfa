"""Runs `kvserve serve` for black-box tests: free ports, readiness, logs, teardown.

    srv = start_server(request, kvserve_bin, model_path, "--max-n", "2")
    client = srv.client()            # the official openai client, no retries
    srv.metric("kvserve_requests_running")

start_server registers the shutdown as a finalizer of the pytest `request` it is given,
so the process is stopped (SIGTERM, then SIGKILL) however the test ends. The server's
output goes to a log file; its tail is printed at teardown, which pytest shows for
failed tests.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import openai
import requests
from prometheus_client.parser import text_string_to_metric_families

MODEL_NAME = "smollm2"
STARTUP_TIMEOUT_S = 120


def pick_free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KvServer:
    """One `kvserve serve` process on 127.0.0.1 with its own HTTP and gRPC ports."""

    def __init__(self, binary, model, flags=(), threads=2, model_name=MODEL_NAME, api_key=None):
        self.binary, self.model, self.flags = binary, model, list(flags)
        self.threads, self.model_name = threads, model_name
        # With a tenants file every route but /health needs a key: readiness polls,
        # scrapes and client() send this one.
        self.api_key = api_key
        self.proc = None
        self._clients = []  # closed before shutdown: idle keep-alive connections delay it
        self.port = None
        self.grpc_port = None
        self._log_file = None
        self.log_path = None

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    def url(self, path):
        return self.base_url + path

    def command(self):
        return [self.binary, "serve", "--model", self.model, "--model-name", self.model_name,
                "--host", "127.0.0.1", "--port", str(self.port), "--grpc-port",
                str(self.grpc_port), "--threads", str(self.threads),
                # Every black-box scenario also checks the KV block accounting
                # after each engine step: a leak or double ownership aborts
                # the server and fails the test that caused it.
                "--debug-check-invariants", "true"] + self.flags

    def start(self, timeout=STARTUP_TIMEOUT_S):
        self.port, self.grpc_port = pick_free_port(), pick_free_port()
        while self.grpc_port == self.port:
            self.grpc_port = pick_free_port()
        fd, self.log_path = tempfile.mkstemp(prefix="kvserve-", suffix=".log")
        self._log_file = os.fdopen(fd, "w")
        self.proc = subprocess.Popen(self.command(), stdout=self._log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvserve exited with {self.proc.returncode} while starting: "
                                   f"{' '.join(self.command())}\n{self.log_tail()}")
            try:
                if requests.get(self.url("/ready"), headers=self.auth_headers(),
                                timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kvserve not ready after {timeout}s\n{self.log_tail()}")
            time.sleep(0.1)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        if self.log_path is None:
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_tail(self, chars=4000):
        return self.log_text()[-chars:]

    def stop(self):
        """SIGTERM, then SIGKILL after 20 s; returns the exit code (None if never started)."""
        if self.proc is None:
            return None
        for c in self._clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self._log_file.close()
        print(f"--- kvserve (exit {code}) log tail: {self.log_path}\n{self.log_tail()}",
              file=sys.stderr)
        return code

    # --- clients -----------------------------------------------------------

    def auth_headers(self):
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, timeout=120, **kw):
        """The official OpenAI client; no retries, so a 429 or 5xx surfaces as is."""
        kw.setdefault("api_key", self.api_key or "unused")
        c = openai.OpenAI(base_url=self.url("/v1"), max_retries=0, timeout=timeout, **kw)
        self._clients.append(c)
        return c

    def metrics_text(self):
        r = requests.get(self.url("/metrics"), headers=self.auth_headers(), timeout=10)
        r.raise_for_status()
        return r.text

    def metric_samples(self):
        """{(sample name, frozenset of label pairs): value} of one /metrics scrape."""
        out = {}
        for fam in text_string_to_metric_families(self.metrics_text()):
            for s in fam.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def metric(self, name, samples=None, **labels):
        """One sample's value; KeyError if absent."""
        samples = self.metric_samples() if samples is None else samples
        return samples[(name, frozenset(labels.items()))]

    def stats(self):
        r = requests.get(self.url("/v1/stats"), headers=self.auth_headers(), timeout=10)
        r.raise_for_status()
        return r.json()

    def wait_for_stats(self, done, timeout=10.0):
        """Polls /v1/stats until done(snapshot) holds; returns the last snapshot either way.

        The engine publishes its snapshot after each step, so a response can reach the
        client before the step that produced it is counted there.
        """
        deadline = time.monotonic() + timeout
        while True:
            snapshot = self.stats()
            if done(snapshot) or time.monotonic() > deadline:
                return snapshot
            time.sleep(0.1)

    def wait_for_metrics(self, want, timeout=10.0):
        """Polls /metrics until every {selector: value} holds, where a selector is a
        sample name with optional labels: 'kvserve_kv_cache_blocks{state="used"}'.

        Returns the last scrape; on timeout returns it too, so the caller's asserts show
        what differed.
        """
        keys = {sel: parse_selector(sel) for sel in want}
        deadline = time.monotonic() + timeout
        while True:
            samples = self.metric_samples()
            if all(samples.get(keys[sel]) == value for sel, value in want.items()):
                return samples
            if time.monotonic() > deadline:
                return samples
            time.sleep(0.2)


def parse_selector(selector):
    """'name{a="x",b="y"}' -> (name, frozenset of label pairs), as metric_samples keys."""
    m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?', selector)
    assert m, selector
    labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', m.group(2) or ""))
    return m.group(1), frozenset(labels.items())


def start_server(request, binary, model, *flags, threads=2, api_key=None):
    """Starts a server that the pytest `request`'s scope stops at its teardown."""
    srv = KvServer(binary, model, flags, threads=threads, api_key=api_key)
    request.addfinalizer(srv.stop)
    return srv.start()


def error_of(response):
    """The OpenAI error object of an HTTP response (requests or httpx), checked for shape."""
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    err = body["error"]
    assert isinstance(err.get("message"), str) and err["message"], err
    assert isinstance(err.get("type"), str) and err["type"], err
    return err
