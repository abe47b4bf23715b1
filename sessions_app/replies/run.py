"""The reply loop: ask the responder, run the tool rounds, store the answer or the failure.

``run_reply`` runs one reply (in the thread ``workers.launch`` started): it asks the responder with
the reply's context window (``reply_context_window``), streams the text as REPLY events, stores each
tool call as a tool message of the turn and asks again (at most CONVO_REPLY_MAX_TOOL_ROUNDS rounds
with tools offered), then appends the assistant message, which completes the turn. Every write
re-checks, under the session's lock, that the row is still running and the turn is still the one it
answers, so a reply never lands on a newer turn.

Fencing (``Lease``): another process marks the row interrupted once its heartbeat is
CONVO_REPLY_STALE_SECONDS old, so a thread that was paused (SIGSTOP, a frozen VM, CPU starvation, a cut
connection) may wake up without its row. Every progress write is conditional on the row still
running; one that touches no row ends the thread at once, and it sends nothing more. A REPLY event is
only sent while the lease is fresh (confirmed by a write less than half the stale window ago);
otherwise the thread confirms it with a write first.

Connections: the thread's database calls are retried on a fresh connection after a cut
(``dbconn.retry``, for at most half the stale window); when the database stays unreachable, the row
is ended with DB_LOST_MESSAGE (on a fresh connection), never left running.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from sessions_app import engine, events
from sessions_app.models import ConversationSession, Message, Reply, Role

from . import dbconn, titles, tools
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
    redact,
    wire_messages,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

CHANGED_MESSAGE = "The conversation changed while the assistant was replying, so the reply was dropped."
GONE_MESSAGE = "The session was deleted while the assistant was replying."
DB_LOST_MESSAGE = "The reply stopped because the database could not be reached. Try again."


class Lease:
    """A reply thread's hold on its running row.

    Confirmed by every write that found the row running (the watcher's heartbeat, the thread's own
    saves); held for half of CONVO_REPLY_STALE_SECONDS after that (the rest is margin: no other
    process marks the row before its heartbeat is that old). Lost when a write touches no row or the
    row is seen ended: the thread then stops and sends nothing more. ``text`` is the text so far (what
    a shutdown keeps in the row).
    """

    def __init__(self) -> None:
        self.confirmed_at = time.monotonic()
        self.text = ""
        self._lost = threading.Event()

    def confirm(self, at: float) -> None:
        """A write that started at monotonic time ``at`` found the row running."""
        if at > self.confirmed_at:
            self.confirmed_at = at

    def lose(self) -> None:
        self._lost.set()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def fresh(self) -> bool:
        return not self.lost and time.monotonic() - self.confirmed_at < settings.CONVO_REPLY_STALE_SECONDS / 2

    def wait_lost(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True at once when the lease is lost meanwhile."""
        return self._lost.wait(timeout)


def db_retry_budget(*, ending: bool = False) -> float:
    """How long a reply thread retries a database call on new connections before it gives up: half the
    stale window for a step of the reply; twice the window to record its end after that (until then,
    no other process can mark it either, and one that does wins: the end is fenced like every write)."""
    stale = settings.CONVO_REPLY_STALE_SECONDS
    return max(2.0, 2 * stale) if ending else max(1.0, stale / 2)


def run_reply(reply: Reply, handle: CancelHandle, responder: Responder, lease: Lease | None = None) -> None:
    """Run ``reply`` to its end (done, stopped, error); ``handle`` is how Stop reaches it, ``lease``
    how the watcher tells it that the row is no longer its own."""
    _Run(reply, handle, responder, lease or Lease()).run()


# ---------------------------------------------------------------------------------------------
# What a reply sends.


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
    context endpoint, so what they show is what is sent.

    Left out before the budget is counted: a regenerated reply's earlier responses, and the
    responses a stored choice did not pick (``engine.unchosen_responses``; none stored: the spec's
    window)."""
    if reply is None:
        reply = Reply.objects.filter(session_id=session.pk, status=Reply.Status.RUNNING).first()
    exclude = engine.unchosen_responses(session)
    if reply is not None:
        exclude.update(earlier_responses(reply))
    return engine.context_window(session, max_tokens, exclude_seqs=exclude)


def _max_rounds() -> int:
    value = settings.CONVO_REPLY_MAX_TOOL_ROUNDS
    return 5 if value is None else max(0, value)  # "none" in the environment: the default


# ---------------------------------------------------------------------------------------------
# What a failed reply leaves (also used by recovery, for interrupted replies).


def mark_turn_error(reply: Reply, message: str, now: dt.datetime) -> None:
    """Record a failed reply in its turn's metadata, if that turn is still the one it answered."""
    if engine.turn_user_seq(reply.session_id, reply.turn_number) != reply.user_seq:
        return
    with contextlib.suppress(engine.SessionError):  # deleted or expired meanwhile: nothing to annotate
        engine.turn_set_metadata(reply.session_id, reply.turn_number, _turn_error(message, now), now=now)


def _turn_error(message: str, now: dt.datetime) -> dict[str, str]:
    """What a failed reply leaves in its turn's metadata (cleared when a later reply succeeds)."""
    return {"reply_error": message, "reply_error_at": now.isoformat(timespec="seconds")}


def emit_error(reply: Reply, text: str, message: str) -> None:
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
    def __init__(self, reply: Reply, handle: CancelHandle, responder: Responder, lease: Lease) -> None:
        self.reply = reply
        self.sid = reply.session_id
        self.handle = handle
        self.responder = responder
        self.lease = lease
        self.outage = dbconn.Outage(f"Reply {reply.pk}")
        self.ending_after_outage = False  # the database was lost: retry the end for longer
        self.text = ""
        self.rounds = 0
        self.usage: dict[str, int] = {}
        self.estimated_prompt = 0
        self.started = time.monotonic()
        self.first_text_ms: int | None = None
        self.first_text_at: dt.datetime | None = None
        # What the reply inspector shows (Reply.usage): the budget and estimate of the first request,
        # the seqs of each later (tool round) request, then the provider's usage and the timings.
        self.inspect: dict = {}
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
        except Exception as exc:
            if self.lease.lost:
                return None
            if dbconn.is_connection_error(exc):  # retried on new connections for db_retry_budget()
                return self._end_lost()
            if isinstance(exc, engine.SessionError):
                return self._end_error(f"The reply could not be stored: {exc}")
            if self.handle.is_cancelled:
                return self._end_stopped()
            logger.error("Reply %s failed: %s", self.reply.pk, redact(traceback.format_exc()))
            return self._end_error("The reply failed because of an internal error.")
        self._end_done(finish)
        if titles.wanted(self.reply, self.responder):
            try:
                titles.title_from_model(self.reply, self.responder, self.text)
            except Exception:  # the reply is stored: a title failure must not touch it
                logger.error("Title of reply %s failed: %s", self.reply.pk, redact(traceback.format_exc()))

    def _db(self, action: Callable[[], T]) -> T:
        """Run a database call, again on a fresh connection after a cut (bounded; see dbconn.retry).
        Stops retrying at once when the lease is lost."""
        try:
            return dbconn.retry(
                action,
                who=f"Reply {self.reply.pk}",
                budget=db_retry_budget(ending=self.ending_after_outage),
                outage=self.outage,
                wait=self.lease.wait_lost,
            )
        finally:
            dbconn.release()  # back to the pool while the model talks

    def _save(self) -> None:
        """Save the text so far and the heartbeat, fenced by the row still running: a save that touches
        no row loses the lease and ends the thread (_Lost) without another event."""
        if self.lease.lost:
            raise _Lost
        started = time.monotonic()
        self._last_save = started
        updated = self._db(
            lambda: Reply.objects.filter(pk=self.reply.pk, status=Reply.Status.RUNNING).update(
                text=self.text, heartbeat_at=timezone.now()
            )
        )
        if not updated:
            self.lease.lose()
            raise _Lost
        self.lease.confirm(started)

    def _converse(self) -> str:
        max_rounds = _max_rounds()
        while True:  # one pass per model call; tool rounds are bounded by max_rounds
            allowed = self.rounds < max_rounds
            request = self._db(lambda allowed=allowed: self._request(tools_allowed=allowed))
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
        self._record_sent(messages, window)
        return ProviderRequest(
            messages=wire_messages(messages),
            tools=tools.definitions() if tools_allowed else None,
            context=ContextInfo(
                message_count=len(messages),
                tokens=self.estimated_prompt,
                turn_number=self.reply.turn_number,
                max_tokens=window.max_tokens,
            ),
            session_id=session.sid,
        )

    def _record_sent(self, messages: list[Message], window: engine.ContextWindow) -> None:
        """Keep with the reply exactly which messages its requests sent (the reply inspector): the first
        request's seqs in Reply.sent_seqs as the reply starts, a tool round's in usage["round_seqs"].
        Messages do not change, except the system prompt (edited in place): its text as sent is kept."""
        seqs = [m.seq for m in messages]
        if self.rounds == 0:  # the first request (again, when a cut connection retried it)
            self.reply.sent_seqs = seqs
            self.inspect = {"budget": window.max_tokens, "estimated_prompt_tokens": window.total_tokens}
            if messages and messages[0].role == Role.SYSTEM:
                self.inspect["system_prompt"] = {"seq": messages[0].seq, "content": messages[0].content}
            Reply.objects.filter(pk=self.reply.pk, status=Reply.Status.RUNNING).update(
                sent_seqs=seqs, usage=self.inspect
            )
        else:
            rounds = self.inspect.setdefault("round_seqs", [])
            del rounds[self.rounds - 1 :]  # a retried request replaces its own entry
            rounds.append(seqs)

    def _inspector_usage(self) -> dict:
        """Reply.usage at the end: the first request's budget and estimate, later rounds' seqs, the
        provider's reported usage, the tool rounds and the timings."""
        usage = dict(self.inspect)
        usage.update(
            provider=dict(self.usage),
            tool_rounds=self.rounds,
            latency_ms=self._elapsed_ms(),
        )
        if self.first_text_ms is not None:
            usage["first_text_ms"] = self.first_text_ms
        return usage

    def _check_turn(self, session: ConversationSession) -> None:
        if (
            session.turn_count != self.reply.turn_number
            or engine.turn_user_seq(self.sid, self.reply.turn_number) != self.reply.user_seq
        ):
            raise _Abandoned(CHANGED_MESSAGE)

    def _progress(self) -> None:
        if self.first_text_ms is None:
            self.first_text_ms = self._elapsed_ms()
            self.first_text_at = timezone.now()
        self.lease.text = self.text
        now = time.monotonic()
        if now - self._last_save >= settings.CONVO_REPLY_SAVE_INTERVAL or not self.lease.fresh():
            self._save()  # before the event: an event only goes out while the lease holds
        if now - self._last_event >= settings.CONVO_REPLY_EVENT_INTERVAL:
            self._last_event = now
            events.emit(
                self.sid, events.REPLY, state="delta", text=self.text, reply=self.reply.pk, turn=self.reply.turn_number
            )

    def _run_tools(self, calls: list[ToolCall], round_text: str) -> None:
        context = tools.ToolContext(session_id=self.sid)
        for i, call in enumerate(calls):
            if self.handle.is_cancelled:
                raise _Stopped
            result = self._db(lambda call=call: tools.run(call.name, call.arguments, context))
            metadata = {
                "reply": str(self.reply.pk),
                "tool_round": f"{self.reply.pk}:{self.rounds}",
                "arguments": _clean(call.arguments, _metadata_chars()),
                "status": "ok" if result.ok else "error",
            }
            if i == 0 and round_text:
                metadata["assistant_content"] = _clean(round_text, _metadata_chars())
            self._guarded(
                lambda reply, call=call, result=result, metadata=metadata: engine.message_append(
                    self.sid,
                    Role.TOOL,
                    _clean(result.content, settings.CONVO_MAX_CONTENT_CHARS),
                    name=_clean(call.name, settings.CONVO_MAX_NAME_CHARS),
                    tool_call_id=_clean(call.id, settings.CONVO_MAX_NAME_CHARS),
                    metadata=metadata,
                )
            )
        updated = self._db(
            lambda: Reply.objects.filter(pk=self.reply.pk, status=Reply.Status.RUNNING).update(tool_rounds=self.rounds)
        )
        if not updated:
            self.lease.lose()
            raise _Lost

    def _guarded(self, write: Callable[[Reply], T]) -> T:
        """Run ``write`` holding the session's row lock and the reply's, once both are checked (again
        on a fresh connection after a cut: the running check makes a committed write not happen twice)."""

        def attempt() -> T:
            if self.lease.lost:
                raise _Lost
            with transaction.atomic():
                session = ConversationSession.objects.select_for_update().filter(pk=self.sid).first()
                if session is None:
                    raise _Abandoned(GONE_MESSAGE)
                reply = Reply.objects.select_for_update().filter(pk=self.reply.pk).first()
                if reply is None:
                    raise _Abandoned(GONE_MESSAGE)
                if not reply.is_running:
                    self.lease.lose()
                    raise _Lost
                self._check_turn(session)
                return write(reply)

        return self._db(attempt)

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
        reply.usage = self._inspector_usage()
        reply.first_token_at = self.first_text_at
        reply.save(
            update_fields=[
                "status", "text", "finish_reason", "error", "message_seq", "tool_rounds", "finished_at",
                "usage", "first_token_at",
            ]
        )  # fmt: skip

    def _store_answer(self, reply: Reply, finish: str) -> int:
        text = _clean(self.text, settings.CONVO_MAX_CONTENT_CHARS)
        message = engine.message_append(self.sid, Role.ASSISTANT, text, metadata=self._metadata(finish))
        if "reply_error" in engine.turn_metadata(self.sid, self.reply.turn_number):
            engine.turn_set_metadata(self.sid, self.reply.turn_number, {"reply_error": None, "reply_error_at": None})
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
        except Exception as exc:
            if dbconn.is_connection_error(exc):
                self._end_lost()
            elif isinstance(exc, engine.SessionError):
                self._end_error(f"The reply could not be stored: {exc}", annotate_turn=False)
            else:
                raise

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
        except Exception as exc:
            if not isinstance(exc, _Abandoned | engine.SessionError) and not dbconn.is_connection_error(exc):
                raise
            self._row_only(Reply.Status.STOPPED, "stopped", "", state="stopped")

    def _end_lost(self) -> None:
        """The database stayed unreachable for longer than a step may wait: end the row with that
        reason, on a fresh connection, as soon as the database is back (bounded)."""
        self.ending_after_outage = True
        self._end_error(DB_LOST_MESSAGE)

    def _end_error(self, message: str, *, annotate_turn: bool = True) -> None:
        if self.lease.lost:
            return
        message = redact(message)
        logger.warning("Reply %s of session %s failed: %s", self.reply.pk, self.sid, message)

        def write(reply: Reply) -> None:
            engine.turn_set_metadata(self.sid, reply.turn_number, _turn_error(message, timezone.now()))
            self._finish_row(reply, Reply.Status.ERROR, "error", error=message)
            emit_error(reply, self.text, message)

        if annotate_turn:
            try:
                self._guarded(write)
                return
            except _Lost:
                return
            except (_Abandoned, engine.SessionError) as exc:
                if dbconn.is_connection_error(exc):
                    raise  # still unreachable: the row cannot be ended now (the stale sweep will)
        self._row_only(Reply.Status.ERROR, "error", message, state="error")

    def _row_only(self, status: str, finish: str, error: str, *, state: str) -> None:
        """End the row when the turn cannot be touched (session gone, conversation moved on)."""
        if self.lease.lost:
            return
        updated = self._db(
            lambda: Reply.objects.filter(pk=self.reply.pk, status=Reply.Status.RUNNING).update(
                status=status,
                text=self.text,
                finish_reason=finish,
                error=error,
                tool_rounds=self.rounds,
                finished_at=timezone.now(),
                usage=self._inspector_usage(),
                first_token_at=self.first_text_at,
            )
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


def _metadata_chars() -> int:
    # Two long values (a tool call's arguments, the text before it) must fit the metadata limit together,
    # at up to 4 UTF-8 bytes a character.
    return settings.CONVO_MAX_METADATA_BYTES // 10


def _clean(text: str, limit: int) -> str:
    """Model output as the engine stores it: without what the database cannot store (NUL characters,
    lone surrogates), and cut at ``limit`` characters (the engine's input limits apply to it too)."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")[:limit]
