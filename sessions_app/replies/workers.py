"""The processes that run replies: worker ids and liveness, recovery, threads, the watcher, shutdown.

Each reply runs in a daemon thread of the process that started it (``launch``; the loop is
``run.run_reply``). Each process has one watcher thread while it runs replies: it refreshes their
heartbeats (confirming each thread's ``run.Lease``) and polls their rows' status and stop flags (Stop
from another process), cancelling locally; a row seen ended or gone loses the thread its lease. A
running row whose heartbeat is older than CONVO_REPLY_STALE_SECONDS belongs to a dead process:
``recover_stale_replies`` (run by every serving process's periodic sweep, on a process's first
request, and before every "is a reply running" check) marks it interrupted. The watcher survives a
cut database connection (``dbconn``): it reconnects with a bounded backoff and logs once per outage.

``shutdown(grace_seconds)`` (called on SIGTERM): replies that finish within the grace finish; the
others are stopped and marked interrupted, so another process resumes them (CONVO_REPLY_AUTO_RETRY).
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
from django.db import connection, connections
from django.utils import timezone

from sessions_app.models import Reply

from . import dbconn
from .responders import CancelHandle, Responder, redact
from .run import Lease, emit_error, mark_turn_error, run_reply

logger = logging.getLogger(__name__)

INTERRUPTED_MESSAGE = "The reply was interrupted (the server restarted or its process stopped). Try again."
RESUMING_MESSAGE = "The reply was interrupted (the server restarted or its process stopped); it is being resumed."
SHUTDOWN_MESSAGE = "The reply was interrupted because its server shut down; it is being resumed."
SHUTDOWN_RETRY_OFF_MESSAGE = "The reply was interrupted because its server shut down. Try again."


def auto_retry() -> bool:
    """Whether interrupted replies are resumed by the periodic sweep (CONVO_REPLY_AUTO_RETRY, and a sweep
    that runs: CONVO_REPLY_SWEEP_SECONDS)."""
    return bool(settings.CONVO_REPLY_AUTO_RETRY) and settings.CONVO_REPLY_SWEEP_SECONDS is not None


def interrupted_message(reply: Reply) -> str:
    """What a reply whose process died says: it will be resumed unless it is a resume itself."""
    return RESUMING_MESSAGE if auto_retry() and reply.resumed_from_id is None else INTERRUPTED_MESSAGE


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
    lease: Lease
    session_key: uuid.UUID | None = None


_local: dict[int, _Local] = {}
_local_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------
# Recovery: replies whose process is gone.


def _cutoffs(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """(stale, suspect): a running reply whose heartbeat is older than ``stale`` is dead; one older than
    ``suspect`` (the later of the two) is dead when its process provably stopped."""
    stale = now - dt.timedelta(seconds=settings.CONVO_REPLY_STALE_SECONDS)
    dead = now - dt.timedelta(seconds=max(2 * settings.CONVO_REPLY_HEARTBEAT_SECONDS, 1.0))
    return stale, max(stale, dead)


def may_be_stale(reply: Reply, now: dt.datetime | None = None) -> bool:
    """Whether a running reply's heartbeat is old enough that recover_stale_replies would look at it
    (a reply read anyway needs no recovery query of its own while it is fresh)."""
    return reply.heartbeat_at < _cutoffs(now or timezone.now())[1]


def recover_stale_replies(*, session_id: uuid.UUID | None = None, now: dt.datetime | None = None) -> int:
    """Mark running replies whose process is gone as interrupted; return how many.

    A live process refreshes its replies' heartbeats every CONVO_REPLY_HEARTBEAT_SECONDS, so a reply
    is taken for dead when its heartbeat is older than CONVO_REPLY_STALE_SECONDS, or older than two
    heartbeats when its process provably stopped (same host: the pid is gone or the machine
    rebooted). A process starting up therefore never interrupts another live process's reply. The
    turn stays open with the error in its metadata, and pages get a REPLY error event.
    """
    now = now or timezone.now()
    stale_cutoff, suspect_cutoff = _cutoffs(now)
    candidates = Reply.objects.filter(status=Reply.Status.RUNNING, heartbeat_at__lt=suspect_cutoff)
    if session_id is not None:
        candidates = candidates.filter(session_id=session_id)
    with _local_lock:
        mine = set(_local)
    count = 0
    for reply in candidates.exclude(pk__in=mine).order_by("heartbeat_at")[:500]:
        if reply.heartbeat_at >= stale_cutoff and not _provably_dead(reply.worker):
            continue
        # Only if it did not beat meanwhile (and nobody else ended it).
        message = interrupted_message(reply)
        updated = Reply.objects.filter(
            pk=reply.pk, status=Reply.Status.RUNNING, heartbeat_at=reply.heartbeat_at
        ).update(status=Reply.Status.INTERRUPTED, error=message, finish_reason="interrupted", finished_at=now)
        if not updated:
            continue
        count += 1
        logger.warning(
            "Reply %s of session %s was interrupted (worker %s stopped)", reply.pk, reply.session_id, reply.worker
        )
        mark_turn_error(reply, message, now)
        emit_error(reply, reply.text, message)
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
    lease = Lease()
    thread = threading.Thread(
        target=_thread_main,
        args=(reply_id, handle, lease, loop, responder),
        name=f"convo-reply-{reply_id}",
        daemon=True,
    )
    with _local_lock:
        if _closing.is_set():  # shutting down: hand it to another process at once
            thread = None
        else:
            _local[reply_id] = _Local(thread, handle, lease, session_key)
    if thread is None:
        _on_own_thread(_hand_over, {reply_id: ""})
        return
    thread.start()
    _watcher.ensure_running()


def _thread_main(
    reply_id: int, handle: CancelHandle, lease: Lease, loop: asyncio.AbstractEventLoop | None, responder: Responder
) -> None:
    if loop is not None:
        # Make async_to_sync in this thread (the engine's event pushes) run on the serving loop.
        SyncToAsync.threadlocal.main_event_loop = loop
        SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()
    try:
        reply = dbconn.retry(lambda: Reply.objects.filter(pk=reply_id).first(), who=f"Reply {reply_id}", budget=5.0)
        if reply is not None:
            run_reply(reply, handle, responder, lease)
    except Exception as exc:
        if dbconn.is_connection_error(exc):
            logger.warning(
                "Reply %s could not record its end (the database is unreachable); the stale sweep will mark it",
                reply_id,
            )
        else:
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
        outage = dbconn.Outage("The reply watcher")
        try:
            while True:  # ends when this process runs no reply (checked under the start lock)
                with self._lock, _local_lock:
                    local = dict(_local)
                    if not local:
                        self._thread = None
                        return
                try:
                    last_beat = self._check(local, last_beat)
                    outage.recovered()
                    delay = settings.CONVO_REPLY_POLL_SECONDS
                except Exception as exc:  # a cut connection, a database restart: close, back off, retry
                    delay = max(outage.failed(exc), settings.CONVO_REPLY_POLL_SECONDS)
                time.sleep(delay)
        except BaseException:
            logger.exception("The reply watcher stopped")
            raise
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None  # died abnormally: the next reply starts a new watcher
            connections.close_all()

    @staticmethod
    def _check(local: dict[int, _Local], last_beat: float) -> float:
        """One round: the heartbeat when due, then each row's status and stop flag. Returns the time
        of the last heartbeat."""
        ids = list(local)
        beat = None
        if time.monotonic() - last_beat >= settings.CONVO_REPLY_HEARTBEAT_SECONDS:
            beat = time.monotonic()
            Reply.objects.filter(pk__in=ids, status=Reply.Status.RUNNING).update(heartbeat_at=timezone.now())
            last_beat = beat
        rows = {
            pk: (status, stop)
            for pk, status, stop in Reply.objects.filter(pk__in=ids).values_list("pk", "status", "stop_requested")
        }
        for pk, item in local.items():
            status, stop = rows.get(pk, (None, True))
            if status != Reply.Status.RUNNING:
                # Ended elsewhere (marked interrupted after a pause, or its session deleted): the
                # thread has no row to write any more and must not send another event.
                item.lease.lose()
                item.handle.cancel()
                continue
            if beat is not None:  # the heartbeat found it running (nothing turns back to running)
                item.lease.confirm(beat)
            if stop:
                item.handle.cancel()
        return last_beat


_watcher = _Watcher()


# ---------------------------------------------------------------------------------------------
# Shutdown: finish what finishes within the grace, hand the rest over to another process.


_closing = threading.Event()
_shutdown_lock = threading.Lock()
# After the grace: at most this long to mark the remaining replies and let their threads end.
HANDOVER_SECONDS = 2.0


def closing() -> bool:
    """Whether this process is shutting down (no new reply threads, no resumes from here)."""
    return _closing.is_set()


def shutdown(grace_seconds: float) -> None:
    """Stop this process's replies for a shutdown; blocks for at most ``grace_seconds`` + HANDOVER_SECONDS.

    Replies that finish within ``grace_seconds`` finish. The others lose their lease (they send
    nothing more and write nothing), their provider calls are cancelled, and their rows are marked
    interrupted (finish reason "interrupted", the text so far kept), so that another process's sweep
    resumes them when CONVO_REPLY_AUTO_RETRY is on; pages get the REPLY error event. From the first
    call on, no new reply thread starts here (a reply started meanwhile is handed over the same way).
    Idempotent: a second call finds nothing left to do. Safe to call from an event loop's thread (the
    database work runs on a thread of its own).
    """
    _closing.set()
    with _shutdown_lock:
        deadline = time.monotonic() + max(0.0, grace_seconds)
        with _local_lock:
            running = list(_local.values())
        for item in running:
            item.thread.join(max(0.0, deadline - time.monotonic()))
        with _local_lock:
            left = dict(_local)
        if not left:
            return
        for item in left.values():
            item.lease.lose()
            item.handle.cancel()
        handover_by = time.monotonic() + HANDOVER_SECONDS
        texts = {pk: item.lease.text for pk, item in left.items()}
        _on_own_thread(_hand_over, texts, handover_by - 0.5, timeout=HANDOVER_SECONDS)
        stop_by = handover_by  # let the stopped threads close their connections
        for item in left.values():
            item.thread.join(max(0.0, stop_by - time.monotonic()))


def _on_own_thread(func: Any, *args: Any, timeout: float | None = None) -> None:
    """Run ``func`` on a new thread and wait for it, at most ``timeout`` seconds (the ORM refuses to
    run on an event loop's thread)."""
    thread = threading.Thread(target=func, args=args, name="convo-reply-shutdown", daemon=True)
    thread.start()
    thread.join(timeout)


def _hand_over(texts: dict[int, str], deadline: float | None = None) -> None:
    """Mark this process's running replies interrupted for a shutdown, keeping their text so far
    (retrying a cut connection until the monotonic ``deadline``)."""
    deadline = deadline if deadline is not None else time.monotonic() + HANDOVER_SECONDS
    message = SHUTDOWN_MESSAGE if auto_retry() else SHUTDOWN_RETRY_OFF_MESSAGE
    try:
        for pk, text in texts.items():
            now = timezone.now()
            fields: dict[str, Any] = {
                "status": Reply.Status.INTERRUPTED,
                "error": message,
                "finish_reason": "interrupted",
                "finished_at": now,
            }
            if text:
                fields["text"] = text

            def mark(pk: int = pk, fields: dict[str, Any] = fields) -> int:
                return Reply.objects.filter(pk=pk, status=Reply.Status.RUNNING, worker=worker_id()).update(**fields)

            try:
                if not dbconn.retry(mark, who="The shutdown", budget=max(0.0, deadline - time.monotonic())):
                    continue  # it finished (or was ended) meanwhile
                reply = Reply.objects.get(pk=pk)
                logger.warning("Reply %s of session %s was handed over at shutdown", pk, reply.session_id)
                mark_turn_error(reply, message, now)
                emit_error(reply, reply.text, message)
            except Exception as exc:  # the database is gone too: the other processes' sweep marks it
                logger.warning("Could not hand reply %s over at shutdown: %s", pk, redact(str(exc)))
    finally:
        connection.close()
