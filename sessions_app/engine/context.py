"""Reading: the message list and its pages, the context window (the only one), and turns."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import QuerySet

from ..models import ConversationSession, Message, Role, Turn
from .errors import storage_errors
from .purge import db_key


def listed_messages(session: ConversationSession) -> QuerySet[Message]:
    """The session's message list (the spec's ``messages``) as a queryset in order."""
    return Message.objects.filter(session=session).filter(session.in_list_q()).order_by("seq")


@storage_errors
def messages_all(session: ConversationSession) -> list[Message]:
    """The spec's get_all_messages."""
    return list(listed_messages(session))


@storage_errors
def messages_recent(session: ConversationSession, n: int) -> list[Message]:
    """The spec's get_recent(n): the last n messages of the list, in order."""
    if n <= 0:
        return []
    newest = list(Message.objects.filter(session=session, seq__gte=session.low_seq).order_by("-seq")[:n])
    if len(newest) < n and session.head_seq is not None:
        newest.append(Message.objects.get(session=session, seq=session.head_seq))
    newest.reverse()
    return newest


@storage_errors
def messages_by_role(session: ConversationSession, role: str) -> list[Message]:
    """The spec's get_by_role."""
    return list(listed_messages(session).filter(role=role))


@storage_errors
def messages_with_seqs(session: ConversationSession, seqs: Iterable[int]) -> dict[int, Message]:
    """The session's stored messages with these sequence numbers, listed or not (a reply's sent
    messages, a message to copy), by seq; a seq whose message is gone (cleared) is missing."""
    wanted = sorted({int(s) for s in seqs})
    if not wanted:
        return {}
    return {m.seq: m for m in Message.objects.filter(session=session, seq__in=wanted).order_by("seq")}


@storage_errors
def messages_page(
    session: ConversationSession,
    *,
    after: int = 0,
    before: int | None = None,
    limit: int = 50,
    newest: bool = False,
    history: bool = False,
) -> list[Message]:
    """A page of the message list in order: the first ``limit`` after ``after``, or (``newest``) the last
    ``limit`` before ``before``. An index range scan whatever the session's length.

    ``history``: a page of the conversation's whole history instead, the messages that left the list
    (``max_messages``) included: every stored message (see ``models``: rows are kept)."""
    base = Message.objects.filter(session=session).order_by("seq") if history else listed_messages(session)
    qs = base.filter(seq__gt=after)
    if before is not None:
        qs = qs.filter(seq__lt=before)
    if newest:
        page = list(qs.order_by("-seq")[:limit])
        page.reverse()
        return page
    return list(qs[:limit])


def in_list(session: ConversationSession, seq: int) -> bool:
    """Whether the message ``seq`` is in the session's list (the rest of the history is not sent)."""
    return seq >= session.low_seq or seq == session.head_seq


@storage_errors
def history_count(session: ConversationSession) -> int:
    """How many messages the conversation's history holds (the list's and those that left it)."""
    return Message.objects.filter(session=session).count()


@storage_errors
def has_unlisted_history(session: ConversationSession) -> bool:
    """Whether some stored messages are no longer in the session's list (they left it past max_messages)."""
    qs = Message.objects.filter(session=session, seq__lt=session.low_seq)
    if session.head_seq is not None:
        qs = qs.exclude(seq=session.head_seq)
    return qs.exists()


@dataclass
class MessagesAround:
    """A window of a conversation's whole history around one sequence number."""

    messages: list[Message]
    has_earlier: bool  # older messages exist before the window
    has_later: bool  # newer messages exist after the window


@storage_errors
def messages_around(session: ConversationSession, seq: int, *, before: int = 25, after: int = 25) -> MessagesAround:
    """Up to ``before`` messages before ``seq``, the message ``seq`` and up to ``after`` after it, in order,
    from the whole history (messages that left the session's list too: a search result may be one).
    Two index range scans on (session, seq), whatever the conversation's length."""
    older = list(Message.objects.filter(session=session, seq__lt=seq).order_by("-seq")[: before + 1])
    newer = list(Message.objects.filter(session=session, seq__gte=seq).order_by("seq")[: after + 2])
    has_earlier, has_later = len(older) > before, len(newer) > after + 1
    older = older[:before]
    older.reverse()
    return MessagesAround(older + newer[: after + 1], has_earlier, has_later)


@dataclass
class ContextWindow:
    messages: list[Message]
    max_tokens: int
    total_tokens: int
    # The sequence number of the newest listed message that did not fit (None when nothing was cut).
    cut_before_seq: int | None


@storage_errors
def context_window(
    session: ConversationSession, max_tokens: int | None = None, *, exclude_seqs: Iterable[int] = ()
) -> ContextWindow:
    """The spec's get_context, with the numbers around it.

    ``exclude_seqs``: listed messages left out before the budget is counted (a regenerated reply does
    not send the turn's earlier responses, and they take no room in the budget).

    The first listed message is pinned when it is a system message, even over budget; then the
    listed messages from newest to oldest, later system messages skipped, stopping at the first that
    does not fit; returned in chronological order. Usually one query: the pinned message and the
    newest rows, as many as the session's average message size says will fill the budget (plus a
    margin); a further, larger chunk only when those all fit. The cost follows the window, not the
    session.
    """
    budget = session.max_tokens if max_tokens is None else max_tokens
    excluded = frozenset(exclude_seqs)
    head = None
    used = 0
    chosen: list[Message] = []
    cut = None
    upper = None  # the next chunk starts below this sequence number
    # Rows to read at first: what should fill the budget at the session's average size, plus a margin.
    average = session.total_tokens / session.message_count if session.message_count else 1
    chunk = int(max(budget, 0) / max(average, 1) * 1.25) + 8
    head_seq = session.head_seq
    while True:
        # Every message costs at least one token: more than what is left plus one never fit.
        limit = min(chunk, max(budget - used, 0) + 1)
        rows = _context_rows(session, head_seq, upper, limit)
        if head_seq is not None:
            head = next((m for m in rows if m.seq == head_seq), None)
            rows = [m for m in rows if m.seq != head_seq]
            if head is not None:
                used = head.tokens
            head_seq = None  # read once
        rows.sort(key=lambda m: m.seq, reverse=True)
        for message in rows:
            if message.seq in excluded:
                continue
            if used + message.tokens > budget:
                cut = message.seq
                break
            used += message.tokens
            chosen.append(message)
        if cut is not None or len(rows) < limit:
            break
        upper = rows[-1].seq
        chunk *= 4
    chosen.reverse()
    if head is not None:
        chosen.insert(0, head)
    return ContextWindow(messages=chosen, max_tokens=budget, total_tokens=used, cut_before_seq=cut)


def _message_columns() -> str:
    """The message model's columns, for raw reads: not ``*``, which on PostgreSQL would also carry the
    search column (``search_vector``, a tsvector as long as the text) to Python for nothing."""
    return ", ".join(field.column for field in Message._meta.concrete_fields)


def _context_rows(session: ConversationSession, head_seq: int | None, upper: int | None, limit: int) -> list[Message]:
    """The pinned message (when ``head_seq``) and the newest ``limit`` listed non-system messages below
    ``upper``, in one query."""
    table, columns = Message._meta.db_table, _message_columns()
    newest = f"SELECT {columns} FROM {table} WHERE session_id = %s AND seq >= %s AND role <> %s"
    key = db_key(session.pk)
    params: list[Any] = [key, session.low_seq, Role.SYSTEM.value]
    if upper is not None:
        newest += " AND seq < %s"
        params.append(upper)
    sql = f"SELECT * FROM ({newest} ORDER BY seq DESC LIMIT %s) AS newest"
    params.append(limit)
    if head_seq is not None:
        sql = f"SELECT {columns} FROM {table} WHERE session_id = %s AND seq = %s UNION ALL {sql}"
        params = [key, head_seq, *params]
    return list(Message.objects.raw(sql, params))


def get_context(session: ConversationSession, max_tokens: int | None = None) -> list[Message]:
    """Exactly the spec's get_context: the messages only."""
    return context_window(session, max_tokens).messages


def current_turn(session: ConversationSession) -> int:
    return session.turn_count


@dataclass(eq=False)
class TurnView:
    """A turn (the spec's Turn), read from its messages: the user message that opened it, the tool
    messages attached to it, and the newest assistant message that completed it (an earlier response
    the spec's complete() replaced stays in the list, not in the turn). Its times are those messages'
    times; ``metadata`` is the one stored part (a ``models.Turn`` row, written only when set)."""

    session_id: str
    number: int
    user_message: Message
    tool_calls: list[Message] = field(default_factory=list)
    assistant_response: Message | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.session_id} turn {self.number}"

    @property
    def pk(self) -> tuple[str, int]:
        return (self.session_id, self.number)

    @property
    def user_message_id(self) -> int:
        return self.user_message.pk

    @property
    def assistant_response_id(self) -> int | None:
        return self.assistant_response.pk if self.assistant_response is not None else None

    @property
    def started_at(self) -> dt.datetime:
        return self.user_message.created_at

    @property
    def completed_at(self) -> dt.datetime | None:
        return self.assistant_response.created_at if self.assistant_response is not None else None

    @property
    def is_complete(self) -> bool:
        return self.assistant_response is not None

    @property
    def duration(self) -> dt.timedelta | None:
        if self.completed_at is None:
            return None
        return self.completed_at - self.started_at


@storage_errors
def turns(
    session: ConversationSession, *, numbers: Iterable[int] | None = None, newest: int | None = None
) -> list[TurnView]:
    """Turns in order, read from their messages. Two queries in all, both index range scans.

    ``numbers`` picks turns; ``newest`` takes only the last n. The messages of turns lo..hi are the
    sequence range from turn lo's user message (found on the partial user-message index) up to turn
    hi+1's; the stored metadata of those turns comes in a second query.
    """
    count = session.turn_count
    if numbers is not None:
        wanted = {n for n in numbers if 1 <= n <= count}
    elif newest is not None:
        wanted = set(range(max(count - newest, 0) + 1, count + 1))
    else:
        wanted = set(range(1, count + 1))
    if not wanted:
        return []
    lo, hi = min(wanted), max(wanted)
    table = Message._meta.db_table
    user_seq = f"SELECT seq FROM {table} WHERE session_id = %s AND role = %s AND turn_number = %s"
    sql = f"SELECT {_message_columns()} FROM {table} WHERE session_id = %s AND seq >= ({user_seq})"
    key = db_key(session.pk)
    params: list[Any] = [key, key, Role.USER.value, lo]
    if hi < count:
        sql += f" AND seq < ({user_seq})"
        params += [key, Role.USER.value, hi + 1]
    sql += " AND turn_number IS NOT NULL ORDER BY seq"
    found: dict[int, TurnView] = {}
    for message in Message.objects.raw(sql, params):
        number = message.turn_number
        if message.role == Role.USER:
            if number in wanted:
                found[number] = TurnView(session_id=session.pk, number=number, user_message=message)
            continue
        turn = found.get(number)
        if turn is None:
            continue
        if message.role == Role.TOOL:
            turn.tool_calls.append(message)
        elif message.role == Role.ASSISTANT:
            turn.assistant_response = message  # the newest one wins (messages come in order)
    if found:
        for number, metadata in Turn.objects.filter(session=session, number__gte=lo, number__lte=hi).values_list(
            "number", "metadata"
        ):
            if number in found:
                found[number].metadata = metadata
    return [found[n] for n in sorted(found)]


def turn_user_messages(session: Any, number: Any) -> QuerySet[Message]:
    """The user message that opened turn ``number`` (one row or none), as a queryset: on the partial
    user-message index. ``session`` and ``number`` may be expressions (e.g. ``OuterRef("pk")``)."""
    return Message.objects.filter(session=session, role=Role.USER, turn_number=number)


@storage_errors
def turn_user_seq(session_id: uuid.UUID, number: int) -> int | None:
    """The sequence number of the user message that opened turn ``number`` of the session (by key;
    None: no such turn)."""
    return turn_user_messages(session_id, number).values_list("seq", flat=True).first()


@storage_errors
def turn_metadata(session_id: uuid.UUID, number: int) -> dict[str, str]:
    """A turn's stored metadata ({} when it has none); the session by key."""
    found = Turn.objects.filter(session_id=session_id, number=number).values_list("metadata", flat=True).first()
    return found or {}


def get_turn(session: ConversationSession, number: int) -> TurnView | None:
    """The spec's get_turn: None for 0 or past the end."""
    if number < 1 or number > session.turn_count:
        return None
    found = turns(session, numbers=[number])
    return found[0] if found else None


def last_turn(session: ConversationSession) -> TurnView | None:
    return get_turn(session, session.turn_count)


def total_tokens(session: ConversationSession) -> int:
    return session.total_tokens
