"""A small HTTP client for one `kvserve serve` (urllib only).

Tasks talk to the server only through `Client`, i.e. through the public OpenAI-style API
users get, so an evaluation measures the serving path (tokenisation, scheduling,
chunked prefill, compression inside the engine) and not a private shortcut.

Failures never raise out of `complete` / `stream`: a refused connection, a timeout, an
HTTP error or a body that is not JSON all come back as a `Completion` whose `ok` is
False and whose "error" entry says what happened, so one bad request is one failed item
and not a crashed sweep.

Thread-safety: a Client holds no mutable state after construction; any number of
threads may call it at once (each call opens its own connection).
"""

import json
import re
import time
import urllib.error
import urllib.request


def http_json(url, body=None, timeout=30.0, api_key=None):
    """(status, parsed JSON or text) of a GET (body None) or a JSON POST, with
    `Authorization: Bearer api_key` when a key is given (a server with tenants).

    HTTP error statuses are returned, not raised; connection failures and timeouts raise
    OSError (urllib's URLError and socket.timeout are OSErrors).
    """
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class Completion(dict):
    """The parsed JSON body of a /v1/completions response (a plain dict, so
    resp["choices"][0]["text"] works), plus what the client measured.

    On failure the dict is {"error": {"message": ..., "status": HTTP status or None,
    "type": ...}}, as the server's own error bodies look, so `"error" in resp` and
    `resp.ok` agree. Attributes (not keys, so the dict stays the server's JSON):
      status   HTTP status, None when no response came back
      wall_s   seconds from sending the request to the end of the body
      ttft_s   streamed requests only: seconds to the first text event
      token_times  streamed requests only: seconds of each text event after sending
    """

    status = None
    wall_s = None
    ttft_s = None
    token_times = None

    @classmethod
    def failure(cls, status, message, kind="client_error"):
        out = cls(error={"message": str(message)[:2000], "status": status, "type": kind})
        out.status = status
        return out

    @property
    def ok(self):
        return "error" not in self and bool(self.get("choices"))

    @property
    def error(self):
        """A one-line description of the failure ("HTTP 400: ..."), None when ok."""
        if self.ok:
            return None
        err = self.get("error") or {}
        message = err.get("message", "no choices in the response") if isinstance(err, dict) \
            else str(err)
        return f"HTTP {self.status}: {message}" if self.status else message

    @property
    def text(self):
        """Text of the first choice, or its message content for a chat completion ("" on
        failure)."""
        if not self.ok:
            return ""
        choice = self["choices"][0]
        if "text" in choice:
            return choice["text"] or ""
        return (choice.get("message") or {}).get("content") or ""

    @property
    def usage(self):
        return self.get("usage") or {}

    @property
    def token_logprobs(self):
        """choices[0].logprobs.token_logprobs (echo: the prompt's, the first None), or None."""
        if not self.ok:
            return None
        logprobs = self["choices"][0].get("logprobs") or {}
        return logprobs.get("token_logprobs")


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def series_key(name, labels=None):
    """Canonical series name: name{a="x",b="y"} with labels sorted; bare name without."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def parse_prometheus(text):
    """Prometheus text exposition -> {series_key(name, labels): float}.

    Comments, blank lines and timestamps are dropped; histogram buckets keep their "le"
    label as any other label. Values that are not numbers ("NaN" parses) are skipped.
    """
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            continue
        labels = dict(_LABEL_RE.findall(m.group(3) or ""))
        try:
            out[series_key(m.group(1), labels)] = float(m.group(4))
        except ValueError:
            continue
    return out


def metric_sum(series, name):
    """Sum of every series of metric `name` over its labels (0.0 when absent)."""
    return sum(v for k, v in series.items() if k == name or k.startswith(name + "{"))


class Client:
    """Client of one server at `url` (e.g. "http://127.0.0.1:8080")."""

    def __init__(self, url, timeout=600.0, model=None, api_key=None):
        """`timeout`: seconds per request unless a call gives its own; `model`: sent as
        the request's "model" when set (kvserve accepts requests without one);
        `api_key`: a tenant's key, sent on every request."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.model = model
        self.api_key = api_key

    # --- plain endpoints ----------------------------------------------------------------

    def get(self, path, timeout=None):
        """(status, parsed JSON or text); raises OSError when the server is unreachable."""
        return http_json(self.url + path, timeout=timeout or self.timeout, api_key=self.api_key)

    def ready(self):
        try:
            return self.get("/ready", timeout=5)[0] == 200
        except OSError:
            return False

    def models(self):
        """The /v1/models "data" list ([] when it cannot be read)."""
        try:
            status, body = self.get("/v1/models", timeout=30)
        except OSError:
            return []
        if status != 200 or not isinstance(body, dict):
            return []
        return body.get("data") or []

    def max_model_len(self, default=None):
        """The served model's context in tokens (max_model_len of /v1/models)."""
        data = self.models()
        return int(data[0].get("max_model_len") or default) if data else default

    def metrics(self):
        """GET /metrics parsed by parse_prometheus ({} when unreachable)."""
        try:
            status, body = self.get("/metrics", timeout=30)
        except OSError:
            return {}
        return parse_prometheus(body) if status == 200 and isinstance(body, str) else {}

    # --- completions --------------------------------------------------------------------

    def _body(self, prompt, max_tokens, kv_compression, echo, logprobs, temperature, extra):
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
        if self.model:
            body["model"] = self.model
        if kv_compression is not None:
            body["kv_compression"] = kv_compression
        if echo:
            body["echo"] = True
        if logprobs is not None:
            body["logprobs"] = logprobs
        body.update(extra)
        return body

    def complete(self, prompt, max_tokens=16, kv_compression=None, echo=False, logprobs=None,
                 temperature=0.0, timeout=None, **extra):
        """POST /v1/completions; returns a Completion (see its docstring), never raises
        for a failed request. `extra` adds request fields as given (stop, seed, ...)."""
        body = self._body(prompt, max_tokens, kv_compression, echo, logprobs, temperature, extra)
        return self._post("/v1/completions", body, timeout)

    def chat(self, messages, max_tokens=16, kv_compression=None, temperature=0.0, timeout=None,
             **extra):
        """POST /v1/chat/completions with `messages` ([{"role", "content"}]); a Completion
        whose .text is the first choice's message content."""
        body = self._body(None, max_tokens, kv_compression, False, None, temperature, extra)
        del body["prompt"]
        body["messages"] = messages
        return self._post("/v1/chat/completions", body, timeout)

    def _post(self, path, body, timeout):
        t0 = time.monotonic()
        try:
            status, parsed = http_json(self.url + path, body, timeout=timeout or self.timeout,
                                       api_key=self.api_key)
        except OSError as e:  # refused, reset, timed out
            out = Completion.failure(None, f"{type(e).__name__}: {e}", "connection_error")
            out.wall_s = time.monotonic() - t0
            return out
        if not isinstance(parsed, dict):
            out = Completion.failure(status, f"response is not JSON: {str(parsed)[:300]}",
                                     "bad_response")
        elif status != 200:
            err = parsed.get("error")
            message = err.get("message", err) if isinstance(err, dict) else (err or parsed)
            out = Completion.failure(status, message,
                                     err.get("type", "http_error") if isinstance(err, dict)
                                     else "http_error")
        else:
            out = Completion(parsed)
            out.status = status
        out.wall_s = time.monotonic() - t0
        return out

    def stream(self, prompt, max_tokens=16, kv_compression=None, temperature=0.0, timeout=None,
               **extra):
        """Streamed POST /v1/completions (server-sent events), for latency tasks.

        Returns a Completion shaped like a non-streamed one (choices[0].text is the
        joined text, usage from the final event) with ttft_s and token_times set.
        """
        body = self._body(prompt, max_tokens, kv_compression, False, None, temperature, extra)
        body["stream"] = True
        body.setdefault("stream_options", {"include_usage": True})
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url + "/v1/completions",
                                         data=json.dumps(body).encode(), headers=headers)
        t0 = time.monotonic()
        texts, times, usage, finish = [], [], None, None
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                for raw in response:
                    line = raw.decode(errors="replace").strip()
                    if not line.startswith("data:"):
                        continue
                    payload = line[len("data:"):].strip()
                    if payload == "[DONE]":
                        break
                    event = json.loads(payload)
                    if event.get("error"):
                        return self._stream_failure(200, event["error"], t0)
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        if choice.get("text"):
                            texts.append(choice["text"])
                            times.append(time.monotonic() - t0)
                        finish = choice.get("finish_reason") or finish
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read()).get("error")
            except ValueError:
                err = None
            return self._stream_failure(e.code, err or str(e), t0)
        except (OSError, ValueError) as e:
            return self._stream_failure(None, f"{type(e).__name__}: {e}", t0)
        out = Completion(choices=[{"index": 0, "text": "".join(texts), "finish_reason": finish}],
                         usage=usage)
        out.status = 200
        out.wall_s = time.monotonic() - t0
        out.token_times = times
        out.ttft_s = times[0] if times else None
        return out

    @staticmethod
    def _stream_failure(status, err, t0):
        message = err.get("message", err) if isinstance(err, dict) else err
        out = Completion.failure(status, message, "stream_error")
        out.wall_s = time.monotonic() - t0
        return out
