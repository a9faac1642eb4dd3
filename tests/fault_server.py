"""A local OpenAI-compatible server that misbehaves on purpose (stdlib http.server, one thread
per connection, on a free loopback port): a deterministic share of chat requests get 429 +
Retry-After, 500 + Retry-After-ms, or a slow answer, the rest a valid completion whose text is
unique to the request (so dedup keeps it). It records what it saw: statuses sent, attempts per
request seed, Authorization headers and the most requests it had in flight at once."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from helpers import generate_config

MODEL = "fake-chat-model"
API_KEY = "sk-test-Zq8vT3secretKEY-4242"

# Fault schedule by arrival number: n % 6 == 1 -> 429, 3 -> 500, 5 -> slow, else OK.
RETRY_AFTER_S = "0.2"  # parsed by the official client as float seconds
RETRY_AFTER_MS = "50"  # the client prefers retry-after-ms over retry-after
SLOW_S = 0.5


def default_fault(n: int, body: dict) -> str:
    return {1: "429", 3: "500", 5: "slow"}.get(n % 6, "ok")


class FaultServer:
    """An OpenAI-compatible server with injected faults; use as a context manager."""

    def __init__(self, fault: Callable[[int, dict], str] = default_fault):
        self.fault = fault
        self.lock = threading.Lock()
        self.arrivals = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.statuses: Counter[int] = Counter()
        self.attempts_by_seed: Counter[int] = Counter()
        self.auth_headers: set[str] = set()
        self.model_list_calls = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
                with server.lock:
                    server.statuses[status] += 1

            def do_GET(self):
                with server.lock:
                    server.auth_headers.add(self.headers.get("Authorization", ""))
                    server.model_list_calls += 1
                if self.path.rstrip("/") == "/v1/models":
                    model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "test"}
                    self.send_json(200, {"object": "list", "data": [model]})
                else:
                    self.send_json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server.lock:
                    server.arrivals += 1
                    n = server.arrivals
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.auth_headers.add(self.headers.get("Authorization", ""))
                    server.attempts_by_seed[body.get("seed")] += 1
                try:
                    if self.path.rstrip("/") != "/v1/chat/completions":
                        self.send_json(404, {"error": {"message": "not found"}})
                        return
                    fault = server.fault(n, body)
                    if fault == "429":
                        self.send_json(
                            429,
                            {"error": {"message": "rate limited", "type": "rate_limit_error"}},
                            {"Retry-After": RETRY_AFTER_S},
                        )
                        return
                    if fault == "500":
                        self.send_json(
                            500, {"error": {"message": "boom", "type": "server_error"}}, {"Retry-After-Ms": RETRY_AFTER_MS}
                        )
                        return
                    if fault.isdigit():  # any other status, with an OpenAI-style error body
                        self.send_json(int(fault), {"error": {"message": f"injected {fault}", "type": "test"}})
                        return
                    if fault == "slow":
                        time.sleep(SLOW_S)
                    self.send_json(200, completion(n, body))
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def completion(n: int, body: dict) -> dict:
    count = int(body.get("n") or 1)
    choices = []
    for i in range(count):
        # Words unique to this response: no exact or near duplicate of any other.
        text = f"Reply {n}x{i} mentions token{n}x{i} alongside marker{n}x{i} and extra{n}x{i} today"
        choices.append(
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
        )
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", MODEL),
        "choices": choices,
        "usage": {"prompt_tokens": 11, "completion_tokens": 12 * count, "total_tokens": 11 + 12 * count},
    }


def openai_config(tmp_path: Path, base_url: str, **openai_settings) -> dict:
    settings = {"base_url": base_url, "max_concurrency": 4, "max_retries": 6, "timeout_s": 20, **openai_settings}
    return generate_config(
        tmp_path,
        MODEL,
        generator={"backend": "openai", "model": MODEL, "sampling": {"max_tokens": 24}, "openai": settings},
        quota={"per_label": 10},
    )
