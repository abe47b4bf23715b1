"""Listening to a session's channel-layer group in async tests, the way an open page's consumer does.

The receive loop runs as its own task and is never cancelled mid-wait: the Redis pub/sub layer drops
its subscription when a receive is cancelled (it takes that for a consumer going away).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from sessions_app import engine, events


class Listener:
    """Listen to one session's group: the session's key, or an id (looked up for any owner on entry)."""

    def __init__(self, session: str | uuid.UUID) -> None:
        self.session = session
        self.key: uuid.UUID | None = None
        self.group = ""
        self.layer = get_channel_layer()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.channel = ""
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Listener:
        self.key = self.session
        if not isinstance(self.key, uuid.UUID):
            self.key = (await database_sync_to_async(engine.session_get)(self.session)).pk
        self.group = events.group_name(self.key)
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel)
        self.task = asyncio.ensure_future(self._pump())
        return self

    async def __aexit__(self, *exc) -> None:
        await self.layer.group_discard(self.group, self.channel)
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _pump(self) -> None:
        while True:
            self.queue.put_nowait(await self.layer.receive(self.channel))

    async def get(self, timeout: float = 5.0) -> dict | None:
        """The next event, or None when none comes within ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def until(self, kind: str, limit: int = 20, timeout: float = 10.0) -> dict:
        """Skip events until one of ``kind`` arrives."""
        for _ in range(limit):
            event = await self.get(timeout)
            assert event is not None, f"no {kind} event within {timeout} s"
            if event["kind"] == kind:
                return event
        raise AssertionError(f"no {kind} event in {limit} events")
