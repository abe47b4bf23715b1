"""W4 — live fan-out: 50 websocket clients on one conversation, 1,000 messages posted through the
chat UI; delivery latency from commit to receipt (p50/p99) and lost/duplicated counts.

    python bench/w4_fanout.py [--clients 50] [--messages 1000] [--rate 25] [--modes memory,redis]

Mode ``memory``: one daphne process on the in-memory channel layer serves the clients and the posts.
Mode ``redis``: two daphne processes on the Redis channel layer (REDIS_URL; CONVO_REDIS_LAYER picks
pubsub, the default, or core); the clients are on one, the posts go through the other. Prints one
JSON line per mode.

Latency is measured per message and client from the message's ``created_at`` (stamped by the engine
inside the write, just before the commit, and carried in the pushed HTML as data-created) to the
moment the client has the frame: an upper bound of commit → receipt. Lost = messages a client never
received; duplicated = messages a client received more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

import httpx
from _setup import ROOT, database_label, django_setup
from websockets.asyncio.client import connect

MESSAGE_RE = re.compile(r'<li id="msg-(\d+)"[^>]*data-created="([^"]+)"')


class Server:
    def __init__(self, port: int, redis_url: str | None) -> None:
        self.port, self.redis_url = port, redis_url
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        from django.conf import settings

        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "convo_site.settings", "CONVO_LOG_LEVEL": "WARNING"}
        env.pop("REDIS_URL", None)
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        env["CONVO_CHANNEL_PREFIX"] = settings.CONVO_CHANNEL_PREFIX  # the same channels as this process
        db = settings.DATABASES["default"]
        if db["ENGINE"].endswith("sqlite3"):
            env["CONVO_SQLITE_PATH"] = str(db["NAME"])
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                raise SystemExit(f"port {self.port} is in use")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "convo_site.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise SystemExit(f"daphne did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def prepare(session_id: str) -> str:
    """A fresh conversation for the bench user; returns the session cookie header value."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from sessions_app import engine

    user, _ = get_user_model().objects.get_or_create(username="bench-w4")
    if session_id in engine.session_list_for_user(user):
        engine.session_delete(session_id)
    engine.session_create(
        session_id, owner=user, config=engine.SessionConfig(max_messages=100_000, max_tokens=8192, timeout_seconds=None)
    )
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


class Receiver:
    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.latencies: list[float] = []

    async def run(self, ws, ready: asyncio.Event) -> None:
        await ws.send(json.dumps({"type": "hello", "last_seq": 0, "budget": None}))
        await ws.recv()  # the catch-up answer (fresh panels)
        ready.set()
        async for frame in ws:
            now = time.time()
            for seq, created in MESSAGE_RE.findall(frame):
                seq = int(seq)
                self.counts[seq] = self.counts.get(seq, 0) + 1
                if self.counts[seq] == 1:
                    self.latencies.append((now - dt.datetime.fromisoformat(created).timestamp()) * 1000)


async def run_mode(
    mode: str, session_id: str, cookie: str, clients: int, messages: int, rate: float, servers: list[Server]
) -> dict:
    push_server, post_server = servers[0], servers[-1]
    ws_url = push_server.url.replace("http", "ws") + f"/ws/sessions/{session_id}/"
    receivers = [Receiver() for _ in range(clients)]
    sockets = []
    tasks = []
    for receiver in receivers:
        ws = await connect(
            ws_url, additional_headers={"Cookie": cookie}, origin=push_server.url, max_size=None, ping_interval=None
        )
        ready = asyncio.Event()
        sockets.append(ws)
        tasks.append(asyncio.create_task(receiver.run(ws, ready)))
        await asyncio.wait_for(ready.wait(), 10)

    async with httpx.AsyncClient(base_url=post_server.url, headers={"Cookie": cookie}, timeout=30) as http:
        page = await http.get(f"/c/{session_id}/")
        page.raise_for_status()
        token = page.cookies.get("csrftoken") or re.search(r'"X-CSRFToken": "([^"]+)"', page.text).group(1)
        headers = {"X-CSRFToken": token, "HX-Request": "true", "Cookie": f"{cookie}; csrftoken={token}"}
        started = time.perf_counter()
        interval = 1.0 / rate
        for i in range(messages):
            due = started + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            # Written as the assistant (the composer's transcript mode): a user message would start a reply,
            # and the next one would be refused while it runs. The fan-out path is the same for every role.
            response = await http.post(
                f"/c/{session_id}/send/", data={"role": "assistant", "content": f"fan-out message {i}"}, headers=headers
            )
            response.raise_for_status()
        post_seconds = time.perf_counter() - started

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(len(r.counts) < messages for r in receivers):
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)  # late duplicates would show up here
    for ws in sockets:
        await ws.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    latencies = sorted(x for r in receivers for x in r.latencies)
    lost = sum(messages - len([s for s in r.counts if 1 <= s <= messages]) for r in receivers)
    duplicated = sum(c - 1 for r in receivers for c in r.counts.values() if c > 1)
    return {
        "bench": "W4",
        "mode": mode,
        "processes": len(servers),
        "layer": "InMemoryChannelLayer" if mode == "memory" else _redis_layer(),
        "db": database_label(),
        "clients": clients,
        "messages": messages,
        "post_rate_per_s": round(messages / post_seconds, 1),
        "deliveries": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1) if latencies else None,
        "max_ms": round(latencies[-1], 1) if latencies else None,
        "lost": lost,
        "duplicated": duplicated,
        "target_p99_ms": 100,
    }


def _redis_layer() -> str:
    from django.conf import settings

    return "RedisPubSubChannelLayer" if settings.CONVO_REDIS_LAYER == "pubsub" else "RedisChannelLayer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=25.0, help="messages posted per second")
    parser.add_argument("--modes", default="memory,redis")
    parser.add_argument("--port", type=int, default=8170, help="first of three ports")
    args = parser.parse_args()
    # The servers run like production (DEBUG off); the bench process signs their session cookie.
    os.environ["DJANGO_DEBUG"] = "false"
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret")
    django_setup()
    redis_url = os.environ.get("REDIS_URL")
    for mode in args.modes.split(","):
        if mode == "redis" and not redis_url:
            print(json.dumps({"bench": "W4", "mode": "redis", "skipped": "set REDIS_URL"}), flush=True)
            continue
        if mode == "memory":
            servers = [Server(args.port, None)]
        else:
            servers = [Server(args.port + 1, redis_url), Server(args.port + 2, redis_url)]
        try:
            for server in servers:
                server.start()
            session_id = f"bench-w4-{mode}"
            cookie = prepare(session_id)
            result = asyncio.run(run_mode(mode, session_id, cookie, args.clients, args.messages, args.rate, servers))
        finally:
            for server in servers:
                server.stop()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
