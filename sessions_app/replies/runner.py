"""Running replies: one background thread per reply, one running reply per session, Stop, recovery.

Life of a reply: ``start_reply`` checks the last turn and inserts a running ``Reply`` row under the
session's row lock (a partial unique constraint makes a second running reply impossible); after the
commit a daemon thread runs it. The thread asks the responder with the session's context window,
streams the text as REPLY events, stores each tool call as a tool message of the turn and asks
again (at most CONVO_REPLY_MAX_TOOL_ROUNDS rounds with tools offered), then appends the assistant
message, which completes the turn. Every write re-checks, under the session's lock, that the row is
still running and the turn is still the one it answers, so a reply never lands on a newer turn.

Each process has one watcher thread while it runs replies: it refreshes their heartbeats and polls
their rows' stop flags (Stop from another process), cancelling locally. A running row whose heartbeat
is older than CONVO_REPLY_STALE_SECONDS belongs to a dead process: ``recover_stale_replies`` (run on
a process's first request, and before every "is a reply running" check) marks it interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import Q
from django.utils import timezone

from sessions_app import engine, events
from sessions_app.models import ConversationSession, Message, Reply, Role, Turn

from . import tools
from .responders import (
    CancelHandle,
    ContextInfo,
    Finish,
    ProviderError,
    ProviderRequest,
    Responder,
    TextDelta,
    ToolCall,
    Usage,
    get_responder,
    redact,
    wire_messages,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

INTERRUPTED_MESSAGE = "The reply was interrupted (the server restarted or its process stopped). Try again."
CHANGED_MESSAGE = "The conversation changed while the assistant was replying, so the reply was dropped."
GONE_MESSAGE = "The session was deleted while the assistant was replying."


class ReplyError(Exception):
    """Base of the errors the reply service raises on purpose."""


class ReplyInProgress(ReplyError):
    """The session already has a running reply (UI: a clear message; API: HTTP 409)."""

    def __init__(self, session_id: str, reply_id: int | None = None) -> None:
        super().__init__("The assistant is still replying in this conversation: wait for it or stop it first.")
        self.session_id = session_id
        self.reply_id = reply_id


class NothingToReply(ReplyError):
    """There is no open turn to answer (no message yet, or the last one is answered: regenerate it)."""


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


_local: dict[int, _Local] = {}
_local_lock = threading.Lock()


def _max_rounds() -> int:
    value = settings.CONVO_REPLY_MAX_TOOL_ROUNDS
    return 5 if value is None else max(0, value)  # "none" in the environment: the default


# ---------------------------------------------------------------------------------------------
# The service API.


@engine.storage_errors
def start_reply(
    session_id: str, *, owner: Any = engine.ANY_OWNER, regenerate: bool = False, now: dt.datetime | None = None
) -> Reply:
    """Start the assistant's reply to the session's last turn in a background thread; return its row.

    Without ``regenerate`` the last turn must be open (a new message, or a failed/stopped reply to
    retry); with it, the last turn is answered again even if complete, its earlier responses left
    out of the context (they stay in the message list). Raises ReplyInProgress, NothingToReply,
    the engine's SessionNotFound / SessionExpired, or ImproperlyConfigured for bad settings.
    """
    now = now or timezone.now()
    recover_stale_replies(session_id=session_id, now=now)
    with transaction.atomic():
        session = engine.lock_session(session_id, owner, now)
        return _begin(session, regenerate=regenerate)


@engine.storage_errors
def append_and_reply(
    session_id: str,
    content: str,
    *,
    owner: Any = engine.ANY_OWNER,
    name: str | None = None,
    metadata: dict[str, str] | None = None,
    now: dt.datetime | None = None,
) -> tuple[Message, Reply]:
    """Append a user message and start the reply to it, atomically: while a reply runs, the message is
    refused (ReplyInProgress) and nothing is stored. Raises what message_append and start_reply raise."""
    now = now or timezone.now()
    recover_stale_replies(session_id=session_id, now=now)
    with transaction.atomic():
        engine.lock_session(session_id, owner, now)
        _refuse_if_running(session_id)
        message = engine.message_append(
            session_id, Role.USER, content, name=name, metadata=metadata, owner=owner, now=now
        )
        session = engine.lock_session(session_id, owner, now)  # re-read: the append moved the bookkeeping
        return message, _begin(session, regenerate=False)


@engine.storage_errors
def stop_reply(session_id: str, *, owner: Any = engine.ANY_OWNER) -> bool:
    """Ask the session's running reply to stop; return whether one was running.

    Works from any process: the stop flag is set on the row (the running process polls it) and, when
    the reply runs here, its provider call is cancelled at once. The reply then stores its partial
    text with finish reason "stopped" (nothing when no text had arrived); ``wait_reply`` waits for it.
    """
    engine.session_get(session_id, owner=owner)
    recover_stale_replies(session_id=session_id)  # a dead process's reply cannot stop: it is interrupted
    ids = list(Reply.objects.filter(session_id=session_id, status=Reply.Status.RUNNING).values_list("pk", flat=True))
    if not ids:
        return False
    Reply.objects.filter(pk__in=ids, status=Reply.Status.RUNNING).update(stop_requested=True)
    for pk in ids:
        _cancel_local(pk)
    return True


@engine.storage_errors
def running_reply(session: ConversationSession | str) -> Reply | None:
    """The session's running reply, if any (after marking a dead process's reply interrupted).

    Its ``text`` is the text so far as of the last save (at most about a second old); the REPLY
    events that follow carry the whole text, so a page reloaded mid-reply shows it and catches up.
    """
    session_id = session if isinstance(session, str) else session.pk
    recover_stale_replies(session_id=session_id)
    return Reply.objects.filter(session_id=session_id, status=Reply.Status.RUNNING).first()


def earlier_responses(reply: Reply) -> list[int]:
    """The seqs of the turn's responses from before ``reply`` (regenerate/retry): its assistant messages
    and the tool messages earlier replies stored. They are not sent to the model."""
    return list(
        Message.objects.filter(session_id=reply.session_id, turn_number=reply.turn_number, seq__lte=reply.base_seq)
        .filter(Q(role=Role.ASSISTANT) | Q(role=Role.TOOL, metadata__has_key="reply"))
        .values_list("seq", flat=True)
    )


@engine.storage_errors
def reply_context_window(
    session: ConversationSession, max_tokens: int | None = None, *, reply: Reply | None = None
) -> engine.ContextWindow:
    """The context window a reply sends: ``reply``'s, or the running reply's when there is one, else
    the plain window. The one function behind the reply's request, the context panel and the API's
    context endpoint, so what they show is what is sent."""
    if reply is None:
        reply = Reply.objects.filter(session_id=session.pk, status=Reply.Status.RUNNING).first()
    exclude = earlier_responses(reply) if reply is not None else ()
    return engine.context_window(session, max_tokens, exclude_seqs=exclude)


def reply_summary(reply: Reply) -> dict[str, Any]:
    """A reply as plain JSON-ready data, for the API and page templates."""
    return {
        "id": reply.pk,
        "session_id": reply.session_id,
        "turn": reply.turn_number,
        "status": reply.status,
        "regenerate": reply.regenerate,
        "responder": reply.responder,
        "model": reply.model,
        "text": reply.text,
        "finish_reason": reply.finish_reason or None,
        "error": reply.error or None,
        "tool_rounds": reply.tool_rounds,
        "message_seq": reply.message_seq,
        "started_at": reply.started_at.isoformat(),
        "finished_at": reply.finished_at.isoformat() if reply.finished_at else None,
    }


@engine.storage_errors
def latest_reply(session: ConversationSession | str) -> Reply | None:
    """The session's most recent reply in any state (e.g. to show why the last one failed)."""
    session_id = session if isinstance(session, str) else session.pk
    recover_stale_replies(session_id=session_id)
    return Reply.objects.filter(session_id=session_id).order_by("-started_at", "-pk").first()


def wait_reply(reply_id: int, timeout: float = 30.0) -> Reply:
    """Wait until a reply is no longer running (or ``timeout`` seconds passed); return its row."""
    deadline = time.monotonic() + timeout
    with _local_lock:
        local = _local.get(reply_id)
    if local is not None:
        local.thread.join(timeout)
    reply = Reply.objects.get(pk=reply_id)
    while reply.is_running and time.monotonic() < deadline:  # run by another process: poll its row
        time.sleep(0.05)
        reply.refresh_from_db()
    return reply


def recover_stale_replies(*, session_id: str | None = None, now: dt.datetime | None = None) -> int:
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
        _mark_turn_error(reply, INTERRUPTED_MESSAGE, now)
        _emit_error(reply, reply.text, INTERRUPTED_MESSAGE)
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
# Starting.


def _refuse_if_running(session_id: str) -> None:
    running = (
        Reply.objects.filter(session_id=session_id, status=Reply.Status.RUNNING).values_list("pk", flat=True).first()
    )
    if running is not None:
        raise ReplyInProgress(session_id, running)


def _begin(session: ConversationSession, *, regenerate: bool) -> Reply:
    """Insert the running row and queue the thread. Call holding the session's row lock."""
    _refuse_if_running(session.pk)
    turn = Turn.objects.filter(session=session, number=session.turn_count).select_related("user_message").first()
    if turn is None:
        raise NothingToReply("There is no message to reply to yet: send one first.")
    if turn.is_complete and not regenerate:
        raise NothingToReply("The last message already has a reply: regenerate it to get another one.")
    responder = get_responder()
    try:
        with transaction.atomic():
            reply = Reply.objects.create(
                session=session,
                turn_number=turn.number,
                user_seq=turn.user_message.seq,
                base_seq=session.last_seq,
                regenerate=regenerate,
                responder=responder.name,
                model=responder.model,
                worker=worker_id(),
                # The real clock, whatever ``now`` the caller passed: liveness is about this process.
                heartbeat_at=timezone.now(),
                started_at=timezone.now(),
            )
    except IntegrityError:
        raise ReplyInProgress(session.pk) from None
    events.emit(session.pk, events.REPLY, state="started", text="", reply=reply.pk, turn=turn.number)
    transaction.on_commit(partial(_launch, reply.pk, _main_loop(), responder))
    return reply


def _main_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop serving this request, when called from one (a sync view under ASGI, or a consumer).

    The reply thread sends its channel-layer events through it, as the request's own code would: the
    in-memory layer's queues belong to that loop and are not woken from another one.
    """
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) == os.getpid():
        return getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    return None


def _launch(reply_id: int, loop: asyncio.AbstractEventLoop | None, responder: Responder) -> None:
    handle = CancelHandle()
    thread = threading.Thread(
        target=_thread_main, args=(reply_id, handle, loop, responder), name=f"convo-reply-{reply_id}", daemon=True
    )
    with _local_lock:
        _local[reply_id] = _Local(thread, handle)
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
            _Run(reply, handle, responder).run()
    except Exception:
        logger.error("Reply %s crashed: %s", reply_id, redact(traceback.format_exc()))
    finally:
        with _local_lock:
            _local.pop(reply_id, None)
        connections.close_all()


def _cancel_local(reply_id: int) -> None:
    with _local_lock:
        local = _local.get(reply_id)
    if local is not None:
        local.handle.cancel()


def _mark_turn_error(reply: Reply, message: str, now: dt.datetime) -> None:
    """Record a failed reply in its turn's metadata, if that turn is still the one it answered."""
    if not Turn.objects.filter(
        session_id=reply.session_id, number=reply.turn_number, user_message__seq=reply.user_seq
    ).exists():
        return
    with contextlib.suppress(engine.SessionError):  # deleted or expired meanwhile: nothing to annotate
        engine.turn_set_metadata(reply.session_id, reply.turn_number, _turn_error(message, now), now=now)


def _turn_error(message: str, now: dt.datetime) -> dict[str, str]:
    """What a failed reply leaves in its turn's metadata (cleared when a later reply succeeds)."""
    return {"reply_error": message, "reply_error_at": now.isoformat(timespec="seconds")}


def _emit_error(reply: Reply, text: str, message: str) -> None:
    """Tell open pages that the reply ended in an error (the text so far, and why)."""
    events.emit(
        reply.session_id, events.REPLY, state="error", text=text, error=message, reply=reply.pk, turn=reply.turn_number
    )


# ---------------------------------------------------------------------------------------------
# Running.


class _Stopped(Exception):
    pass


class _Abandoned(Exception):
    """The reply cannot land: the session is gone or its turn is not the last one any more."""


class _Lost(Exception):
    """The row is no longer running (marked interrupted by another process): stop quietly."""


class _Run:
    def __init__(self, reply: Reply, handle: CancelHandle, responder: Responder) -> None:
        self.reply = reply
        self.sid = reply.session_id
        self.handle = handle
        self.responder = responder
        self.text = ""
        self.rounds = 0
        self.usage: dict[str, int] = {}
        self.estimated_prompt = 0
        self.started = time.monotonic()
        self.first_text_ms: int | None = None
        self._last_event = self._last_save = 0.0

    def run(self) -> None:
        try:
            finish = self._converse()
        except _Lost:
            return
        except _Stopped:
            return self._end_stopped()
        except _Abandoned as exc:
            return self._end_error(str(exc), annotate_turn=False)
        except ProviderError as exc:
            if self.handle.is_cancelled:
                return self._end_stopped()
            return self._end_error(str(exc))
        except engine.SessionNotFound:
            return self._end_error(GONE_MESSAGE, annotate_turn=False)
        except engine.SessionError as exc:
            return self._end_error(f"The reply could not be stored: {exc}")
        except Exception:
            if self.handle.is_cancelled:
                return self._end_stopped()
            logger.error("Reply %s failed: %s", self.reply.pk, redact(traceback.format_exc()))
            return self._end_error("The reply failed because of an internal error.")
        self._end_done(finish)

    def _converse(self) -> str:
        max_rounds = _max_rounds()
        while True:  # one pass per model call; tool rounds are bounded by max_rounds
            request = self._request(tools_allowed=self.rounds < max_rounds)
            calls: list[ToolCall] = []
            finish = "stop"
            round_text = ""
            for event in self.responder.stream(request, self.handle):
                if self.handle.is_cancelled:
                    raise _Stopped
                if isinstance(event, TextDelta):
                    if not round_text and self.text:
                        self.text += "\n\n"
                    round_text += event.text
                    self.text += event.text
                    self._progress()
                elif isinstance(event, ToolCall):
                    calls.append(event)
                elif isinstance(event, Usage):
                    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                        if getattr(event, key) is not None:
                            self.usage[key] = self.usage.get(key, 0) + getattr(event, key)
                elif isinstance(event, Finish):
                    finish = event.reason
            if self.handle.is_cancelled:
                raise _Stopped
            if not calls:
                return finish
            if self.rounds >= max_rounds:
                return "max_tool_rounds"
            self.rounds += 1
            self._run_tools(calls, round_text)

    def _request(self, *, tools_allowed: bool) -> ProviderRequest:
        session = engine.session_get(self.sid)
        self._check_turn(session)
        window = reply_context_window(session, reply=self.reply)
        messages = window.messages
        self.estimated_prompt = window.total_tokens
        return ProviderRequest(
            messages=wire_messages(messages),
            tools=tools.definitions() if tools_allowed else None,
            context=ContextInfo(
                message_count=len(messages),
                tokens=self.estimated_prompt,
                turn_number=self.reply.turn_number,
                max_tokens=window.max_tokens,
            ),
            session_id=self.sid,
        )

    def _check_turn(self, session: ConversationSession) -> None:
        if (
            session.turn_count != self.reply.turn_number
            or not Turn.objects.filter(
                session_id=self.sid, number=self.reply.turn_number, user_message__seq=self.reply.user_seq
            ).exists()
        ):
            raise _Abandoned(CHANGED_MESSAGE)

    def _progress(self) -> None:
        if self.first_text_ms is None:
            self.first_text_ms = self._elapsed_ms()
        now = time.monotonic()
        if now - self._last_event >= settings.CONVO_REPLY_EVENT_INTERVAL:
            self._last_event = now
            events.emit(
                self.sid, events.REPLY, state="delta", text=self.text, reply=self.reply.pk, turn=self.reply.turn_number
            )
        if now - self._last_save >= settings.CONVO_REPLY_SAVE_INTERVAL:
            self._last_save = now
            Reply.objects.filter(pk=self.reply.pk, status=Reply.Status.RUNNING).update(text=self.text)

    def _run_tools(self, calls: list[ToolCall], round_text: str) -> None:
        context = tools.ToolContext(session_id=self.sid)
        for i, call in enumerate(calls):
            if self.handle.is_cancelled:
                raise _Stopped
            result = tools.run(call.name, call.arguments, context)
            metadata = {
                "reply": str(self.reply.pk),
                "tool_round": f"{self.reply.pk}:{self.rounds}",
                "arguments": _clean(call.arguments),
                "status": "ok" if result.ok else "error",
            }
            if i == 0 and round_text:
                metadata["assistant_content"] = _clean(round_text)
            self._guarded(
                lambda reply, call=call, result=result, metadata=metadata: engine.message_append(
                    self.sid,
                    Role.TOOL,
                    _clean(result.content),
                    name=_clean(call.name)[:256],
                    tool_call_id=_clean(call.id)[:256],
                    metadata=metadata,
                )
            )
        Reply.objects.filter(pk=self.reply.pk, status=Reply.Status.RUNNING).update(tool_rounds=self.rounds)

    def _guarded(self, write: Callable[[Reply], T]) -> T:
        """Run ``write`` holding the session's row lock and the reply's, once both are checked."""
        with transaction.atomic():
            session = ConversationSession.objects.select_for_update().filter(pk=self.sid).first()
            if session is None:
                raise _Abandoned(GONE_MESSAGE)
            reply = Reply.objects.select_for_update().filter(pk=self.reply.pk).first()
            if reply is None:
                raise _Abandoned(GONE_MESSAGE)
            if not reply.is_running:
                raise _Lost
            self._check_turn(session)
            return write(reply)

    def _elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def _metadata(self, finish: str) -> dict[str, str]:
        meta = {
            "responder": self.responder.name,
            "model": self.responder.model,
            "finish_reason": finish,
            "latency_ms": str(self._elapsed_ms()),
            "reply": str(self.reply.pk),
            "tool_rounds": str(self.rounds),
            "estimated_prompt_tokens": str(self.estimated_prompt),
        }
        if self.first_text_ms is not None:
            meta["first_text_ms"] = str(self.first_text_ms)
        if self.reply.regenerate:
            meta["regenerated"] = "true"
        for key, value in self.usage.items():
            meta[f"usage_{key}"] = str(value)
        return meta

    # Endings.

    def _finish_row(self, reply: Reply, status: str, finish: str, *, error: str = "", seq: int | None = None) -> None:
        reply.status = status
        reply.text = self.text
        reply.finish_reason = finish
        reply.error = error
        reply.message_seq = seq
        reply.tool_rounds = self.rounds
        reply.finished_at = timezone.now()
        reply.save(
            update_fields=["status", "text", "finish_reason", "error", "message_seq", "tool_rounds", "finished_at"]
        )

    def _store_answer(self, reply: Reply, finish: str) -> int:
        message = engine.message_append(self.sid, Role.ASSISTANT, _clean(self.text), metadata=self._metadata(finish))
        turn = Turn.objects.get(session_id=self.sid, number=self.reply.turn_number)
        if "reply_error" in turn.metadata:
            engine.turn_set_metadata(self.sid, turn.number, {"reply_error": None, "reply_error_at": None})
        return message.seq

    def _end_done(self, finish: str) -> None:
        def write(reply: Reply) -> None:
            seq = self._store_answer(reply, finish)
            self._finish_row(reply, Reply.Status.DONE, finish, seq=seq)
            events.emit(
                self.sid, events.REPLY, state="done", text=self.text, reply=reply.pk, turn=reply.turn_number, seq=seq
            )

        try:
            self._guarded(write)
        except _Lost:
            return
        except _Abandoned as exc:
            self._end_error(str(exc), annotate_turn=False)
        except engine.SessionError as exc:
            self._end_error(f"The reply could not be stored: {exc}", annotate_turn=False)

    def _end_stopped(self) -> None:
        def write(reply: Reply) -> None:
            seq = self._store_answer(reply, "stopped") if self.text else None
            self._finish_row(reply, Reply.Status.STOPPED, "stopped", seq=seq)
            events.emit(
                self.sid, events.REPLY, state="stopped", text=self.text, reply=reply.pk, turn=reply.turn_number, seq=seq
            )

        try:
            self._guarded(write)
        except _Lost:
            return
        except (_Abandoned, engine.SessionError):
            self._row_only(Reply.Status.STOPPED, "stopped", "", state="stopped")

    def _end_error(self, message: str, *, annotate_turn: bool = True) -> None:
        message = redact(message)
        logger.warning("Reply %s of session %s failed: %s", self.reply.pk, self.sid, message)

        def write(reply: Reply) -> None:
            engine.turn_set_metadata(self.sid, reply.turn_number, _turn_error(message, timezone.now()))
            self._finish_row(reply, Reply.Status.ERROR, "error", error=message)
            _emit_error(reply, self.text, message)

        if annotate_turn:
            try:
                self._guarded(write)
                return
            except _Lost:
                return
            except (_Abandoned, engine.SessionError):
                pass
        self._row_only(Reply.Status.ERROR, "error", message, state="error")

    def _row_only(self, status: str, finish: str, error: str, *, state: str) -> None:
        """End the row when the turn cannot be touched (session gone, conversation moved on)."""
        updated = Reply.objects.filter(pk=self.reply.pk, status=Reply.Status.RUNNING).update(
            status=status,
            text=self.text,
            finish_reason=finish,
            error=error,
            tool_rounds=self.rounds,
            finished_at=timezone.now(),
        )
        if updated:
            data = {"error": error} if error else {}
            events.emit(
                self.sid,
                events.REPLY,
                state=state,
                text=self.text,
                reply=self.reply.pk,
                turn=self.reply.turn_number,
                **data,
            )


def _clean(text: str) -> str:
    """Drop what the database cannot store from model output (NUL characters, lone surrogates)."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


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
                    for pk in Reply.objects.filter(pk__in=ids, stop_requested=True).values_list("pk", flat=True):
                        _cancel_local(pk)
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
