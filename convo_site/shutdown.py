"""Graceful shutdown of a serving process (SIGTERM), within CONVO_SHUTDOWN_GRACE_SECONDS.

What daphne does by itself (daphne/server.py, Twisted's reactor): SIGTERM calls ``reactor.stop()``;
before the reactor stops, ``kill_all_applications`` cancels every application coroutine at once
(in-flight requests lose their responses, committed or not), and the process then waits, at
interpreter exit, for the executor threads still running views. A thread that waits on the event
loop (a sync middleware calling the rest of the chain through ``async_to_sync``) then waits forever,
so the process never exits. Daphne sends no ASGI lifespan events, so the application cannot learn of
the shutdown through the protocol either.

So Convo takes SIGTERM (and SIGINT) over once daphne's reactor runs, and drains while the loop still
serves:

1. new HTTP requests are refused with 503 (``Retry-After: 1``, ``Connection: close``), new websocket
   handshakes are refused, and every open websocket is closed with 1012 (service restart): pages
   reconnect at once, to another process, and catch up by sequence number;
2. the replies this process runs are handed over (``sessions_app.replies.workers.shutdown``: finished
   when short, else released for another process to resume);
3. in-flight requests finish (their responses are sent), up to the grace period;
4. the listener closes, what still arrives on open connections is answered (503), then daphne's own
   shutdown runs (the reactor stops); a watchdog ends the process if anything still holds it
   WATCHDOG_MARGIN (3.5) seconds after the grace period. A second signal stops at once.

So with the default grace of 5 s a process is gone within 8.5 s of SIGTERM (a stopping deadline of 10
s, Kubernetes' default is 30, leaves room); keep CONVO_SHUTDOWN_GRACE_SECONDS at most 6 for 10 s.

Under a server that speaks the lifespan protocol (uvicorn, hypercorn), ``lifespan.shutdown`` runs
steps 2 and 3 (the server itself refuses new connections and closes websockets).

Every middleware in settings.MIDDLEWARE is async-capable (see tests/test_shutdown.py): the request
runs on the loop, and only the view runs in a thread, so no thread waits on a stopped loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from django.conf import settings

logger = logging.getLogger("sessions_app.shutdown")

CLOSE_SERVICE_RESTART = 1012  # RFC 6455 (IANA registry): the server is restarting; reconnect
# Handing the replies over may take this long after the grace period (the replies engine's shutdown
# waits for its threads to stop writing).
HANDOVER_SECONDS = 2.5
# Once the listener is closed, the process stops after this long without a new request arriving on a
# connection it had already accepted (at most twice this).
QUIET_SECONDS = 0.3
# Seconds after the grace period before the watchdog ends a process that still has not exited.
WATCHDOG_MARGIN = HANDOVER_SECONDS + 2 * QUIET_SECONDS + 0.4


class Drain:
    """What one process is serving right now, and its shutdown."""

    def __init__(self) -> None:
        self.shutting_down = False
        self.started_at: float | None = None
        self.http_in_flight = 0
        self.last_request_at = 0.0
        self._idle: asyncio.Event | None = None
        self._sockets: dict[int, Any] = {}  # id -> the socket's send (to close it)
        self._closed: set[int] = set()
        self.task: asyncio.Future | None = None

    # -- the ASGI side -------------------------------------------------------------------------

    def wrap(self, app):
        drain = self

        async def application(scope, receive, send):
            kind = scope["type"]
            if kind == "lifespan":
                return await drain._lifespan(receive, send)
            if kind == "http":
                return await drain._http(app, scope, receive, send)
            if kind == "websocket":
                return await drain._websocket(app, scope, receive, send)
            return await app(scope, receive, send)

        return application

    async def _http(self, app, scope, receive, send) -> None:
        self.last_request_at = time.monotonic()
        if self.shutting_down:
            await _refuse_http(scope, send)
            return
        self.http_in_flight += 1
        try:
            await app(scope, receive, send)
        finally:
            self.http_in_flight -= 1
            if self.http_in_flight == 0 and self._idle is not None:
                self._idle.set()

    async def _websocket(self, app, scope, receive, send) -> None:
        if self.shutting_down:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": CLOSE_SERVICE_RESTART})
            return
        key = id(scope)

        async def guarded_send(message: dict[str, Any]) -> None:
            if key in self._closed:
                return  # closed by the shutdown: nothing more goes out on it
            await send(message)

        self._sockets[key] = send
        try:
            await app(scope, receive, guarded_send)
        finally:
            self._sockets.pop(key, None)
            self._closed.discard(key)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown(stop=None)
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the shutdown --------------------------------------------------------------------------

    async def close_sockets(self) -> int:
        count = 0
        for key, send in list(self._sockets.items()):
            if key in self._closed:
                continue
            self._closed.add(key)
            try:
                protocol = _daphne_protocol(send)
                if protocol is not None and protocol.state == protocol.STATE_OPEN:
                    # daphne (autobahn) lets an application close only with 1000 or 3000-4999;
                    # its protocol sends 1012 itself (as it sends 1011 for a crash).
                    protocol.sendCloseFrame(code=CLOSE_SERVICE_RESTART, isReply=False)
                else:
                    await send({"type": "websocket.close", "code": CLOSE_SERVICE_RESTART})
                count += 1
            except Exception as exc:  # the socket went meanwhile
                logger.info("Could not close a websocket: %r", exc)
        return count

    async def shutdown(self, *, stop, stop_listening=None) -> None:
        """Refuse new work, close sockets, hand replies over, wait for in-flight requests (up to the
        grace period), stop listening, answer what is still arriving on open connections, then call
        ``stop`` (the server's own shutdown)."""
        grace = max(0.0, float(settings.CONVO_SHUTDOWN_GRACE_SECONDS))
        self.shutting_down = True
        self.started_at = time.monotonic()
        deadline = self.started_at + grace
        sockets = await self.close_sockets()
        logger.warning(
            "Shutting down: %d request(s) in flight, %d websocket(s) closed (1012), grace %.1f s",
            self.http_in_flight,
            sockets,
            grace,
        )
        handover = _in_daemon_thread(_hand_replies_over, grace)
        self._idle = asyncio.Event()
        if self.http_in_flight == 0:
            self._idle.set()
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            logger.warning(
                "Grace period over with %d request(s) still in flight: they are cancelled", self.http_in_flight
            )
        try:
            # Replies that did not finish within the grace period are handed over (their rows marked
            # for another process to resume), which takes a moment more.
            await asyncio.wait_for(asyncio.shield(handover), max(0.0, deadline + HANDOVER_SECONDS - time.monotonic()))
        except TimeoutError:
            logger.warning("The replies were not all handed over in time")
        if stop_listening is not None:
            # New connections are refused from now on (a client or balancer retries elsewhere); the
            # requests already on their way over open connections are still answered (503).
            stop_listening()
            quiet_until = time.monotonic() + 2 * QUIET_SECONDS
            while time.monotonic() < quiet_until and (
                self.http_in_flight or time.monotonic() - self.last_request_at < QUIET_SECONDS
            ):
                await asyncio.sleep(0.05)
        logger.info("Drained in %.2f s", time.monotonic() - self.started_at)
        if stop is not None:
            stop()


def _daphne_protocol(send: Any) -> Any | None:
    """The daphne WebSocketProtocol behind an ASGI ``send`` (daphne passes
    ``partial(server.handle_reply, protocol)``), or None under another server."""
    args = getattr(send, "args", ())
    protocol = args[0] if args else None
    return protocol if hasattr(protocol, "sendCloseFrame") and hasattr(protocol, "STATE_OPEN") else None


def _in_daemon_thread(func, *args: Any) -> asyncio.Future:
    """Run ``func`` in a daemon thread (one that never holds the process's exit up); its future."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle() -> None:
        if not future.done():
            future.set_result(None)

    def run() -> None:
        try:
            func(*args)
        finally:
            loop.call_soon_threadsafe(settle)

    threading.Thread(target=run, name="convo-shutdown-handover", daemon=True).start()
    return future


def _hand_replies_over(grace: float) -> None:
    """Finish or release this process's running replies (the replies engine decides which)."""
    try:
        from sessions_app.replies import workers

        workers.shutdown(grace)
    except Exception:
        logger.exception("Could not hand the running replies over")
    finally:
        from django.db import connections

        connections.close_all()


async def _refuse_http(scope, send) -> None:
    api = scope.get("path", "").startswith("/api/")
    if api:
        body = json.dumps({"error": "shutting_down", "detail": "The server is restarting: try again."}).encode()
        content_type = b"application/json"
    else:
        body = b"The server is restarting: try again in a moment."
        content_type = b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


drain = Drain()


# ---------------------------------------------------------------------------------------------
# daphne: take its SIGTERM / SIGINT over once its reactor runs.


def install_for_daphne() -> None:
    """When this process is daphne's (Twisted's reactor imported), drain on SIGTERM / SIGINT."""
    if "daphne.server" not in sys.modules or "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import reactor

    reactor.callWhenRunning(_take_signals, reactor)


def _take_signals(reactor) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        if drain.task is not None:  # a second signal: stop now
            reactor.callFromThread(reactor.stop)
            return
        reactor.callFromThread(_begin, reactor, signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _begin(reactor, signum: int) -> None:
    if drain.task is not None:
        return
    grace = max(0.0, float(settings.CONVO_SHUTDOWN_GRACE_SECONDS))
    logger.warning("Received %s: draining for up to %.1f s", signal.Signals(signum).name, grace)
    _start_watchdog(grace + WATCHDOG_MARGIN)

    def stop() -> None:
        if reactor.running:
            reactor.stop()

    def stop_listening() -> None:
        from twisted.internet import tcp

        for reader in list(reactor.getReaders()):
            if isinstance(reader, tcp.Port):
                reader.stopListening()

    drain.task = asyncio.ensure_future(drain.shutdown(stop=stop, stop_listening=stop_listening))


def _start_watchdog(seconds: float) -> None:
    def watch() -> None:
        time.sleep(seconds)
        logger.error("Still running %.1f s after the shutdown began: exiting now", seconds)
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=watch, name="convo-shutdown-watchdog", daemon=True).start()
