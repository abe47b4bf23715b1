"""Writing imported conversations: one transaction per conversation, numbered by the engine.

Each conversation becomes a new session of the importing user (an id the user already has gets a new
one: nothing is ever overwritten). Its messages are numbered by the engine's own bookkeeping
(``engine.bookkeeping.append_bookkeeping`` and ``enforce_limits``, what every append applies), with the
file's times. A Convo export also carries its list boundaries (``list``), which are restored after the
numbering was checked against the file, so that an export imported again exports the same content.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

from django.db import IntegrityError, transaction
from django.utils import timezone

from .. import engine, events
from ..engine.bookkeeping import append_bookkeeping, enforce_limits
from ..engine.sessions import owned_sessions, owner_pk
from ..engine.values import expiry_time
from ..models import ConversationSession, Message, Role, Turn
from .formats import ImportInvalid, Incoming, IncomingMessage

BATCH = 1000  # messages a bulk insert writes at once


@dataclass
class Imported:
    """One conversation an import created: its new id, and the id it asked for when that was taken."""

    session: ConversationSession
    requested_id: str | None
    messages: int

    @property
    def id(self) -> str:
        return self.session.sid

    @property
    def renamed(self) -> bool:
        return self.requested_id is not None and self.requested_id != self.session.sid


@engine.storage_errors
def import_conversations(incoming: Iterable[Incoming], *, owner, now: dt.datetime | None = None) -> list[Imported]:
    """Create a session for each conversation, each in its own transaction, and return them in order.

    Every conversation is checked before the first is written, so a bad file imports nothing. The
    sessions' keys are new; a branch imported with its parent points at the parent's new session.
    """
    now = now or timezone.now()
    conversations = list(incoming)
    for conversation in conversations:
        check(conversation)
    linker = ParentLinker(owner)
    created = []
    for conversation in conversations:
        created.append(linker.imported(conversation, import_conversation(conversation, owner=owner, now=now)))
    linker.finish()
    return created


class ParentLinker:
    """Lineage across one import: a branch points at its parent's new session, whichever of the two
    came first in the file; else at the owner's own session with the exported parent's key (the
    conversation it was branched from, still here); else at nothing."""

    def __init__(self, owner) -> None:
        self.owner = owner
        self.keys: dict[uuid.UUID, ConversationSession] = {}  # exported key → new session
        self.pending: list[tuple[ConversationSession, uuid.UUID]] = []

    def imported(self, conversation: Incoming, result: Imported) -> Imported:
        if conversation.key is not None:
            self.keys[conversation.key] = result.session
        if conversation.parent_key is not None:
            self.pending.append((result.session, conversation.parent_key))
        return result

    def finish(self) -> None:
        for session, parent_key in self.pending:
            parent = self.keys.get(parent_key) or owned_sessions(self.owner).filter(pk=parent_key).first()
            if parent is not None and parent.pk != session.pk:
                ConversationSession.objects.filter(pk=session.pk).update(parent=parent)
                session.parent = parent


def check(conversation: Incoming) -> None:
    """Raise ImportInvalid when the conversation's numbering or list does not hold (writes nothing)."""
    prepare(conversation, owner=None, now=timezone.now())


def import_conversation(conversation: Incoming, *, owner, now: dt.datetime) -> Imported:
    """Write one conversation in one transaction (all of it, or nothing); its parent is linked
    afterwards (``ParentLinker``)."""
    session, rows = prepare(conversation, owner=owner, now=now)
    if session.sid is None or id_taken(owner, session.sid):
        session.sid = engine.new_session_id()
    try:
        _write(session, rows, conversation)
    except IntegrityError:
        # Another writer took the id between the look and the insert (the unique constraint said so;
        # the transaction rolled back): never theirs to overwrite, so a new id.
        session.sid = engine.new_session_id()
        _write(session, rows, conversation)
    return Imported(session=session, requested_id=conversation.sid, messages=len(rows))


def id_taken(owner, sid: str) -> bool:
    return owned_sessions(owner).filter(sid=sid).exists()


def _write(session: ConversationSession, rows: list[Message], conversation: Incoming) -> None:
    with transaction.atomic():
        session.save(force_insert=True)
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            for row in batch:
                row.session = session
            Message.objects.bulk_create(batch)
        Turn.objects.bulk_create(
            [Turn(session=session, number=n, metadata=meta) for n, meta in sorted(conversation.turns.items()) if meta]
        )
        events.library_changed(session.owner_id)  # the owner's sidebar lists it (after the commit)


def prepare(conversation: Incoming, *, owner, now: dt.datetime) -> tuple[ConversationSession, list[Message]]:
    """The session and its messages, unsaved: numbered as the engine's appends number them (its own
    bookkeeping functions), a Convo export's numbers checked against that and its list restored."""
    config = conversation.config
    session = ConversationSession(
        sid=conversation.sid,
        owner_id=owner_pk(owner),
        title=conversation.title,
        pinned=conversation.pinned,
        archived=conversation.archived,
        system_prompt=conversation.system_prompt,
        variables=conversation.variables,
        data=conversation.data,
        metadata=conversation.metadata,
        max_messages=config.max_messages,
        max_tokens=config.max_tokens,
        timeout_seconds=config.timeout_seconds,
        persist_system_prompt=config.persist_system_prompt,
        created_at=conversation.created_at,
        updated_at=conversation.updated_at,
        # The import counts as the conversation's latest use for its expiry, so it is not expired (and
        # purged) on arrival; updated_at keeps the original last activity.
        expires_at=expiry_time(now, config.timeout_seconds),
        parent_seq=conversation.parent_seq,
        lineage=conversation.lineage,
    )
    messages = list(conversation.messages)
    if conversation.bounds is None and conversation.system_prompt is not None and config.persist_system_prompt:
        # Another tool's system prompt: the first message, pinned, as session_create makes it.
        when = messages[0].created_at if messages else conversation.created_at
        messages.insert(0, IncomingMessage(role=Role.SYSTEM, content=conversation.system_prompt, created_at=when))
    elif conversation.bounds is None and messages and messages[0].role == Role.SYSTEM:
        # Another tool's conversation opening with a system message: it is pinned (append_bookkeeping), and
        # it is the session's system prompt, as session_create would have made it.
        session.system_prompt = messages[0].content
    listed: deque[tuple[int, str, int]] = deque()  # the listed messages after the head: (seq, role, tokens)
    rows: list[Message] = []
    previous_seq = 0
    for index, incoming in enumerate(messages):
        where = f"messages[{index}]"
        row = Message(
            role=incoming.role,
            content=incoming.content,
            name=incoming.name,
            tool_call_id=incoming.tool_call_id,
            metadata=incoming.metadata,
            created_at=incoming.created_at,
            tokens=engine.estimate_tokens(incoming.content),
        )
        if incoming.seq is not None:
            if incoming.seq <= previous_seq:
                raise _invalid(conversation, f"{where}.seq", f"{incoming.seq} does not follow {previous_seq}")
            if incoming.seq > session.last_seq + 1:
                # Rows missing before this one: the session was cleared (clear_messages deletes every
                # message but the pinned head, and turns restart). The list is restored from the file.
                session.last_seq, session.low_seq, session.turn_count = incoming.seq - 1, incoming.seq, 0
                listed.clear()
            previous_seq = incoming.seq
        append_bookkeeping(session, row)
        if incoming.seq is not None and incoming.turn != row.turn_number:
            raise _invalid(
                conversation,
                f"{where}.turn",
                f"the engine numbers this {incoming.role} message's turn {row.turn_number}, the file says {incoming.turn}",
            )
        if row.seq != session.head_seq:
            listed.append((row.seq, row.role, row.tokens))
        excess = session.message_count - session.max_messages
        if excess > 0:
            enforce_limits(session, oldest=list(islice(listed, excess + 2)))
            while listed and listed[0][0] < session.low_seq:
                listed.popleft()
        rows.append(row)
    if conversation.bounds is not None:
        _restore_bounds(session, conversation, rows)
    return session, rows


def _restore_bounds(session: ConversationSession, conversation: Incoming, rows: list[Message]) -> None:
    """A Convo export's list, as it was stored: checked, then applied (total tokens recomputed)."""
    bounds = conversation.bounds
    by_seq = {row.seq: row for row in rows}
    top = rows[-1].seq if rows else 0
    if bounds.last_seq < top:
        raise _invalid(conversation, "list.last_seq", f"{bounds.last_seq} is below the newest message's seq ({top})")
    if bounds.low_seq > bounds.last_seq + 1:
        raise _invalid(conversation, "list.low_seq", f"must be at most last_seq + 1 ({bounds.last_seq + 1})")
    if bounds.head_seq is not None:
        head = by_seq.get(bounds.head_seq)
        if head is None or head.role != Role.SYSTEM:
            raise _invalid(conversation, "list.head_seq", f"{bounds.head_seq} is not the seq of a system message")
        if bounds.head_seq >= bounds.low_seq:
            raise _invalid(conversation, "list.head_seq", "must be below list.low_seq")
    if bounds.turn_count != session.turn_count:
        raise _invalid(
            conversation,
            "list.turn_count",
            f"the messages make {session.turn_count} turn(s) as the engine numbers them, the file says {bounds.turn_count}",
        )
    for number in conversation.turns:
        if number > session.turn_count:
            raise _invalid(conversation, "turns", f"turn {number} has no messages")
    session.last_seq, session.low_seq, session.head_seq = bounds.last_seq, bounds.low_seq, bounds.head_seq
    in_list = [row for row in rows if row.seq >= bounds.low_seq]
    session.total_tokens = sum(row.tokens for row in in_list) + (
        by_seq[bounds.head_seq].tokens if bounds.head_seq else 0
    )
    # A file edited to list more than max_messages is brought within it, as the engine would.
    excess = session.message_count - session.max_messages
    if excess > 0:
        enforce_limits(session, oldest=[(row.seq, row.role, row.tokens) for row in in_list[: excess + 2]])


def _invalid(conversation: Incoming, field: str, detail: str) -> ImportInvalid:
    return ImportInvalid(detail, conversation=conversation.label, field=field)
