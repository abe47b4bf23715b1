"""Live push: one websocket per open conversation page.

The consumer joins its session's channel-layer group (``events.group_name``) and, for each change
notification the engine sends after a commit, re-reads the database and pushes the same partials the
page is made of, as htmx out-of-band fragments. Notifications carry no content: the database is the
source of truth, so a lost or late notification is repaired by the next one or by a reconnect.

Protocol (client → server, JSON): ``{"type": "hello", "last_seq": N, "budget": B}`` right after the
socket opens — the server answers with exactly the listed messages after N, in order, plus fresh
panels, and from then on pushes every change; ``{"type": "budget", "budget": B}`` when the page's
context budget changes. Close codes: 4404 the session is gone (the page should not reconnect).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from . import engine, events, rendering

logger = logging.getLogger(__name__)

# A page further behind than this gets the whole (newest page of the) message list instead.
CATCHUP_MAX = 500
CLOSE_GONE = 4404


class _RenderCache:
    """Fragments rendered for one version of a session, shared by every socket of this process.

    Fifty pages open on one conversation receive the same notification; the first renders, the rest
    reuse it. The key holds everything the fragment depends on (the session's version, the page's
    position and budget, the owner), so a stale entry is never served.
    """

    def __init__(self, size: int = 256) -> None:
        self._items: OrderedDict[tuple, str] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get_or_render(self, key: tuple, render) -> str:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        html = render()
        with self._lock:
            self._items[key] = html
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return html


render_cache = _RenderCache()


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > engine.MAX_INT:
        return None
    return value


class SessionConsumer(AsyncWebsocketConsumer):
    session_id: str
    group: str | None = None
    last_seq: int | None = None  # the newest sequence number this page has been sent (None: no hello yet)
    budget: int | None = None

    async def connect(self) -> None:
        self.session_id = self.scope["url_route"]["kwargs"]["session_id"]
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept: the handshake is refused (403)
            return
        if not await database_sync_to_async(self._owns)(user):
            await self.close()
            return
        self.user = user
        self.group = events.group_name(self.session_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = json.loads(text_data or "")
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if "budget" in message:
            budget = message.get("budget")
            self.budget = budget if _positive_int(budget) and budget > 0 else None
        if message.get("type") == "hello":
            after = _positive_int(message.get("last_seq")) or 0
            await self._push(lambda: self._catch_up(after))
        elif message.get("type") == "budget" and self.last_seq is not None:
            await self._push(self._panels_only)

    async def session_event(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == events.REPLY:
            html = rendering.render_reply_oob(self.session_id, str(event.get("state", "")), str(event.get("text", "")))
            await self.send(text_data=html)
            return
        if self.last_seq is None:
            return  # no hello yet: the hello's catch-up will include this change
        if kind in (events.CLEARED, events.CONFIG, events.DELETED):
            await self._push(self._full_refresh)
        else:
            await self._push(lambda: self._catch_up(self.last_seq or 0))

    # -----------------------------------------------------------------------------------------
    # Database work (sync, in the database thread).

    def _owns(self, user: Any) -> bool:
        try:
            engine.session_get(self.session_id, owner=user)
        except engine.SessionNotFound:
            return False
        return True

    async def _push(self, build) -> None:
        html = await database_sync_to_async(self._guarded)(build)
        if html is None:
            await self.send(text_data=rendering.render_gone_oob(self.session_id))
            await self.close(code=CLOSE_GONE)
        elif html:
            await self.send(text_data=html)

    def _guarded(self, build) -> str | None:
        try:
            return build()
        except engine.SessionNotFound:
            return None

    def _session(self):
        return engine.session_get(self.session_id, owner=self.user)

    def _key(self, session, what: str, after: int | None) -> tuple:
        expired = session.is_expired()
        return (session.pk, session.last_seq, session.updated_at, expired, what, after, self.budget, self.user.pk)

    def _catch_up(self, after: int) -> str:
        """Exactly the listed messages after ``after``, in order, then fresh panels."""
        session = self._session()

        def render() -> str:
            if after > session.last_seq:
                # The page is ahead of the database (the session was replaced): start it over.
                return rendering.render_messages_pane_oob(session) + rendering.render_panels_oob(
                    session, self.user, budget=self.budget
                )
            missing = engine.messages_page(session, after=after, limit=CATCHUP_MAX + 1)
            if len(missing) > CATCHUP_MAX:
                head = rendering.render_messages_pane_oob(session)
            else:
                head = rendering.render_messages_oob(missing, session)
            return head + rendering.render_panels_oob(session, self.user, budget=self.budget)

        html = render_cache.get_or_render(self._key(session, "catch-up", after), render)
        self.last_seq = session.last_seq
        return html

    def _full_refresh(self) -> str:
        session = self._session()
        html = render_cache.get_or_render(
            self._key(session, "refresh", None),
            lambda: (
                rendering.render_messages_pane_oob(session)
                + rendering.render_panels_oob(session, self.user, budget=self.budget)
            ),
        )
        self.last_seq = session.last_seq
        return html

    def _panels_only(self) -> str:
        session = self._session()
        return rendering.render_panels_oob(session, self.user, budget=self.budget)
