"""Clients of the fault suite: chat pages (real websocket clients speaking static/convo/app.js's
protocol) and API writers (appends with an Idempotency-Key, retried on another server).

A ``Page`` does what the page's script does with the pushed fragments: it places messages by
sequence number and skips any it already shows (at-least-once delivery, de-duplicated by seq), keeps
``list-bounds``' last_seq, follows ``#reply-stream``, says hello with its last_seq on every (re)open and
checks in every FAULT_RESYNC_SECONDS. When its server goes away it reconnects, as a page behind a load
balancer would, to the next server that is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from django.conf import settings as django_settings
from django.test import Client

from sessions_app import keys

from .conftest import FAULT_RESYNC_SECONDS, Server

MESSAGE = re.compile(r'<li id="msg-(\d+)" class="msg[^"]*" data-seq="(\d+)"[^>]*>(.*?)</li>', re.S)
BOUNDS = re.compile(r'<div id="list-bounds"[^>]*data-last-seq="(\d+)"')
PANE = re.compile(r'<section id="messages"[^>]*hx-swap-oob="true"')
STREAMING = re.compile(r'class="msg role-assistant streaming" data-reply="(\d+)"')
STREAM_TEXT = re.compile(r'class="[^"]*\bstream-text\b[^"]*">(.*?)</div>', re.S)
FRAME_LIMIT = 256 * 1024  # the bound for one pushed frame (daphne closes at 1 MiB)


def login(user: Any) -> tuple[str, str]:
    """A browser login (session cookie) and an API key for ``user``."""
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={client.cookies[django_settings.SESSION_COOKIE_NAME].value}"
    _, secret = keys.create_api_key(user, f"faults-{uuid.uuid4().hex[:6]}")
    return cookie, secret


@dataclass
class Frame:
    at: float
    size: int
    server: str


class Page:
    """One open chat page."""

    def __init__(
        self, servers: list[Server], session_id: str, cookie: str, *, name: str = "page", resync: bool = True
    ) -> None:
        self.servers = servers
        self.resync = resync
        self.session_id = session_id
        self.cookie = cookie
        self.name = name
        self.shown: dict[int, str] = {}  # seq -> the message's HTML
        self.deliveries = 0  # message elements received (duplicates included)
        self.duplicates = 0  # ... of which the page already showed
        self.last_seq = 0
        self.frames: list[Frame] = []
        self.closes: list[tuple[float, int | None, str]] = []  # (when, code, server)
        self.opens: list[tuple[float, str]] = []
        self.handshake_failures: list[tuple[float, str, str]] = []
        self.stream: tuple[str, int | None, str] = ("idle", None, "")  # state, reply id, text
        self.stream_log: list[tuple[float, str, int | None]] = []  # (when, state, reply id)
        self.seen_at: dict[int, float] = {}  # seq -> when the page first showed it
        self.server: Server | None = None
        self.retries = 0
        self._task: asyncio.Task | None = None
        self._ws: Any = None
        self._stopping = False

    # -- running ---------------------------------------------------------------------------------

    def start(self) -> Page:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def _pick(self, preferred: Server | None, avoid: Server | None) -> Server | None:
        """The server the page's next connection reaches: a load balancer sends it to the preferred
        one while that is up, else to the next one up, away from one that just refused or restarts."""
        order = [preferred] if preferred is not None else []
        order += [s for s in self.servers if s is not preferred and s is not avoid]
        order += [avoid] if avoid is not None else []
        for server in order:
            if server is not None and server.alive:
                return server
        return None

    async def _run(self) -> None:
        preferred, avoid = self.servers[0], None
        while not self._stopping:
            server = self._pick(preferred, avoid)
            if server is None:
                await asyncio.sleep(0.1)
                continue
            code = await self._session(server)
            if code in (4404, 4401):
                return
            # The page's backoff: the ws extension retries 1006/1011/1012/1013 after
            # reconnectDelay(n) (0.25-0.5 s at first); the page's own handler waits the same for others.
            delay = min(15.0, 0.5 * 2 ** min(self.retries, 8)) * 0.75
            self.retries += 1
            if code is None or code in (1001, 1012):  # refused, or going away: another server
                preferred, avoid = None, server
            else:
                preferred, avoid = server, None
            await asyncio.sleep(delay)

    async def _session(self, server: Server) -> int | None:
        url = f"{server.ws_url}/ws/sessions/{self.session_id}/"
        headers = {"Cookie": self.cookie, "Origin": server.url}
        try:
            ws = await websockets.connect(url, additional_headers=headers, max_size=None, open_timeout=5)
        except (OSError, websockets.exceptions.InvalidHandshake, TimeoutError) as exc:
            self.handshake_failures.append((time.monotonic(), server.name, repr(exc)))
            return None
        self._ws = ws
        self.server = server
        self.opens.append((time.monotonic(), server.name))
        delivered = False
        checkin = asyncio.ensure_future(self._check_in(ws))
        try:
            await ws.send(json.dumps({"type": "hello", "last_seq": self.last_seq, "version": None, "budget": None}))
            async for data in ws:
                text = data if isinstance(data, str) else data.decode()
                self.frames.append(Frame(time.monotonic(), len(text.encode()), server.name))
                self._apply(text)
                if not delivered:
                    delivered = True
                    self.retries = 0  # as the page: the backoff resets once a socket delivered
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            checkin.cancel()
            self._ws = None
        code = ws.close_code
        self.closes.append((time.monotonic(), code, server.name))
        return code

    async def _check_in(self, ws: Any) -> None:
        """The page's periodic check-in every CONVO_RESYNC_SECONDS: its last_seq and the reply it shows
        running (the panels' version is not tracked here)."""
        with contextlib.suppress(Exception):
            while self.resync:
                await asyncio.sleep(FAULT_RESYNC_SECONDS)
                shown = str(self.stream[1]) if self.stream[0] == "streaming" else None
                await ws.send(json.dumps({"type": "sync", "last_seq": self.last_seq, "version": None, "reply": shown}))

    # -- what the page's script does with a frame ------------------------------------------------

    def _apply(self, html: str) -> None:
        now = time.monotonic()
        items = [(int(m[2]), m[0]) for m in MESSAGE.finditer(html)]
        if PANE.search(html):
            self.shown = {}
        for seq, element in items:
            self.deliveries += 1
            if seq in self.shown:
                self.duplicates += 1
                continue
            self.shown[seq] = element
            self.seen_at.setdefault(seq, now)
        bounds = BOUNDS.search(html)
        if bounds:
            self.last_seq = int(bounds[1])
        if 'id="reply-stream"' in html:
            streaming = STREAMING.search(html)
            if streaming:
                text = STREAM_TEXT.search(html)
                self.stream = ("streaming", int(streaming[1]), text[1] if text else "")
            elif "reply-error" in html:
                self.stream = ("error", None, "")
            else:
                self.stream = ("idle", None, "")
            self.stream_log.append((now, self.stream[0], self.stream[1]))

    # -- what a test asks ------------------------------------------------------------------------

    def seqs(self) -> list[int]:
        return sorted(self.shown)

    def has(self, token: str) -> bool:
        return any(token in element for element in self.shown.values())

    async def wait_for(self, predicate, timeout: float, step: float = 0.05) -> float | None:
        """Seconds until ``predicate()`` held, or None when it did not within ``timeout``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if predicate():
                return time.monotonic() - started
            await asyncio.sleep(step)
        return None

    @property
    def max_frame(self) -> int:
        return max((f.size for f in self.frames), default=0)


@dataclass
class Attempt:
    key: str
    server: str
    status: int | None  # None: no HTTP answer
    error: str = ""
    started: float = 0.0
    ended: float = 0.0
    replayed: bool = False


@dataclass
class Write:
    token: str
    key: str
    attempts: list[Attempt] = field(default_factory=list)
    seq: int | None = None
    committed_at: float | None = None


class Api:
    """The JSON API on whichever server is up, with an API key."""

    def __init__(self, servers: list[Server], secret: str) -> None:
        self.servers = servers
        self.headers = {"Authorization": f"Bearer {secret}"}
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=2.0))

    async def close(self) -> None:
        await self.client.aclose()

    def server(self, preferred: Server | None = None) -> Server:
        for server in ([preferred] if preferred else []) + self.servers:
            if server is not None and server.alive:
                return server
        raise RuntimeError("no server is up")

    async def call(self, method: str, path: str, *, server: Server | None = None, **kwargs: Any) -> httpx.Response:
        """One request, retried on another server (and again) while none answers or it answers 503."""
        deadline = time.monotonic() + 20
        target = self.server(server)
        while True:
            try:
                response = await self.client.request(
                    method,
                    f"{target.url}/api/v1{path}",
                    headers={**self.headers, **kwargs.pop("headers", {})},
                    **kwargs,
                )
                if response.status_code != 503 or time.monotonic() > deadline:
                    return response
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)
            target = self.next_server(target)

    def next_server(self, current: Server) -> Server:
        alive = [s for s in self.servers if s.alive]
        if not alive:
            raise RuntimeError("no server is up")
        return alive[(alive.index(current) + 1) % len(alive)] if current in alive else alive[0]

    async def create_session(self, session_id: str, **config: Any) -> None:
        body = {"id": session_id, "config": {"max_messages": 1000, "max_tokens": 10_000_000, **config}}
        response = await self.call("POST", "/sessions", json=body)
        assert response.status_code == 201, response.text

    async def messages(self, session_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after = 0
        while True:
            response = await self.call("GET", f"/sessions/{session_id}/messages?after={after}&limit=500")
            assert response.status_code == 200, response.text
            page = response.json()
            items += page["items"]
            if page["next_after"] is None:
                return items
            after = page["next_after"]

    async def reply(self, session_id: str) -> dict[str, Any] | None:
        response = await self.call("GET", f"/sessions/{session_id}/reply")
        return response.json() if response.status_code == 200 else None

    async def append(
        self, session_id: str, token: str, *, server: Server | None = None, respond: bool = False, filler: str = ""
    ) -> Write:
        """Append a user message (its text starts with ``token``) until it is stored: each attempt
        goes to a server that is up, with the same Idempotency-Key."""
        write = Write(token=token, key=uuid.uuid4().hex)
        body: dict[str, Any] = {"role": "user", "content": f"{token} {filler}".strip()}
        if respond:
            body["respond"] = True
        target = self.server(server)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            attempt = Attempt(key=write.key, server=target.name, status=None, started=time.monotonic())
            write.attempts.append(attempt)
            try:
                response = await self.client.post(
                    f"{target.url}/api/v1/sessions/{session_id}/messages",
                    json=body,
                    headers={**self.headers, "Idempotency-Key": write.key},
                )
                attempt.status = response.status_code
                attempt.replayed = response.headers.get("Idempotent-Replayed") == "true"
                if response.status_code == 201:
                    attempt.ended = time.monotonic()
                    write.seq = response.json()["seq"]
                    write.committed_at = attempt.ended
                    return write
                attempt.error = response.text[:300]
            except httpx.TransportError as exc:
                attempt.error = f"{type(exc).__name__}: {exc}"
            attempt.ended = time.monotonic()
            await asyncio.sleep(0.1)
            target = self.next_server(target)
        raise AssertionError(f"{token}: not stored within 30 s: {write.attempts}")


def committed_5xx(writes: list[Write]) -> list[Attempt]:
    """Attempts answered 5xx although they had stored the message (a later attempt with the same key
    was a replay of it)."""
    bad = []
    for write in writes:
        for i, attempt in enumerate(write.attempts):
            if attempt.status is not None and attempt.status >= 500:
                later = write.attempts[i + 1 :]
                if any(a.replayed for a in later):
                    bad.append(attempt)
    return bad


def dropped(writes: list[Write]) -> list[Attempt]:
    """Attempts whose request reached a server but got no answer (the connection was dropped)."""
    return [
        a
        for w in writes
        for a in w.attempts
        if a.status is None and not a.error.startswith(("ConnectError", "ConnectTimeout"))
    ]


def check_delivery(page: Page, stored: list[dict[str, Any]], writes: list[Write]) -> None:
    """0 lost, 0 duplicated, 0 out of order: the page shows exactly the stored list, in order, and
    the stored list holds each write exactly once."""
    stored_seqs = [m["seq"] for m in stored]
    assert stored_seqs == sorted(stored_seqs), "the stored list is out of order"
    for write in writes:
        holders = [m["seq"] for m in stored if m["content"].split(" ", 1)[0] == write.token]
        assert holders == [write.seq], f"{write.token}: stored as {holders}, answered {write.seq}"
    missing = sorted(set(stored_seqs) - set(page.shown))
    extra = sorted(set(page.shown) - set(stored_seqs))
    assert not missing, f"{page.name}: lost {missing}"
    assert not extra, f"{page.name}: shows messages that are not stored: {extra}"
    assert page.seqs() == stored_seqs
    for message in stored:
        token = message["content"].split(" ", 1)[0]
        assert token in page.shown[message["seq"]], f"{page.name}: #{message['seq']} shows other content"
