"""The reply service: start, append-and-reply, stop, and read replies; the errors it raises.

Life of a reply: ``start_reply`` checks the last turn and inserts a running ``Reply`` row under the
session's row lock (a partial unique constraint makes a second running reply impossible); after the
commit ``workers.launch`` runs it in a daemon thread (the loop itself is ``run.py``). Stop sets the
row's flag, which the process running the reply polls (``workers.py``); every check for a running
reply first marks a dead process's reply interrupted (``workers.recover_stale_replies``). What a
reply sends (``reply_context_window``) is in ``run.py``, next to the request it builds.

Resume: ``sweep`` (every serving process runs it periodically) marks dead processes' replies and
starts, once, a new reply for each reply interrupted by a process death or a shutdown
(``resume_interrupted``; CONVO_REPLY_AUTO_RETRY). The new row points at the old one
(``resumed_from``), whose partial text stays in its record; a resume is never resumed itself.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from functools import partial

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from sessions_app import engine, events
from sessions_app.models import ConversationSession, Message, Reply, Role

from . import workers
from .responders import get_responder


class ReplyError(Exception):
    """Base of the errors the reply service raises on purpose."""


class ReplyInProgress(ReplyError):
    """The session already has a running reply (UI: a clear message; API: HTTP 409)."""

    def __init__(self, session_key: uuid.UUID, reply_id: int | None = None) -> None:
        super().__init__("The assistant is still replying in this conversation: wait for it or stop it first.")
        self.session_key = session_key
        self.reply_id = reply_id


class NothingToReply(ReplyError):
    """There is no open turn to answer (no message yet, or the last one is answered: regenerate it)."""


class TooManyReplies(ReplyError):
    """The owner already has CONVO_MAX_CONCURRENT_REPLIES replies running (UI: a message; API: 409)."""


# ---------------------------------------------------------------------------------------------
# The service API.


@engine.storage_errors
def start_reply(
    session_id: str, *, owner: engine.Owner = engine.ANY_OWNER, regenerate: bool = False, now: dt.datetime | None = None
) -> Reply:
    """Start the assistant's reply to the session's last turn in a background thread; return its row.

    Without ``regenerate`` the last turn must be open (a new message, or a failed/stopped reply to
    retry); with it, the last turn is answered again even if complete, its earlier responses left
    out of the context (they stay in the message list). Raises ReplyInProgress, NothingToReply,
    the engine's SessionNotFound / SessionExpired, or ImproperlyConfigured for bad settings.
    """
    now = now or timezone.now()
    key = engine.session_get(session_id, owner=owner).pk
    workers.recover_stale_replies(session_id=key, now=now)
    with transaction.atomic():
        session = engine.lock_session(key, owner, now)
        return _begin(session, regenerate=regenerate)


@engine.storage_errors
def append_and_reply(
    session_id: str,
    content: str,
    *,
    owner: engine.Owner = engine.ANY_OWNER,
    name: str | None = None,
    metadata: dict[str, str] | None = None,
    now: dt.datetime | None = None,
) -> tuple[Message, Reply]:
    """Append a user message and start the reply to it, atomically: while a reply runs, the message is
    refused (ReplyInProgress) and nothing is stored. Raises what message_append and start_reply raise."""
    now = now or timezone.now()
    key = engine.session_get(session_id, owner=owner).pk
    workers.recover_stale_replies(session_id=key, now=now)
    with transaction.atomic():
        engine.lock_session(key, owner, now)
        _refuse_if_running(key)
        message = engine.message_append(key, Role.USER, content, name=name, metadata=metadata, owner=owner, now=now)
        session = engine.lock_session(key, owner, now)  # re-read: the append moved the bookkeeping
        return message, _begin(session, regenerate=False)


@engine.storage_errors
def edit_and_reply(
    session_id: engine.SessionRef,
    seq: int,
    content: str,
    *,
    owner: engine.Owner = engine.ANY_OWNER,
    now: dt.datetime | None = None,
) -> tuple[ConversationSession, Message, Reply]:
    """Edit user message ``seq`` as chat tools do: a branch with everything before it (lineage "edit"),
    the edited text appended there, and the reply to it started. One transaction: when the text or
    the reply is refused, no branch is left behind."""
    with transaction.atomic():
        branch = engine.session_edit_branch(session_id, seq, owner=owner, now=now)
        message, reply = append_and_reply(branch.pk, content, owner=owner, now=now)
    return engine.session_get(branch.pk), message, reply


@engine.storage_errors
def stop_reply(session_id: str, *, owner: engine.Owner = engine.ANY_OWNER) -> bool:
    """Ask the session's running reply to stop; return whether one was running.

    Works from any process: the stop flag is set on the row (the running process polls it) and, when
    the reply runs here, its provider call is cancelled at once. The reply then stores its partial
    text with finish reason "stopped" (nothing when no text had arrived); ``wait_reply`` waits for it.
    """
    key = engine.session_get(session_id, owner=owner).pk
    workers.recover_stale_replies(session_id=key)  # a dead process's reply cannot stop: it is interrupted
    ids = list(Reply.objects.filter(session_id=key, status=Reply.Status.RUNNING).values_list("pk", flat=True))
    if not ids:
        return False
    Reply.objects.filter(pk__in=ids, status=Reply.Status.RUNNING).update(stop_requested=True)
    for pk in ids:
        workers.cancel_local(pk)
    return True


@engine.storage_errors
def running_reply(session: ConversationSession | engine.SessionRef) -> Reply | None:
    """The session's running reply, if any (after marking a dead process's reply interrupted).

    Its ``text`` is the text so far as of the last save (at most about a second old); the REPLY
    events that follow carry the whole text, so a page reloaded mid-reply shows it and catches up.
    """
    key = _key(session)
    reply = Reply.objects.filter(session_id=key, status=Reply.Status.RUNNING).first()
    if reply is not None and workers.may_be_stale(reply):
        workers.recover_stale_replies(session_id=key)
        reply = Reply.objects.filter(session_id=key, status=Reply.Status.RUNNING).first()
    return reply


@engine.storage_errors
def latest_reply(session: ConversationSession | engine.SessionRef) -> Reply | None:
    """The session's most recent reply in any state (e.g. to show why the last one failed)."""
    key = _key(session)
    workers.recover_stale_replies(session_id=key)
    return Reply.objects.filter(session_id=key).order_by("-started_at", "-pk").first()


@engine.storage_errors
def reply_for_answer(session: ConversationSession, seq: int) -> Reply | None:
    """The reply that stored the assistant message ``seq`` (the reply inspector's subject), if any."""
    return Reply.objects.filter(session_id=session.pk, message_seq=seq).order_by("-started_at", "-pk").first()


def _key(session: ConversationSession | engine.SessionRef) -> uuid.UUID:
    """A session's key; an id alone is looked up for any owner (operators and tests)."""
    if isinstance(session, ConversationSession):
        return session.pk
    return session if isinstance(session, uuid.UUID) else engine.session_get(session).pk


def wait_reply(reply_id: int, timeout: float = 30.0) -> Reply:
    """Wait until a reply is no longer running (or ``timeout`` seconds passed); return its row."""
    deadline = time.monotonic() + timeout
    workers.join_local(reply_id, timeout)
    reply = Reply.objects.get(pk=reply_id)
    while reply.is_running and time.monotonic() < deadline:  # run by another process: poll its row
        time.sleep(0.05)
        reply.refresh_from_db()
    return reply


# ---------------------------------------------------------------------------------------------
# Starting.


def _refuse_if_running(key: uuid.UUID) -> None:
    running = Reply.objects.filter(session_id=key, status=Reply.Status.RUNNING).values_list("pk", flat=True).first()
    if running is not None:
        raise ReplyInProgress(key, running)


def _refuse_if_too_many(session: ConversationSession) -> None:
    """Refuse a reply past the owner's CONVO_MAX_CONCURRENT_REPLIES running ones (ownerless
    sessions, the operators', have no cap). The owner's user row is locked first, so that two
    starts at once in different sessions cannot both pass the count (PostgreSQL; SQLite
    serializes writers anyway). Replies whose process stopped beating are not counted."""
    limit = settings.CONVO_MAX_CONCURRENT_REPLIES
    if limit is None or session.owner_id is None:
        return
    get_user_model().objects.select_for_update().filter(pk=session.owner_id).values_list("pk").first()
    alive = timezone.now() - dt.timedelta(seconds=settings.CONVO_REPLY_STALE_SECONDS)
    running = Reply.objects.filter(
        session__owner_id=session.owner_id, status=Reply.Status.RUNNING, heartbeat_at__gte=alive
    ).count()
    if running >= limit:
        raise TooManyReplies(
            f"You already have {running} replies running (at most {limit} at once): "
            "wait for one to finish or stop it, then try again."
        )


def _begin(session: ConversationSession, *, regenerate: bool) -> Reply:
    """Insert the running row and queue the thread. Call holding the session's row lock."""
    _refuse_if_running(session.pk)
    _refuse_if_too_many(session)
    turn = engine.last_turn(session)
    if turn is None:
        raise NothingToReply("There is no message to reply to yet: send one first.")
    if turn.is_complete and not regenerate:
        raise NothingToReply("The last message already has a reply: regenerate it to get another one.")
    return _create(session, turn, base_seq=session.last_seq, regenerate=regenerate)


def _create(
    session: ConversationSession,
    turn: engine.TurnView,
    *,
    base_seq: int,
    regenerate: bool,
    resumed_from: Reply | None = None,
) -> Reply:
    """Insert the running row, announce it, and launch its thread after the commit."""
    responder = get_responder()
    try:
        with transaction.atomic():
            reply = Reply.objects.create(
                session=session,
                turn_number=turn.number,
                user_seq=turn.user_message.seq,
                base_seq=base_seq,
                regenerate=regenerate,
                responder=responder.name,
                model=responder.model,
                resumed_from=resumed_from,
                worker=workers.worker_id(),
                # The real clock, whatever ``now`` the caller passed: liveness is about this process.
                heartbeat_at=timezone.now(),
                started_at=timezone.now(),
            )
    except IntegrityError:
        raise ReplyInProgress(session.pk) from None
    extra = {"resumed_from": resumed_from.pk} if resumed_from is not None else {}
    events.emit(session.pk, events.REPLY, state="started", text="", reply=reply.pk, turn=turn.number, **extra)
    transaction.on_commit(partial(workers.launch, reply.pk, workers.serving_loop(), responder, session.pk))
    return reply


# ---------------------------------------------------------------------------------------------
# The periodic sweep: dead processes' replies marked, and resumed once.


def resume_window() -> dt.timedelta:
    """How long after its interruption a reply is still resumed (a process that comes back after a
    longer downtime does not answer old questions by itself)."""
    return dt.timedelta(seconds=max(60.0, 4 * settings.CONVO_REPLY_STALE_SECONDS))


def sweep(*, now: dt.datetime | None = None) -> tuple[int, list[Reply]]:
    """Mark dead processes' replies interrupted, then resume the interrupted ones (when
    CONVO_REPLY_AUTO_RETRY is on); return (how many were marked, the replies started)."""
    marked = workers.recover_stale_replies(now=now)
    return marked, resume_interrupted(now=now)


def resume_interrupted(*, now: dt.datetime | None = None, limit: int = 100) -> list[Reply]:
    """Start a new reply for each reply interrupted by a process death or a shutdown within
    ``resume_window()``, that is not a resume itself and was not resumed yet, when its turn is still
    the session's last one and nothing else runs there; return the replies started.

    Race-free across processes: each resume is decided under the session's row lock, re-checking that
    no reply points at the interrupted one; the one-running-reply constraint backs that up.
    """
    if not workers.auto_retry() or workers.closing():
        return []
    now = now or timezone.now()
    candidates = (
        Reply.objects.filter(
            status=Reply.Status.INTERRUPTED,
            finish_reason="interrupted",
            resumed_from__isnull=True,
            finished_at__gte=now - resume_window(),
        )
        .exclude(Exists(Reply.objects.filter(resumed_from=OuterRef("pk"))))
        .order_by("finished_at", "pk")
    )
    started = []
    for old in candidates[:limit]:
        try:
            reply = _resume(old, now)
        except (ReplyError, engine.SessionError):
            continue  # the session moved on, expired or went away, or a reply runs there already
        if reply is not None:
            started.append(reply)
    return started


def _resume(old: Reply, now: dt.datetime) -> Reply | None:
    with transaction.atomic():
        session = engine.lock_session(old.session_id, engine.ANY_OWNER, now)
        if Reply.objects.filter(resumed_from=old).exists():
            return None  # another process resumed it first
        if Reply.objects.filter(session_id=session.pk, status=Reply.Status.RUNNING).exists():
            return None
        turn = engine.last_turn(session)
        if turn is None or turn.number != old.turn_number or turn.user_message.seq != old.user_seq:
            return None  # the conversation moved on (a new message, a clear)
        if turn.is_complete and not old.regenerate:
            return None  # answered meanwhile
        # The same earlier responses left out as the interrupted reply did; the tool results it
        # stored are part of the context, so the model goes on from them.
        reply = _create(session, turn, base_seq=old.base_seq, regenerate=old.regenerate, resumed_from=old)
    workers.logger.warning("Reply %s of session %s resumed as reply %s", old.pk, old.session_id, reply.pk)
    return reply
