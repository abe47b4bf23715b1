"""Live push: one websocket per open conversation page.

The consumer joins its session's channel-layer group (``events.group_name``) and, for each change
notification the engine sends after a commit, re-reads the database and pushes the same partials the
page is made of, as htmx out-of-band fragments. Notifications carry no content: the database is the
source of truth, so a lost or late notification is repaired by the next one or by a reconnect.

Authorization: at connect the consumer finds the session by (user, id) and from then on knows it only
by its key: the group, the reads and every event it forwards are that session's, whoever later
creates a session with the same id. Deleting the session closes the socket (4404); clearing it
re-sends the page. The socket also joins its user's group: logging out (that browser), a new password
or deactivation closes it (4401), and the hello re-checks that the login still holds, so a socket
cannot outlive its login.

Protocol (client → server, JSON): ``{"type": "hello", "last_seq": N, "version": V, "budget": B}``
right after the socket opens — the server answers with exactly the listed messages after N, in
order, plus fresh panels unless the page's panels are current (V, the session header's
``data-version``), and from then on pushes every change (a second hello is ignored);
``{"type": "sync", "last_seq": N, "version": V, "reply": R}`` every CONVO_RESYNC_SECONDS (R: the
reply the page shows running, or null) — the server answers with whatever the page lacks, nothing
when it lacks nothing (one read of the session's row), so a lost notification (a Redis outage) costs
at most that much staleness; ``{"type": "budget", "budget": B}`` when the page's context budget
changes. Close code 4404: the session is gone (the page does not reconnect); 4401: the login ended (nor does it then); 1008: the
page sent frames faster than CONVO_WS_FRAMES_PER_SECOND (burst CONVO_WS_FRAME_BURST), each of which
may cost a rendering; 1009: a frame over CONVO_WS_MAX_FRAME_BYTES. Anything else that is not such a
JSON object is ignored.

Assistant replies: a REPLY event is rendered from the event itself (the streamed text and Stop while
it runs, an alert when it failed), since deltas come many times a second; when it ends, Regenerate /
Retry follow from the database. The hello's answer includes the reply as the database has it, so a
page that opens or reconnects mid-reply shows the text so far and follows the next events.

Frames: every push is split between fragments into frames of at most FRAME_BYTES (daphne closes a
socket whose outgoing frame exceeds 1 MiB). The channel layer is not needed to serve a socket: during
a Redis outage handshakes are accepted and pages are served from the database (hello, sync) until the
layer is back (see _LayerWatch). REPLY events of a reply that is not the session's running one (a
zombie stream) are dropped (see _reply_is_current).

Cost: new messages go out at once; the panels (timeline, state, context, header) follow within
PANEL_DELAY, once for a burst of changes. Sockets of one process share their database reads and
rendered fragments, so fifty pages on one conversation cost about one page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from html import escape as html_escape
from importlib import import_module
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.utils import await_many_dispatch
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.utils.crypto import constant_time_compare

from . import engine, events, rendering, replies
from .logins import login_digest
from .models import ConversationSession

logger = logging.getLogger(__name__)

# A page further behind than this gets the whole (newest page of the) message list instead.
CATCHUP_MAX = 500
# Panels are re-rendered at most this often (seconds) while changes keep coming.
PANEL_DELAY = 0.5
# The sidebar is pushed at most this often (seconds) while the user's conversations keep changing.
LIBRARY_DELAY = 0.3
CLOSE_GONE = 4404
CLOSE_LOGGED_OUT = 4401
CLOSE_POLICY = 1008  # the page sent more frames than CONVO_WS_FRAMES_PER_SECOND allows
CLOSE_TOO_BIG = 1009  # a frame over CONVO_WS_MAX_FRAME_BYTES (RFC 6455: message too big)
REPLY_ENDS = ("done", "stopped", "error")
# Every push is split into frames of at most this many bytes (UTF-8), between fragments (a message,
# a panel): daphne closes a socket whose outgoing frame exceeds its websocket_max_message_size (1 MiB),
# and a page whose catch-up is closed would reconnect forever without catching up. A single fragment
# over it goes on a frame of its own (a message's HTML stays below it within the default limits).
FRAME_BYTES = 256 * 1024
# A fragment larger than this (daphne's limit is 1 MiB: e.g. a state panel of large JSON full of
# quotes, each shown escaped twice) is never sent: a notice with a link to reload the page (where the
# HTTP response shows it all) takes its place.
MAX_FRAGMENT_BYTES = 1_000_000
_FIRST_ID = re.compile(r'\bid="([^"]+)"')
# While sockets are open on a network channel layer (Redis), each process checks every PROBE_SECONDS
# that a message goes through the layer and back, to notice an outage and the layer's return.
PROBE_SECONDS = 1.0
_UNKNOWN = object()


def pack_frames(parts: Any, limit: int | None = None) -> list[str]:
    """The fragments ``parts`` joined into as few frames as possible, in order, each at most ``limit``
    bytes unless a single fragment is larger (it then goes alone; over MAX_FRAGMENT_BYTES, a notice
    goes instead, see _too_big)."""
    limit = FRAME_BYTES if limit is None else limit
    frames: list[str] = []
    current: list[str] = []
    size = 0
    for part in parts:
        if not part:
            continue
        length = len(part.encode())
        if length > MAX_FRAGMENT_BYTES:
            part = _too_big(part, length)
            length = len(part.encode())
        if current and size + length > limit:
            frames.append("".join(current))
            current, size = [], 0
        current.append(part)
        size += length
    if current:
        frames.append("".join(current))
    return frames


def _too_big(part: str, length: int) -> str:
    """What replaces a fragment too large for a websocket frame: the same element (by its id) saying
    so, with a link that reloads the page; a message keeps its place in the list by its seq."""
    found = _FIRST_ID.search(part)
    dom_id = html_escape(found.group(1)) if found else ""
    logger.warning("A live push fragment of %d bytes (#%s) is too large for a frame: a notice was sent", length, dom_id)
    reload = 'too large to update live: <a href="">reload the page</a> to see it.'
    seq = dom_id[4:] if dom_id.startswith("msg-") else ""
    if seq.isdigit():
        return (
            f'<div hx-swap-oob="beforeend:#message-list"><li id="msg-{seq}" class="msg" data-seq="{seq}">'
            f'<p class="hint">Message #{seq} is {reload}</p></li></div>'
        )
    if dom_id:
        return f'<div id="{dom_id}" hx-swap-oob="true"><p class="hint">This part of the page is {reload}</p></div>'
    return ""


def _pane_parts(session: ConversationSession) -> tuple[str, ...]:
    """The whole message list again (render_messages_pane_oob) as fragments within FRAME_BYTES: the
    list with its oldest messages that fit, then the others one fragment each (the page places them
    by sequence number)."""
    messages, has_earlier = rendering.earlier_messages(session, None)
    singles = [rendering.render_messages_oob([message], session) for message in messages]
    room = FRAME_BYTES - 8 * 1024  # the list's own markup
    count, size = 0, 0
    while count < len(singles) and (count == 0 or size + len(singles[count].encode()) <= room):
        size += len(singles[count].encode())
        count += 1
    while True:
        pane = rendering.render_messages_pane_oob(session, messages[:count], has_earlier)
        if count <= 1 or len(pane.encode()) <= FRAME_BYTES:
            return (pane, *singles[count:])
        count -= 1


class _RenderCache:
    """Fragments rendered for one version of a session, shared by every socket of this process.

    The key holds everything the fragment depends on (the session's version, the page's position
    and budget, the owner), so a stale entry is never served.
    """

    def __init__(self, size: int = 512) -> None:
        self._items: OrderedDict[tuple, str] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: tuple) -> str | None:
        with self._lock:
            html = self._items.get(key)
            if html is not None:
                self._items.move_to_end(key)
            return html

    def put(self, key: tuple, html: str) -> str:
        with self._lock:
            self._items[key] = html
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return html


render_cache = _RenderCache()


class _Snapshots:
    """Shared reads of a session's row by the sockets of one process.

    A socket may use a read that is recent enough for what it was told: one that includes the
    notified message (``min_seq``: the row's last_seq has reached it), or one that *started* after
    the notification arrived (``since``). So the fifty sockets that receive the same notification
    read the row about once between them.
    """

    def __init__(self, size: int = 1024) -> None:
        self._latest: OrderedDict[uuid.UUID, tuple[float, ConversationSession | None]] = OrderedDict()
        self._pending: dict[uuid.UUID, tuple[float, asyncio.Future]] = {}
        self._size = size

    @staticmethod
    def _fits(started: float, session: ConversationSession | None, min_seq: int | None, since: float | None) -> bool:
        if since is not None and started < since:
            return False
        if min_seq is not None:
            return session is not None and session.last_seq >= min_seq
        return since is not None

    async def get(self, session_id: uuid.UUID, *, min_seq: int | None = None, since: float | None = None):
        latest = self._latest.get(session_id)
        if latest is not None and self._fits(*latest, min_seq, since):
            return latest[1]
        pending = self._pending.get(session_id)
        if pending is not None and (since is None or pending[0] >= since):
            try:
                session = await asyncio.shield(pending[1])
            except Exception:
                session = None
            else:
                if self._fits(pending[0], session, min_seq, since if since is not None else pending[0]):
                    return session
        return await self._read(session_id)

    async def _read(self, session_id: uuid.UUID) -> ConversationSession | None:
        started = time.monotonic()
        future = asyncio.get_running_loop().create_future()
        self._pending[session_id] = (started, future)
        try:
            session = await database_sync_to_async(_read_session)(session_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marked as retrieved: joiners handle it themselves
            raise
        finally:
            if self._pending.get(session_id, (0, None))[1] is future:
                del self._pending[session_id]
        future.set_result(session)
        current = self._latest.get(session_id)
        if current is None or current[0] <= started:
            self._latest[session_id] = (started, session)
            self._latest.move_to_end(session_id)
            while len(self._latest) > self._size:
                self._latest.popitem(last=False)
        return session


def _read_session(key: uuid.UUID) -> ConversationSession | None:
    try:
        return engine.session_get(key)
    except engine.SessionNotFound:
        return None


snapshots = _Snapshots()
_rendering: dict[tuple, asyncio.Future] = {}  # fragments being rendered right now


def _reply_state_html(session: ConversationSession, what: str) -> tuple[str, str | None]:
    state = rendering.reply_state(session)
    running = str(state["reply_id"]) if state["reply_state"] == "delta" else None
    if what == "if-any":
        return rendering.render_reply_if_any_oob(session, state), running
    html = rendering.render_reply_state_oob(session, state)
    if what == "full":
        html += rendering.render_reply_actions_oob(session)
    return html, running


def _running_reply_id(key: uuid.UUID) -> str | None:
    reply = replies.running_reply(key)
    return str(reply.pk) if reply is not None else None


class _LayerWatch:
    """The channel layer as the sockets of one event loop see it (a network layer only).

    While sockets are open it sends a message to itself through the layer every PROBE_SECONDS and
    waits for it. A probe that fails (or a socket that fails to join or receive) marks the layer down
    (``events.layer_health`` logs it once); the first probe that goes through again tells every socket
    (a ``layer.back`` message into its dispatch loop), which rejoins its groups and resyncs from the
    database: whatever was published meanwhile was lost. An outage another part of this process saw
    (the event sender) between two probes counts the same.
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.sockets: set[SessionConsumer] = set()
        self.down = False
        self.task: asyncio.Task | None = None
        self.channel: str | None = None
        self.pump: asyncio.Task | None = None
        self.echoes: asyncio.Queue = asyncio.Queue()

    def add(self, consumer: SessionConsumer) -> None:
        self.sockets.add(consumer)
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())

    def discard(self, consumer: SessionConsumer) -> None:
        self.sockets.discard(consumer)
        if not self.sockets and self.task is not None:
            self.task.cancel()
            self.task = None

    def failed(self, exc: BaseException, where: str) -> None:
        self.down = True
        events.layer_health.failed(exc, where)

    async def _run(self) -> None:
        try:
            while self.sockets:
                await self._probe()
                await asyncio.sleep(PROBE_SECONDS)
        finally:
            if self.task is None:  # stopped (not restarted meanwhile by a new socket)
                if self.pump is not None:
                    self.pump.cancel()
                self.pump = self.channel = None

    async def _probe(self) -> None:
        token = uuid.uuid4().hex
        try:
            async with asyncio.timeout(events.LAYER_TIMEOUT):
                if self.channel is None:
                    if self.down:
                        # Subscribing fails while the layer is away (and may leave an entry behind):
                        # first see that a plain send goes through.
                        await self.layer.group_send("convo.probe", {"type": "convo.probe"})
                    self.channel = await self.layer.new_channel()
                    self.pump = asyncio.ensure_future(self._pump(self.channel))
                await self.layer.send(self.channel, {"type": "convo.probe", "token": token})
                while await self.echoes.get() != token:
                    pass
        except Exception as exc:
            self.failed(exc, "probing")
            return
        if self.down or events.layer_health.down:
            self.down = False
            events.layer_health.ok()
            for consumer in list(self.sockets):
                consumer.layer_back()

    async def _pump(self, channel: str) -> None:
        # Never cancelled mid-wait while in use: the pub/sub layer unsubscribes a cancelled receive.
        while True:
            try:
                message = await self.layer.receive(channel)
            except Exception:  # the core layer's receive fails while Redis is away; the probe notices
                await asyncio.sleep(PROBE_SECONDS)
                continue
            self.echoes.put_nowait(message.get("token"))


_watches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> {id(layer): watch}


def _watch_for(layer: Any) -> _LayerWatch | None:
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return None  # in-process: it cannot go away
    per_loop = _watches.setdefault(asyncio.get_running_loop(), {})
    watch = per_loop.get(id(layer))
    if watch is None or watch.layer is not layer:
        watch = per_loop[id(layer)] = _LayerWatch(layer)
    return watch


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > engine.MAX_INT:
        return None
    return value


class SessionConsumer(AsyncWebsocketConsumer):
    session_id: str  # the caller's id, for the page's URLs
    key: uuid.UUID  # the session the socket was authorized for: everything else goes by it
    group: str | None = None
    user_group: str | None = None
    _revoked: bool = False  # the login ended: the socket is closed for good
    last_seq: int | None = None  # the newest sequence number this page has been sent (None: no hello yet)
    budget: int | None = None
    _panels_due: bool = False
    _panels_task: asyncio.Task | None = None
    _panels_seq: int = 0  # the panels must show at least this message ...
    _panels_since: float | None = None  # ... and a read started after this (for changes without a seq)
    _gone: bool = False
    _reply_events: int = 0  # REPLY events handled (a refresh's database view of the reply yields to them)
    _hello_seen: bool = False
    _closing: bool = False
    _tokens: float | None = None  # the frame bucket (see _frame_allowed)
    _tokens_at: float = 0.0
    _library_due: bool = False
    _library_task: asyncio.Task | None = None
    channel_name: str | None = None
    _watch: _LayerWatch | None = None
    # The session's running reply as this socket last learnt it (a reply id as str, None: none runs),
    # and replies known not to be it: their REPLY events (a zombie stream) are dropped.
    _running_reply: Any = _UNKNOWN

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """AsyncConsumer's loop, except that the socket does not depend on the channel layer: the
        handshake does not fail when the layer (Redis) is away, the socket is served from the database
        (catch-up, the page's periodic sync) and joins its groups when the layer is back."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.base_send = send
        self._linked = asyncio.Event()  # joined to the groups: the layer's messages are received
        self._local: asyncio.Queue = asyncio.Queue()  # messages from this process (layer.back)
        self._ended_replies: set[str] = set()
        try:
            await await_many_dispatch([receive, self._layer_receive, self._local.get], self.dispatch)
        except StopConsumer:
            pass
        finally:
            if self._watch is not None:
                self._watch.discard(self)

    async def _layer_receive(self) -> dict[str, Any]:
        while True:
            await self._linked.wait()
            try:
                return await self.channel_layer.receive(self.channel_name)
            except Exception as exc:  # the core layer's receive fails while Redis is away
                self._linked.clear()
                if self._watch is not None:
                    self._watch.failed(exc, "receiving")
                await asyncio.sleep(0)

    async def _join(self) -> bool:
        """Join the session's and the user's groups (again: a restarted Redis forgot them)."""
        if self.channel_layer is None:
            return False
        try:
            async with asyncio.timeout(events.LAYER_TIMEOUT):
                if self.channel_name is None:
                    self.channel_name = await self.channel_layer.new_channel()
                for group in (self.user_group, self.group):
                    await self.channel_layer.group_add(group, self.channel_name)
        except Exception as exc:
            if self._watch is None:
                raise
            self._watch.failed(exc, "joining a socket's groups")
            return False
        self._linked.set()
        return True

    async def _leave(self) -> None:
        self._linked.clear()
        if self.channel_name is None:
            return
        for group in (self.group, self.user_group):
            if group is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(events.LAYER_TIMEOUT):
                        await self.channel_layer.group_discard(group, self.channel_name)

    def layer_back(self) -> None:
        """The channel layer is reachable again (see _LayerWatch): rejoin and resync, in turn."""
        self._local.put_nowait({"type": "layer.back"})

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale database connections before every handler, a hop into the database
        # thread per notification and socket; session events and the page's frames touch the database
        # only through database_sync_to_async, which does that itself, so they skip it (and a frame
        # is metered by _frame_allowed when it arrives, not after the database thread is free).
        if message.get("type") == "session.event":
            await self.session_event(message)
        elif message.get("type") == "websocket.receive" and not self._revoked:
            await self.websocket_receive(message)
        elif message.get("type") == "user.revoked":
            await self.user_revoked(message)
        elif message.get("type") == events.LIBRARY:
            await self.library_changed(message)
        elif message.get("type") == "layer.back":
            await self._layer_back()
        elif not self._revoked or message.get("type") == "websocket.disconnect":
            await super().dispatch(message)

    async def _layer_back(self) -> None:
        """Whatever the layer carried while it was away was lost: rejoin, then send what the page
        lacks as the database has it (the hello's catch-up from the newest message it was sent). A
        logout or new password meanwhile could not close the socket: the login is checked again."""
        if self._revoked or self._gone or self._closing or self.group is None:
            return
        if not await database_sync_to_async(self._still_logged_in)():
            await self._revoke()
            return
        if await self._join() and self.last_seq is not None:
            await self._refresh(time.monotonic(), after=self.last_seq)

    async def connect(self) -> None:
        self.session_id = self.scope["url_route"]["kwargs"]["session_id"]
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept: the handshake is refused (403)
            return
        session = await database_sync_to_async(self._find)(user)
        if session is None:
            await self.close()
            return
        self.user = user
        self.key = session.pk
        self.login = login_digest(self._session_key())
        self.user_group = events.user_group(user.pk)
        self.group = events.group_name(self.key)
        # Joined before the accept, so that no change after the hello's read is missed; with the
        # layer away, accepted all the same (see __call__ and _LayerWatch).
        self._watch = _watch_for(self.channel_layer)
        if self._watch is not None:
            self._watch.add(self)
        if self._watch is None or not self._watch.down:
            await self._join()
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self._panels_task is not None:
            self._panels_task.cancel()
        if self._library_task is not None:
            self._library_task.cancel()
        if self._watch is not None:
            self._watch.discard(self)
        await self._leave()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self._frame_allowed():
            if not self._closing:
                self._closing = True
                await self.close(code=CLOSE_POLICY)
            return
        try:
            message = engine.parse_frame(text_data)
        except engine.InputTooLarge:
            await self.close(code=CLOSE_TOO_BIG)
            return
        if message is None:
            return  # not a JSON object within the limits: ignored
        if "budget" in message:
            budget = message.get("budget")
            self.budget = budget if _positive_int(budget) and budget > 0 else None
        if message.get("type") == "hello":
            if self._hello_seen:
                return  # one catch-up per socket: from then on it is sent every change
            self._hello_seen = True
            if not await database_sync_to_async(self._still_logged_in)():
                await self._revoke()
                return
            after = _positive_int(message.get("last_seq")) or 0
            await self._hello(time.monotonic(), after, message.get("version"))
        elif message.get("type") == "sync" and self.last_seq is not None and not self._gone:
            await self._sync(time.monotonic(), message)
        elif message.get("type") == "budget" and self.last_seq is not None:
            self._schedule_panels(seq=self.last_seq)

    async def _sync(self, t0: float, message: dict[str, Any]) -> None:
        """The page's periodic check-in (every CONVO_RESYNC_SECONDS): ``last_seq`` (the newest message
        it shows), ``version`` (its panels') and ``reply`` (the reply it shows running, or null).
        Whatever it lacks (notifications lost while the layer was away) is sent as the database has
        it; when it lacks nothing this costs one read of the session's row by its key."""
        page_seq = _positive_int(message.get("last_seq"))
        if page_seq is None:
            return
        if not self._linked.is_set() and not await database_sync_to_async(self._still_logged_in)():
            await self._revoke()  # cut off from the layer, the socket would not hear of a logout
            return
        session = await self._snapshot(since=t0)
        if session is None:
            return
        if page_seq != session.last_seq:
            await self._refresh(t0, after=page_seq)
            return
        version = message.get("version")
        if isinstance(version, str) and version != rendering.panels_version(session):
            self._schedule_panels(since=t0)
        shown = message.get("reply")
        cut_off = not self._linked.is_set() or (self._watch is not None and self._watch.down)
        if shown is not None and (str(shown) != self._running_reply or cut_off):
            # The page shows a reply running that this socket does not know to be (its end may have
            # been lost): the reply area as the database has it.
            html = await self._reply_state(session, "full")
            if html is not None:
                await self._push([html])

    async def _reply_state(self, session: ConversationSession, what: str) -> str | None:
        """The reply area as the database has it ("stream"; "full": with the actions; "if-any": both,
        or nothing when no reply runs or failed), and the running reply's id from the same read.
        None: a REPLY event arrived meanwhile and showed a newer state (or the session is gone)."""
        reply_events = self._reply_events
        try:
            html, running = await database_sync_to_async(_reply_state_html)(session, what)
        except engine.SessionNotFound:
            await self._send_gone()
            return None
        if self._reply_events != reply_events:
            return None
        self._running_reply = running
        return html

    async def session_event(self, event: dict[str, Any]) -> None:
        if self._revoked or self.group is None or event.get("session") != self.key.hex:
            return  # only the session this socket was authorized for
        t0 = time.monotonic()
        kind = event.get("kind")
        if kind == events.DELETED:
            await self._send_gone()
            return
        if kind == events.REPLY:
            if await self._reply_is_current(event.get("reply"), str(event.get("state", ""))):
                await self._reply_event(t0, event)
            return
        if self.last_seq is None or self._gone:
            return  # no hello yet: the hello's catch-up will include this change
        seq = event.get("seq")
        if kind in (events.CLEARED, events.CONFIG):
            await self._refresh(t0, after=None)
        elif kind == events.MESSAGE and isinstance(seq, int):
            await self._new_messages(seq)
            self._schedule_panels(seq=seq)
        elif kind == events.VERSIONS and isinstance(event.get("turn"), int):
            await self._versions(t0, event["turn"])
        else:
            self._schedule_panels(since=t0)

    async def _reply_is_current(self, reply: Any, state: str) -> bool:
        """Whether a REPLY event belongs to the session's running reply. A reply that is no longer
        it (marked interrupted while its thread lived on, e.g. after a pause: a zombie) may keep
        sending; its events are dropped, or pages would show two streams, one never ending. Learnt
        from the events themselves (started / ended) and from the database: once per unknown reply."""
        if reply is None:
            return True
        reply = str(reply)
        if reply in self._ended_replies:
            return False
        if state == "started":
            self._running_reply = reply
            return True
        if reply != self._running_reply:
            running = await database_sync_to_async(_running_reply_id)(self.key)
            self._running_reply = running
            # An end of a reply this socket did not see run is kept unless another reply runs.
            if running != reply and not (state in REPLY_ENDS and running is None):
                self._remember_ended(reply)
                return False
        if state in REPLY_ENDS:
            self._running_reply = None
            self._remember_ended(reply)
        return True

    def _remember_ended(self, reply: str) -> None:
        if len(self._ended_replies) >= 256:
            self._ended_replies.clear()  # forgetting costs at most one more database read per reply
        self._ended_replies.add(reply)

    async def _reply_event(self, t0: float, event: dict[str, Any]) -> None:
        """The reply stream from the event itself (no database: deltas come many times a second);
        when the reply ends, Regenerate / Retry from the database as well."""
        self._reply_events += 1
        state = str(event.get("state", ""))
        html = rendering.render_reply_oob(
            self.session_id,
            state,
            str(event.get("text", "")),
            error=str(event.get("error") or ""),
            reply_id=event.get("reply"),
            turn=event.get("turn"),
        )
        if state in REPLY_ENDS and self.last_seq is not None and not self._gone:
            session = await self._snapshot(since=t0)
            if session is None:
                return
            key = ("reply-actions", *self._version(session), session.is_expired())
            actions = await self._render(key, lambda: rendering.render_reply_actions_oob(session))
            html += actions or ""
        await self._push([html])

    # -----------------------------------------------------------------------------------------
    # The library (issue 11): the user's conversations changed, in this tab or another (created,
    # renamed, pinned, archived, deleted, or moved up by activity): the page gets the sidebar's new
    # first page, once for a burst of changes (LIBRARY_DELAY), rendered once per change for all of the
    # user's pages (rendering.sidebar_html caches it under the user's library version).

    async def library_changed(self, event: dict[str, Any]) -> None:
        if self._revoked or self._gone or self.last_seq is None:
            return  # no hello yet: the page was rendered with a current sidebar
        self._library_due = True
        if self._library_task is None:
            self._library_task = asyncio.ensure_future(self._library_later())

    async def _library_later(self) -> None:
        try:
            while self._library_due and not self._gone and not self._revoked:
                await asyncio.sleep(LIBRARY_DELAY)
                self._library_due = False
                html = await database_sync_to_async(self._sidebar_html)()
                if not self._gone and not self._revoked:
                    await self.send(text_data=html)
        except Exception:
            logger.exception("Could not push the sidebar of user %s", self.user.pk)
        finally:
            self._library_task = None

    def _sidebar_html(self) -> str:
        tz = rendering.viewer_timezone(self.scope.get("cookies"))
        return rendering.sidebar_html(self.user, tz=tz, oob=True)

    async def user_revoked(self, event: dict[str, Any]) -> None:
        """The user logged out (this browser's login, or every one), changed the password or was deactivated."""
        login = event.get("login")
        if login is None or login == self.login:
            await self._revoke()

    async def _revoke(self) -> None:
        if not self._revoked:
            self._revoked = True
            if self._panels_task is not None:
                self._panels_task.cancel()
            await self._leave()
            await self.close(code=CLOSE_LOGGED_OUT)

    def _frame_allowed(self) -> bool:
        """A token bucket per socket: CONVO_WS_FRAME_BURST frames at once, refilled at
        CONVO_WS_FRAMES_PER_SECOND. A page sends a hello and the odd budget change; a flood of frames,
        each of which may cost a rendering, closes the socket."""
        now = time.monotonic()
        burst = settings.CONVO_WS_FRAME_BURST
        if self._tokens is None:
            self._tokens = float(burst)
        else:
            self._tokens = min(burst, self._tokens + (now - self._tokens_at) * settings.CONVO_WS_FRAMES_PER_SECOND)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def _hello(self, t0: float, after: int, version: Any) -> None:
        """Catch up a page that opened or reconnected: only what it lacks. A page with the newest
        message and the current panels (``version``, see rendering.panels_version) gets nothing, or
        just the reply as the database has it when one is running or failed."""
        session = await self._snapshot(since=t0)
        if session is None:
            return
        if after != session.last_seq or version != rendering.panels_version(session):
            await self._refresh(t0, after=after)
            return
        self.last_seq = session.last_seq
        html = await self._reply_state(session, "if-any")
        if html:
            await self._push([html])

    def _find(self, user: Any) -> ConversationSession | None:
        try:
            return engine.session_get(self.session_id, owner=user)
        except engine.SessionNotFound:
            return None

    def _session_key(self) -> str | None:
        session = self.scope.get("session")
        return getattr(session, "session_key", None) if session is not None else None

    def _still_logged_in(self) -> bool:
        """Whether the login the socket was opened with still holds: the browser's session still names
        the user, with the same password, and the account is active."""
        session_key = self._session_key()
        if not session_key:
            return False
        data = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key).load()
        if data.get(SESSION_KEY) != str(self.user.pk) or BACKEND_SESSION_KEY not in data:
            return False
        user = get_user_model()._default_manager.filter(pk=self.user.pk).first()
        if user is None or not getattr(user, "is_active", True):
            return False
        stored = data.get(HASH_SESSION_KEY)
        return bool(stored) and constant_time_compare(stored, user.get_session_auth_hash())

    async def _snapshot(self, *, min_seq: int | None = None, since: float | None = None) -> ConversationSession | None:
        session = await snapshots.get(self.key, min_seq=min_seq, since=since)
        if session is None or session.owner_id != self.user.pk:
            await self._send_gone()
            return None
        return session

    async def _send_gone(self) -> None:
        if not self._gone and not self._revoked:
            self._gone = True
            await self.send(text_data=rendering.render_gone_oob(self.session_id))
            await self.close(code=CLOSE_GONE)

    async def _render(self, key: tuple, render, *, slow: bool = False) -> str | None:
        """A cached fragment, or render it in the database thread (a vanished session gives None).

        Sockets asking for the same fragment at once wait for one rendering. ``slow`` renderings (the
        panels) run in a worker thread of their own, so that they never hold up new messages or the
        HTTP views, which share the one database thread.
        """
        html = render_cache.get(key)
        if html is not None:
            return html
        pending = _rendering.get(key)
        if pending is not None:
            return await asyncio.shield(pending)

        def build() -> str | None:
            try:
                with rendering.render_budget():  # Markdown time bounded per push, as per request
                    return render_cache.put(key, render())
            except engine.SessionNotFound:
                return None

        future = asyncio.get_running_loop().create_future()
        _rendering[key] = future
        try:
            html = await database_sync_to_async(build, thread_sensitive=not slow)()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marked as retrieved: joiners handle it themselves
            raise
        finally:
            _rendering.pop(key, None)
        future.set_result(html)
        return html

    def _version(self, session: ConversationSession) -> tuple:
        return (session.pk, session.last_seq, session.low_seq, session.head_seq, session.updated_at, session.title)

    async def _new_messages(self, seq: int) -> None:
        """Push exactly the listed messages after the page's last one, up to the snapshot's newest."""
        session = await self._snapshot(min_seq=seq)
        if session is None:
            return
        after = self.last_seq or 0
        if session.last_seq <= after:
            return
        parts = await self._render(
            ("messages", *self._version(session), after), lambda: self._messages_parts(session, after)
        )
        if parts is None:
            await self._send_gone()
            return
        self.last_seq = session.last_seq
        await self._push(parts)

    def _messages_parts(self, session: ConversationSession, after: int) -> tuple[str, ...]:
        """The messages after ``after`` one fragment each (or the list again), then the list's bounds
        (last: a page that lost the socket midway still reports the older newest message)."""
        if after > session.last_seq:
            # The page is ahead of the database (the session was replaced): start it over.
            return (*_pane_parts(session), rendering.render_bounds_oob(session))
        missing = engine.messages_page(
            session, after=after, before=session.last_seq + 1, limit=CATCHUP_MAX + 1, history=True
        )
        if len(missing) > CATCHUP_MAX:
            head = _pane_parts(session)
        else:
            rendering.with_versions(session, missing)  # once for all of them (a few queries), not per frame
            head = tuple(rendering.render_messages_oob([message], session) for message in missing)
        return (*head, rendering.render_bounds_oob(session))

    async def _versions(self, t0: float, turn: int) -> None:
        """Another page chose which answer of ``turn`` is shown: its answers again, each replacing its element."""
        session = await self._snapshot(since=t0)
        if session is None:
            return
        html = await self._render(
            ("versions", *self._version(session), turn), lambda: rendering.render_versions_oob(session, {turn})
        )
        if html:
            await self.send(text_data=html)

    async def _refresh(self, t0: float, *, after: int | None) -> None:
        """Messages (after ``after``, or the whole list again when None) and every panel, at once."""
        session = await self._snapshot(since=t0)
        if session is None:
            return
        if after is None:
            key = ("pane", *self._version(session), session.max_tokens, session.timeout_seconds)
            messages = await self._render(
                key,
                lambda: (
                    *_pane_parts(session),
                    rendering.render_bounds_oob(session),
                    rendering.render_settings_oob(session),
                ),
            )
        else:
            key = ("messages", *self._version(session), after)
            messages = await self._render(key, lambda: self._messages_parts(session, after))
        if messages is None:
            await self._send_gone()
            return
        stream = await self._reply_state(session, "stream")
        if self._gone:
            return
        panels = await self._render(self._panels_key(session), lambda: self._panels_parts(session), slow=True)
        if panels is None:
            await self._send_gone()
            return
        self.last_seq = session.last_seq
        await self._push((*messages, stream or "", *panels))  # no stream: a REPLY event showed a newer state

    async def _push(self, parts: Any) -> None:
        """Send fragments to the page in frames of at most FRAME_BYTES (see pack_frames)."""
        for frame in pack_frames(parts):
            await self.send(text_data=frame)

    def _panels_key(self, session: ConversationSession) -> tuple:
        return ("panels", *self._version(session), session.is_expired(), self.budget, self.user.pk)

    def _panels_parts(self, session: ConversationSession) -> tuple[str, ...]:
        return tuple(rendering.render_panels_oob_parts(session, self.user, budget=self.budget))

    def _schedule_panels(self, *, seq: int | None = None, since: float | None = None) -> None:
        self._panels_due = True
        if seq is not None:
            self._panels_seq = max(self._panels_seq, seq)
        if since is not None:
            self._panels_since = since
        if self._panels_task is None:
            self._panels_task = asyncio.ensure_future(self._panels_later())

    async def _panels_later(self) -> None:
        try:
            while self._panels_due and not self._gone:
                await asyncio.sleep(PANEL_DELAY)
                self._panels_due = False
                since, self._panels_since = self._panels_since, None
                session = await self._snapshot(min_seq=self._panels_seq, since=since)
                if session is None:
                    return
                parts = await self._render(
                    self._panels_key(session), lambda s=session: self._panels_parts(s), slow=True
                )
                if parts is None:
                    await self._send_gone()
                    return
                await self._push(parts)
        except Exception:
            logger.exception("Could not push the panels of session %s", self.session_id)
        finally:
            self._panels_task = None
