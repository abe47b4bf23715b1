"""Change notifications: the engine tells the channel layer what changed, after the commit.

Open chat pages subscribe to their session's group; a notification names what changed (and, for a
message, its sequence number) and the page re-reads the database, which stays the source of truth.

A session's group is named after its key, never after its id: ids are the callers' (two users may
each have ``support-42``, and a deleted id can be created again), keys are never reused. Each user
also has a group (``user_group``): when the account logs out, changes its password or is
deactivated, ``user_revoked`` tells that user's open pages to close.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
import uuid
from functools import partial
from typing import Any

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

# What a notification can say changed.
MESSAGE = "message"  # a message was appended (turns and context change with it)
STATE = "state"
CONFIG = "config"  # config, system prompt or metadata edited
CLEARED = "cleared"
DELETED = "deleted"
VERSIONS = "versions"  # the answer a turn shows changed (data: turn): pages show that turn's answers again
# An assistant reply in progress (issue 5): data state=started|delta|done|stopped|error, text=the
# text so far. Not a database write: sent at once, and a page that misses one loses nothing (the
# next carries the whole text, and the stored assistant message arrives as a MESSAGE event).
REPLY = "reply"


def group_name(key: uuid.UUID) -> str:
    """The channel-layer group of one session, named by its key."""
    return "convo.session." + key.hex


def user_group(user_pk: Any) -> str:
    """The channel-layer group of one user's open pages."""
    return f"convo.user.{user_pk}"


def emit(key: uuid.UUID, kind: str, **data: Any) -> None:
    """Queue a notification to the session ``key`` to be sent once the current transaction commits
    (at once outside one)."""
    emit_many([key], kind, **data)


def emit_many(keys: list[uuid.UUID], kind: str, **data: Any) -> None:
    if not keys:
        return
    if not all(isinstance(key, uuid.UUID) for key in keys):
        raise TypeError("session events are addressed by session key (uuid.UUID), never by id")
    events = [(group_name(key), {"type": "session.event", "session": key.hex, "kind": kind, **data}) for key in keys]
    after_commit(partial(_send, events))


def after_commit(func: Any) -> None:
    """``transaction.on_commit(func)`` that does not touch the database outside a transaction: Django's
    asks the connection for its autocommit state, which opens a connection (or takes one from the
    pool) only to be told "run it now". A reply thread emits many events between its writes and must
    not hold a pooled connection while it waits on its model."""
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(func)
    else:
        func()


def user_revoked(user_pk: Any, reason: str, *, login: str | None = None) -> None:
    """Close the user's open pages once the current transaction commits: those of one browser login
    (``login``, a digest of its session key: a logout), or all of them (a new password, deactivation).
    They cannot resubscribe: their new handshake is no longer authenticated."""
    event = {"type": "user.revoked", "reason": reason, **({"login": login} if login else {})}
    after_commit(partial(_send, [(user_group(user_pk), event)]))


# ---------------------------------------------------------------------------------------------
# The library (issue 11): each user's sidebar. A change that shows there (a conversation created,
# renamed, pinned, archived, deleted, or moved up by activity) bumps the user's library version once
# the transaction commits (the rendered sidebar is cached under it) and tells the user's open pages,
# which fetch the new sidebar. The version lives in the "library" cache (Redis when configured, so
# every process sees it).

LIBRARY_CACHE = "library"
LIBRARY = "library.changed"


def library_version_key(user_pk: Any) -> str:
    return f"convo:library:v:{user_pk}"


def library_version(user_pk: Any) -> int:
    """The user's library version: it grows with every change of their sidebar. It starts from the clock
    (in nanoseconds), so a version made again after its key was evicted never meets an old one."""
    from django.core.cache import caches

    cache = caches[LIBRARY_CACHE]
    key = library_version_key(user_pk)
    version = cache.get(key)
    if version is None:
        cache.add(key, time.time_ns(), None)
        version = cache.get(key) or time.time_ns()
    return int(version)


def bump_library_version(user_pk: Any) -> None:
    from django.core.cache import caches

    cache = caches[LIBRARY_CACHE]
    key = library_version_key(user_pk)
    try:
        redis_client = getattr(getattr(cache, "_cache", None), "get_client", None)
        if redis_client is not None:
            # One round trip: start the version from the clock if it is not there, then add one.
            raw = cache.make_and_validate_key(key)
            with redis_client(raw, write=True).pipeline(transaction=False) as pipe:
                pipe.set(raw, time.time_ns(), nx=True)
                pipe.incr(raw)
                pipe.execute()
            return
        try:
            cache.incr(key)
        except ValueError:  # not there yet (or evicted): any new value invalidates what was cached
            if not cache.add(key, time.time_ns(), None):
                cache.incr(key)
    except Exception as exc:  # a cache failure must never undo or fail a committed write
        # The library cache is the channel layer's Redis: one warning per outage (the sidebar is stale
        # until the next change once it is back).
        layer_health.failed(exc, "bumping a library version")


def library_changed(user_pk: Any, *, activity: bool = False) -> None:
    """After the commit: bump the user's library version and tell the user's open pages. Sessions
    without an owner have no sidebar.

    ``activity``: an append (the conversation moves up the sidebar). With a network channel layer its
    bump is left to this process's sender thread, once per user for a batch of appends, so the hot
    path pays no cache round trip; every other change bumps in the writer, so that the request's own
    answer (and the next page) already shows it.
    """
    if user_pk is None:
        return
    transaction.on_commit(partial(_library_commit, user_pk, activity))


def _library_commit(user_pk: Any, activity: bool = False) -> None:
    layer = get_channel_layer()
    deferred = activity and layer is not None and not isinstance(layer, InMemoryChannelLayer)
    if not deferred:
        bump_library_version(user_pk)
    # Deferred: the sender thread bumps the version just before it sends the notice (_bump_libraries).
    _send([(user_group(user_pk), {"type": LIBRARY, "user": user_pk, **({"bump": True} if deferred else {})})])


def _bump_libraries(events: list[tuple[str, dict[str, Any]]]) -> None:
    """In the sender thread: the versions of the users whose conversations saw activity."""
    for _, event in events:
        if event.get("bump"):
            bump_library_version(event["user"])


class LayerHealth:
    """Whether this process reaches the channel layer, as its last attempts found.

    Every part that talks to the layer (the event sender, the sockets, their probe) reports here, so
    an outage is logged once per process — one warning when it starts, one info when the layer is back
    — however many events or sockets meet it, instead of a traceback each. The sockets' probe
    (consumers._LayerWatch) also resyncs its sockets after an outage another part reported here.
    """

    # A failure this soon after the layer came back (e.g. a pooled connection that died with the old
    # Redis) is the same outage: noted (the sockets resync again), but not logged again.
    FLAP_SECONDS = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down = False
        self.outages = 0  # outages seen by this process (for tests and the logs)
        self._back_at: float | None = None
        self._quiet = False  # the current "down" is such a relapse

    def failed(self, exc: BaseException, where: str) -> None:
        with self._lock:
            if self.down:
                return
            self.down = True
            self._quiet = self._back_at is not None and time.monotonic() - self._back_at < self.FLAP_SECONDS
            if self._quiet:
                return
            self.outages += 1
        logger.warning(
            "The channel layer is unreachable (%s: %s: %s): live pushes pause, pages are served from the "
            "database and resync every CONVO_RESYNC_SECONDS until it is back",
            where, type(exc).__name__, exc,
        )  # fmt: skip

    def ok(self) -> None:
        with self._lock:
            if not self.down:
                return
            self.down = False
            self._back_at = time.monotonic()
            if self._quiet:
                return
        logger.info("The channel layer is reachable again: live pushes resume")


layer_health = LayerHealth()


class _PubSubReceiveFailures(logging.Filter):
    """channels_redis's pub/sub receive task logs a traceback every second while Redis is away: each
    becomes a report to layer_health instead (one warning per outage; the sockets' probe then
    resyncs them when the layer is back)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Unexpected exception in receive task"):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        layer_health.failed(exc if exc is not None else RuntimeError("receive failed"), "receiving (pub/sub)")
        return False


logging.getLogger("channels_redis.pubsub").addFilter(_PubSubReceiveFailures())

# A send to the layer that takes longer than this counts as failed (a Redis that stopped answering
# must not hold the sender, nor a handshake, for the operating system's TCP timeout).
LAYER_TIMEOUT = 3.0


def _send(events: list[tuple[str, dict[str, Any]]]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    if isinstance(layer, InMemoryChannelLayer):
        # Its queues belong to this process's server loop: send there. A thread started from a loop
        # that has stopped (its server shut down, a test ended) has no page left to tell.
        loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
        try:
            if loop is None:
                async_to_sync(_send_all)(layer, events)
            elif loop.is_running():
                _send_on(loop, layer, events)
        except Exception:  # a push failure must never undo or fail a committed write
            logger.exception("Could not push %d session event(s) to the channel layer", len(events))
    else:
        # A network layer (Redis): hand the events to this process's sender, so that the writer does
        # not wait for Redis, nor pay for a new event loop and connection per write.
        _sender().submit(layer, events)


def _send_on(loop: asyncio.AbstractEventLoop, layer: Any, events: list[tuple[str, dict[str, Any]]]) -> None:
    """Send on the serving ``loop`` (another thread's), waiting at most LAYER_TIMEOUT: the loop may stop
    while the events wait for it (its server shut down, a test ended), and then no page listens on it
    any more (async_to_sync waited for ever). The coroutine is made on the loop, so one that never
    takes it leaves nothing behind."""
    done: concurrent.futures.Future[bool] = concurrent.futures.Future()

    def settle(task: asyncio.Task) -> None:
        if task.cancelled():  # the loop is shutting down
            done.set_result(False)
        elif task.exception() is not None:
            done.set_exception(task.exception())
        else:
            done.set_result(True)

    def start() -> None:
        if done.set_running_or_notify_cancel():  # (False: given up on meanwhile)
            loop.create_task(_send_all(layer, events)).add_done_callback(settle)

    loop.call_soon_threadsafe(start)
    try:
        sent = done.result(LAYER_TIMEOUT)
    except TimeoutError:
        done.cancel()
        sent = False
    if not sent:
        logger.warning("Dropped %d session event(s): the serving loop did not take them", len(events))


async def _send_all(layer: Any, events: list[tuple[str, dict[str, Any]]]) -> None:
    for group, event in events:
        await layer.group_send(group, event)


# While events keep coming, how long the sender lets them gather between batches (a change in a busy
# stream reaches pages at most this much later; the first one after a pause goes at once).
SENDER_LINGER = 0.01


class _Sender:
    """One long-lived event loop thread per process that sends queued events in order.

    Handing events over costs the writer one ``deque.append`` (atomic, no lock) and, only when the
    sender is idle and waiting, one wake-up through the loop's self-pipe. The sender sends the first
    event at once; while more keep coming it polls every ``SENDER_LINGER`` seconds, taking everything
    queued at once and sending it in order; within such a batch, consecutive MESSAGE events of one session become
    the newest of them (a page re-reads the database from its last sequence number, so the newest
    tells it everything), which keeps each session's order and drops no other kind. So a busy writer
    neither wakes the sender nor shares the CPU with one send per write.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.queue: collections.deque = collections.deque()
        self.waiter: asyncio.Future | None = None  # set while the sender waits for work
        self.thread = threading.Thread(target=self._run, name="convo-event-sender", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._work())

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _work(self) -> None:
        queue = self.queue
        while True:
            if not queue:
                # Announce the wait before looking again: a writer that appends after the look sees
                # the waiter and wakes it; one that appended before it is seen here.
                self.waiter = self.loop.create_future()
                if not queue:
                    await self.waiter
                self.waiter = None
            # The first batch goes at once; then, while events keep coming, poll every SENDER_LINGER
            # seconds (no wake-ups from the writers meanwhile), sending what gathered as one batch.
            while queue:
                batch = []
                with contextlib.suppress(IndexError):
                    while True:
                        batch.append(queue.popleft())
                for layer, events in _coalesce(batch):
                    if layer is None:
                        events.set()  # a flush marker: everything queued before it was sent
                        continue
                    try:
                        _bump_libraries(events)
                        await asyncio.wait_for(_send_all(layer, events), LAYER_TIMEOUT)
                    except Exception as exc:  # a push failure must never undo or fail a committed write
                        # Lost: pages find what it told them by their periodic resync (or on reconnect).
                        layer_health.failed(exc, "sending session events")
                    else:
                        layer_health.ok()
                await asyncio.sleep(SENDER_LINGER)

    def submit(self, layer: Any, events: Any) -> None:
        self.queue.append((layer, events))
        if self.waiter is not None:
            self.loop.call_soon_threadsafe(self._wake)

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted was sent (at exit, so a script's last events go out)."""
        done = threading.Event()
        self.submit(None, done)
        return done.wait(timeout)


def _coalesce(batch: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """The batch with each run of MESSAGE events of one session (nothing else of that session between
    them) replaced by its newest event, at the place of the first, and one library notice per user;
    everything else as it was."""
    if len(batch) < 2:
        return batch
    out: list[tuple[Any, Any]] = []
    last: dict[tuple[int, str], tuple[int, int]] = {}  # (layer, group) -> where its latest event is
    told: set[tuple[int, str]] = set()  # users already told (and their version bumped) in this batch
    for layer, events in batch:
        if layer is None:
            out.append((layer, events))
            continue
        kept = []
        for item in events:  # (group, event): a session's group is named by its key
            key = (id(layer), item[0])
            if item[1].get("type") == LIBRARY:
                # Every change in the batch committed before the batch is sent: one notice (and bump)
                # per user covers them all.
                if key not in told:
                    told.add(key)
                    kept.append(item)
                continue
            at = last.get(key)
            if item[1].get("kind") == MESSAGE and at is not None:
                where, index = at
                if out[where][1][index][1].get("kind") == MESSAGE:
                    out[where][1][index] = item
                    continue
            kept.append(item)
            last[key] = (len(out), len(kept) - 1)
        if kept:
            out.append((layer, kept))
    return out


_sender_instance: _Sender | None = None
_sender_lock = threading.Lock()


def _forget_sender() -> None:
    global _sender_instance
    _sender_instance = None  # a forked child starts its own sender (the thread did not survive the fork)


os.register_at_fork(after_in_child=_forget_sender)


def _sender() -> _Sender:
    global _sender_instance
    sender = _sender_instance
    if sender is not None:
        return sender
    with _sender_lock:
        if _sender_instance is None:
            _sender_instance = _Sender()
            atexit.register(_sender_instance.flush, 10.0)
        return _sender_instance


def flush(timeout: float = 10.0) -> bool:
    """Wait until this process's queued events were handed to the channel layer."""
    return _sender_instance.flush(timeout) if _sender_instance is not None else True
