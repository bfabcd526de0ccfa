"""Starting and stopping a `kvserve serve` child process for an evaluation.

`ServerLauncher` owns at most one server process at a time: `start` picks a free port,
launches the binary with the base flags plus the call's extra flags, and waits for
GET /ready; `restart` replaces the process (a task such as capacity needs its own KV
pool size); `stop` sends SIGTERM (the server drains and exits 0) and kills it if it
does not exit in time. Every start writes its own log file, kept after stop so a
failure can be read; `log_tail` returns its end.

Thread-safety: none; one thread owns a launcher. Clients it hands out may be shared.
"""

import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time

from . import util
from .client import Client


def free_port():
    """A TCP port free on 127.0.0.1 right now (another process may still take it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerLauncher:
    """A `kvserve serve` process: binary, model, threads and flags fixed at construction."""

    def __init__(self, binary=util.DEFAULT_BIN, model=util.DEFAULT_MODEL, threads=2, flags=(),
                 host="127.0.0.1", startup_timeout=180.0, log_dir=None, name="kvserve-eval",
                 log=util.log, api_key=None):
        """`flags`: more `kvserve serve` flags for every start (e.g. ["--kv-cache-bytes",
        "1GiB"]); `log_dir`: where the log files go (default: the temp directory);
        `log`: progress callback (stderr); `api_key`: a key the readiness probe and
        client() send (a server started with --tenants refuses requests without one)."""
        self.binary, self.model, self.threads = binary, model, threads
        self.flags = list(flags)
        self.host, self.startup_timeout = host, startup_timeout
        self.log_dir = log_dir or tempfile.gettempdir()
        self.name = name
        self._log = log
        self.api_key = api_key
        self.proc = None
        self.url = None
        self.cmd = None          # the command of the current (or last) start
        self.extra_flags = []    # the extra flags of the current (or last) start
        self.log_path = None
        self._log_file = None

    # --- life cycle ---------------------------------------------------------------------

    def command(self, port, extra_flags=()):
        """The command line for a start on `port`; flags later on the line win."""
        return [self.binary, "serve", "--model", self.model, "--host", self.host,
                "--port", str(port), "--grpc-port", "0", "--threads", str(self.threads),
                *self.flags, *extra_flags]

    def start(self, extra_flags=()):
        """Starts the server and waits until it is ready; returns its URL.

        Raises RuntimeError (with the end of its log) if the process exits or is not
        ready within startup_timeout; nothing is left running then.
        """
        if self.running:
            raise RuntimeError("server already running; use restart()")
        if not os.path.isfile(self.binary):
            raise RuntimeError(f"kvserve binary not found: {self.binary}")
        port = free_port()
        self.extra_flags = list(extra_flags)
        self.cmd = self.command(port, self.extra_flags)
        os.makedirs(self.log_dir, exist_ok=True)
        fd, self.log_path = tempfile.mkstemp(prefix=f"{self.name}-{port}-", suffix=".log",
                                             dir=self.log_dir)
        self._log_file = os.fdopen(fd, "w")
        self._log("starting: " + shlex.join(self.cmd))
        self.proc = subprocess.Popen(self.cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.url = f"http://{self.host}:{port}"
        probe = Client(self.url, api_key=self.api_key)
        deadline = time.monotonic() + self.startup_timeout
        while not probe.ready():
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._close()
                raise RuntimeError(f"kvserve exited with {code} while starting: "
                                   f"{shlex.join(self.cmd)}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kvserve not ready after {self.startup_timeout}s\n"
                                   + self.log_tail())
            time.sleep(0.1)
        return self.url

    def restart(self, extra_flags=()):
        """Stops the running server (if any) and starts one with the base flags plus
        `extra_flags` (the previous start's extra flags are not kept)."""
        self.stop()
        return self.start(extra_flags)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=30.0):
        """SIGTERM, wait up to `timeout` s for the drain, then SIGKILL. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self._log(f"server log: {self.log_path}")
        self._close()

    def _close(self):
        self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self):
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # --- helpers ------------------------------------------------------------------------

    def client(self, timeout=600.0, model=None):
        """A Client of the running server."""
        if self.url is None:
            raise RuntimeError("server not started")
        return Client(self.url, timeout=timeout, model=model, api_key=self.api_key)

    def log_tail(self, n=3000):
        """The last n characters of the current (or last) start's log."""
        if self._log_file is not None:
            self._log_file.flush()
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()[-n:]

    def describe(self):
        """The last command, with the binary relative to the repository when inside it."""
        if not self.cmd:
            return ""
        binary = self.cmd[0]
        if binary.startswith(util.REPO + os.sep):
            binary = os.path.relpath(binary, util.REPO)
        return shlex.join([binary, *self.cmd[1:]])
