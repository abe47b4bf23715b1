"""A local OpenAI-compatible Chat Completions server for tests, speaking the real wire protocol.

It runs in a thread on a port of this project's range, answers ``POST /v1/chat/completions`` with
scripted responses in order (server-sent events over chunked HTTP/1.1, ``data: [DONE]``, tool-call
deltas split across chunks, a usage chunk, HTTP errors with JSON bodies, a stream that stalls, a
stream held open until the client goes away) and records every request it got.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PORTS = range(8300, 8400)
MODEL = "fake-model"


@dataclass
class Script:
    status: int = 200
    chunks: list[Any] = field(default_factory=list)  # dicts (JSON events) or raw text
    done: bool = True  # end with "data: [DONE]"
    mode: str = "normal"  # normal | hold (open until the client leaves) | stall | no_headers
    body: Any = None  # for errors and plain JSON answers
    content_type: str = "text/event-stream"


class FakeOpenAI:
    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.requests: list[dict[str, Any]] = []
        self.client_left = threading.Event()  # a held stream saw the client disconnect
        self.holding = threading.Event()  # a held stream has sent its chunks
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self.server = _bind(self)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    # Scripting.

    def stream(self, *chunks: Any, done: bool = True, mode: str = "normal") -> None:
        self.scripts.append(Script(chunks=list(chunks), done=done, mode=mode))

    def error(self, status: int, body: Any, content_type: str = "application/json") -> None:
        self.scripts.append(Script(status=status, body=body, content_type=content_type))

    def completion(self, body: dict[str, Any]) -> None:
        self.scripts.append(Script(body=body, content_type="application/json"))

    def _next(self, request: dict[str, Any]) -> Script | None:
        with self._lock:
            self.requests.append(request)
            return self.scripts.pop(0) if self.scripts else None


# Chunk builders (the shapes OpenAI sends).


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def text_chunks(*pieces: str, finish: str = "stop") -> list[dict[str, Any]]:
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": p}) for p in pieces]
    out.append(chunk({}, finish))
    return out


def tool_call_chunks(*calls: tuple[str, str, list[str]], text: str = "") -> list[dict[str, Any]]:
    """Each call is (id, name, argument pieces): the id and name come first, then one chunk per piece."""
    out = [chunk({"role": "assistant", "content": text or None})]
    for index, (call_id, name, pieces) in enumerate(calls):
        out.append(
            chunk(
                {
                    "tool_calls": [
                        {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
                    ]
                }
            )
        )
        for piece in pieces:
            out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    out.append(chunk({}, "tool_calls"))
    return out


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


# The server.


def _bind(fake: FakeOpenAI) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"fake": fake})
    for port in PORTS:
        try:
            server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError:
            continue
        server.daemon_threads = True
        return server
    raise RuntimeError("no free port in 8300-8399")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        request = {"path": self.path, "headers": dict(self.headers), "json": json.loads(raw or b"null")}
        script = self.fake._next(request)
        if self.path.split("?")[0] != "/v1/chat/completions" or script is None:
            return self._json(404, {"error": {"message": "no scripted response", "type": "not_found"}})
        if script.mode == "no_headers":  # a server that takes its time before answering at all
            self.fake.holding.set()
            self.fake.closing.wait(10)
            return
        if script.status != 200 or script.content_type != "text/event-stream":
            body = script.body
            payload = body if isinstance(body, str | bytes) else json.dumps(body)
            return self._send(
                script.status, script.content_type, payload if isinstance(payload, bytes) else payload.encode()
            )
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for item in script.chunks:
                text = item if isinstance(item, str) else f"data: {json.dumps(item)}\n\n"
                self._chunk(text)
            if script.mode == "hold":
                self.fake.holding.set()
                for _ in range(400):  # up to 20 s, until the client goes away
                    time.sleep(0.05)
                    self._chunk(": keep-alive\n\n")
                return
            if script.mode == "stall":
                self.fake.holding.set()
                self.fake.closing.wait(10)
                return
            if script.done:
                self._chunk("data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.fake.client_left.set()
        self.close_connection = True

    def _chunk(self, text: str) -> None:
        data = text.encode("utf-8")
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(self, status: int, body: Any) -> None:
        self._send(status, "application/json", json.dumps(body).encode())

    def _send(self, status: int, content_type: str, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True
