"""The kvserve binary as a user runs it: CLI subcommands and the /health server."""
import os
import re
import signal
import subprocess
import time

import requests

from conftest import ROOT

TIMEOUT = 300


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, **kw)


def test_help_lists_every_command(kvserve_bin):
    r = run([kvserve_bin, "--help"])
    assert r.returncode == 0
    for cmd in ("generate", "perplexity", "bench", "serve"):
        assert cmd in r.stdout
        sub = run([kvserve_bin, cmd, "--help"])
        assert sub.returncode == 0, sub.stderr
        assert "--model" in sub.stdout


def test_usage_errors_exit_2_with_a_message(kvserve_bin, model_path):
    r = run([kvserve_bin, "frobnicate"])
    assert r.returncode == 2 and "unknown command" in r.stderr
    r = run([kvserve_bin, "generate", "--model", model_path, "--prompt", "x", "--bogus", "1"])
    assert r.returncode == 2 and "unknown flag --bogus" in r.stderr
    r = run([kvserve_bin, "generate", "--prompt", "x"])
    assert r.returncode == 2 and "--model is required" in r.stderr
    r = run([kvserve_bin, "generate", "--model", model_path, "--prompt", "x", "--max-tokens", "0"])
    assert r.returncode == 2 and "--max-tokens" in r.stderr
    r = run([kvserve_bin, "generate", "--model", model_path, "--prompt", "x",
             "--max-tokens", "9000"])
    assert r.returncode == 1 and "context" in r.stderr


def test_bad_model_files_are_clear_errors(kvserve_bin, tmp_path):
    missing = tmp_path / "missing.gguf"
    r = run([kvserve_bin, "generate", "--model", str(missing), "--prompt", "x"])
    assert r.returncode == 1 and str(missing) in r.stderr
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"NOTAGGUF" + bytes(100))
    r = run([kvserve_bin, "generate", "--model", str(garbage), "--prompt", "x"])
    assert r.returncode == 1 and str(garbage) in r.stderr and "magic" in r.stderr.lower()


def test_generate_chat_answers_the_capital_question(kvserve_bin, model_path):
    r = run([kvserve_bin, "generate", "--model", model_path, "--chat", "--temperature", "0",
             "--max-tokens", "32", "--prompt",
             "What is the capital of France? Answer in one sentence."])
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    summary = r.stderr.strip().splitlines()[-1]
    assert re.search(r"prompt tokens: \d+, generated tokens: \d+, prefill: [\d.]+ tok/s, "
                     r"decode: [\d.]+ tok/s", summary), summary


def test_generate_is_reproducible_for_a_seed(kvserve_bin, model_path):
    args = [kvserve_bin, "generate", "--model", model_path, "--prompt", "Once upon a time",
            "--max-tokens", "24", "--temperature", "0.9"]
    a = run(args + ["--seed", "7"])
    b = run(args + ["--seed", "7"])
    c = run(args + ["--seed", "8"])
    assert a.returncode == b.returncode == c.returncode == 0
    assert a.stdout == b.stdout
    assert a.stdout != c.stdout


def test_perplexity_command(kvserve_bin, model_path, tmp_path):
    text = open(os.path.join(ROOT, "..", "shared", "data", "wikitext-2-raw", "wiki.test.raw"),
                encoding="utf-8").read()[:6000]
    f = tmp_path / "wiki.txt"
    f.write_text(text, encoding="utf-8")
    r = run([kvserve_bin, "perplexity", "--model", model_path, "--file", str(f), "--ctx", "256",
             "--max-tokens", "512"])
    assert r.returncode == 0, r.stderr
    m = re.search(r"perplexity: ([\d.]+) \(tokens scored: 510, chunks: 2", r.stdout)
    assert m, r.stdout
    assert 5 < float(m.group(1)) < 100


def test_serve_health_and_clean_shutdown(kvserve_bin, model_path, free_port):
    proc = subprocess.Popen([kvserve_bin, "serve", "--model", model_path, "--port",
                             str(free_port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{free_port}/health", timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, "server did not come up"
                time.sleep(0.2)
        assert r.status_code == 200
        assert r.json() == {"status": "ok"}
        assert requests.get(f"http://127.0.0.1:{free_port}/nope", timeout=2).status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_serve_rejects_invalid_configuration(kvserve_bin, model_path):
    for flags, field in ((["--port", "0"], "port"), (["--threads", "-3"], "threads"),
                         (["--log-level", "loud"], "log_level")):
        r = run([kvserve_bin, "serve", "--model", model_path] + flags)
        assert r.returncode == 2, r.stderr
        assert "invalid configuration: " + field in r.stderr
    r = run([kvserve_bin, "serve", "--model", "/nonexistent.gguf"])
    assert r.returncode == 2 and "cannot read '/nonexistent.gguf'" in r.stderr
