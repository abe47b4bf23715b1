"""The processes that run replies: worker ids and liveness, recovery, threads, and the watcher.

Each reply runs in a daemon thread of the process that started it (``launch``; the loop is
``run.run_reply``). Each process has one watcher thread while it runs replies: it refreshes their
heartbeats and polls their rows' stop flags (Stop from another process), cancelling locally. A
running row whose heartbeat is older than CONVO_REPLY_STALE_SECONDS belongs to a dead process:
``recover_stale_replies`` (run on a process's first request, and before every "is a reply running"
check) marks it interrupted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import DatabaseError, connections
from django.utils import timezone

from sessions_app.models import Reply

from .responders import CancelHandle, Responder, redact
from .run import emit_error, mark_turn_error, run_reply

logger = logging.getLogger(__name__)

INTERRUPTED_MESSAGE = "The reply was interrupted (the server restarted or its process stopped). Try again."


# ---------------------------------------------------------------------------------------------
# The process: its worker id and the replies its threads run.


_worker: tuple[int, str] | None = None


def _machine() -> tuple[str, str]:
    """This machine's host name and boot id (a new boot id means every earlier process is gone)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]
    except OSError:
        boot = "-"
    return socket.gethostname().replace(":", "_"), boot or "-"


def worker_id() -> str:
    """This process's id in Reply.worker: host, boot id, pid and a random part (pids are reused)."""
    global _worker
    if _worker is None or _worker[0] != os.getpid():
        host, boot = _machine()
        _worker = (os.getpid(), f"{host}:{boot}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    return _worker[1]


def _provably_dead(worker: str) -> bool:
    """Whether a worker id names a process of this machine that no longer runs.

    Only for this host name: the machine rebooted since, the pid is this process's but the id is not
    (an earlier incarnation, e.g. pid 1 of a restarted container), or no process has that pid.
    """
    parts = worker.split(":")
    if len(parts) != 4 or not parts[2].isdigit():
        return False
    host, boot, pid, _ = parts
    my_host, my_boot = _machine()
    if host != my_host:
        return False
    if boot != my_boot:
        return True
    if int(pid) == os.getpid():
        return worker != worker_id()
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


@dataclass
class _Local:
    thread: threading.Thread
    handle: CancelHandle
    session_key: uuid.UUID | None = None


_local: dict[int, _Local] = {}
_local_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------
# Recovery: replies whose process is gone.


def recover_stale_replies(*, session_id: uuid.UUID | None = None, now: dt.datetime | None = None) -> int:
    """Mark running replies whose process is gone as interrupted; return how many.

    A live process refreshes its replies' heartbeats every CONVO_REPLY_HEARTBEAT_SECONDS, so a reply
    is taken for dead when its heartbeat is older than CONVO_REPLY_STALE_SECONDS, or older than two
    heartbeats when its process provably stopped (same host: the pid is gone or the machine
    rebooted). A process starting up therefore never interrupts another live process's reply. The
    turn stays open with the error in its metadata, and pages get a REPLY error event.
    """
    now = now or timezone.now()
    heartbeat = settings.CONVO_REPLY_HEARTBEAT_SECONDS
    stale_cutoff = now - dt.timedelta(seconds=settings.CONVO_REPLY_STALE_SECONDS)
    dead_cutoff = now - dt.timedelta(seconds=max(2 * heartbeat, 1.0))
    candidates = Reply.objects.filter(status=Reply.Status.RUNNING, heartbeat_at__lt=max(stale_cutoff, dead_cutoff))
    if session_id is not None:
        candidates = candidates.filter(session_id=session_id)
    with _local_lock:
        mine = set(_local)
    count = 0
    for reply in candidates.exclude(pk__in=mine).order_by("heartbeat_at")[:500]:
        if reply.heartbeat_at >= stale_cutoff and not _provably_dead(reply.worker):
            continue
        # Only if it did not beat meanwhile (and nobody else ended it).
        updated = Reply.objects.filter(
            pk=reply.pk, status=Reply.Status.RUNNING, heartbeat_at=reply.heartbeat_at
        ).update(
            status=Reply.Status.INTERRUPTED, error=INTERRUPTED_MESSAGE, finish_reason="interrupted", finished_at=now
        )
        if not updated:
            continue
        count += 1
        logger.warning(
            "Reply %s of session %s was interrupted (worker %s stopped)", reply.pk, reply.session_id, reply.worker
        )
        mark_turn_error(reply, INTERRUPTED_MESSAGE, now)
        emit_error(reply, reply.text, INTERRUPTED_MESSAGE)
    return count


def recover_on_startup(**kwargs: Any) -> None:
    """request_started receiver: once per process, on its first request, recover in the background
    (on its own connection: the request neither waits for it nor sees its queries)."""
    from django.core.signals import request_started

    request_started.disconnect(recover_on_startup, dispatch_uid="convo-replies-recover")
    threading.Thread(target=_recover_in_background, name="convo-reply-recovery", daemon=True).start()


def _recover_in_background() -> None:
    try:
        recover_stale_replies()
    except Exception as exc:  # e.g. tables not migrated yet: the lazy checks will do it later
        logger.warning("Could not check for interrupted replies: %s", redact(str(exc)))
    finally:
        connections.close_all()


# ---------------------------------------------------------------------------------------------
# Launching: one daemon thread per reply.


def serving_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop serving this request, when called from one (a sync view under ASGI, or a consumer).

    The reply thread sends its channel-layer events through it, as the request's own code would: the
    in-memory layer's queues belong to that loop and are not woken from another one.
    """
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) == os.getpid():
        return getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    return None


def launch(
    reply_id: int,
    loop: asyncio.AbstractEventLoop | None,
    responder: Responder,
    session_key: uuid.UUID | None = None,
) -> None:
    handle = CancelHandle()
    thread = threading.Thread(
        target=_thread_main, args=(reply_id, handle, loop, responder), name=f"convo-reply-{reply_id}", daemon=True
    )
    with _local_lock:
        _local[reply_id] = _Local(thread, handle, session_key)
    thread.start()
    _watcher.ensure_running()


def _thread_main(
    reply_id: int, handle: CancelHandle, loop: asyncio.AbstractEventLoop | None, responder: Responder
) -> None:
    if loop is not None:
        # Make async_to_sync in this thread (the engine's event pushes) run on the serving loop.
        SyncToAsync.threadlocal.main_event_loop = loop
        SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()
    try:
        reply = Reply.objects.filter(pk=reply_id).first()
        if reply is not None:
            run_reply(reply, handle, responder)
    except Exception:
        logger.error("Reply %s crashed: %s", reply_id, redact(traceback.format_exc()))
    finally:
        with _local_lock:
            _local.pop(reply_id, None)
        connections.close_all()


def cancel_local(reply_id: int) -> None:
    with _local_lock:
        local = _local.get(reply_id)
    if local is not None:
        local.handle.cancel()


def cancel_sessions(sender: Any = None, *, keys: list[uuid.UUID], **kwargs: Any) -> None:
    """engine.sessions_deleted receiver: cancel this process's replies of the deleted sessions at once
    (other processes' watchers see the rows gone within CONVO_REPLY_POLL_SECONDS)."""
    deleted = set(keys)
    with _local_lock:
        handles = [local.handle for local in _local.values() if local.session_key in deleted]
    for handle in handles:
        handle.cancel()


def join_local(reply_id: int, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for the reply's thread, when this process runs it."""
    with _local_lock:
        local = _local.get(reply_id)
    if local is not None:
        local.thread.join(timeout)


# ---------------------------------------------------------------------------------------------
# The watcher: heartbeats and cross-process Stop for this process's replies.


class _Watcher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def ensure_running(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="convo-reply-watcher", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        last_beat = time.monotonic()
        try:
            while True:  # ends when this process runs no reply (checked under the start lock)
                with self._lock, _local_lock:
                    ids = list(_local)
                    if not ids:
                        self._thread = None
                        return
                try:
                    if time.monotonic() - last_beat >= settings.CONVO_REPLY_HEARTBEAT_SECONDS:
                        last_beat = time.monotonic()
                        Reply.objects.filter(pk__in=ids, status=Reply.Status.RUNNING).update(
                            heartbeat_at=timezone.now()
                        )
                    # Stop asked for (from any process), or the row gone with its deleted session.
                    alive = dict(Reply.objects.filter(pk__in=ids).values_list("pk", "stop_requested"))
                    for pk in ids:
                        if alive.get(pk, True):
                            cancel_local(pk)
                except DatabaseError:
                    logger.exception("The reply watcher could not reach the database")
                time.sleep(settings.CONVO_REPLY_POLL_SECONDS)
        except Exception:
            logger.exception("The reply watcher stopped")
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None  # died abnormally: the next reply starts a new watcher
            connections.close_all()


_watcher = _Watcher()
