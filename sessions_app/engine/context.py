"""Reading: the message list and its pages, the context window (the only one), and turns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
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
def messages_page(
    session: ConversationSession, *, after: int = 0, before: int | None = None, limit: int = 50, newest: bool = False
) -> list[Message]:
    """A page of the message list in order: the first ``limit`` after ``after``, or (``newest``) the last
    ``limit`` before ``before``. An index range scan whatever the session's length."""
    qs = listed_messages(session).filter(seq__gt=after)
    if before is not None:
        qs = qs.filter(seq__lt=before)
    if newest:
        page = list(qs.order_by("-seq")[:limit])
        page.reverse()
        return page
    return list(qs[:limit])


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


def _context_rows(session: ConversationSession, head_seq: int | None, upper: int | None, limit: int) -> list[Message]:
    """The pinned message (when ``head_seq``) and the newest ``limit`` listed non-system messages below
    ``upper``, in one query."""
    table = Message._meta.db_table
    newest = f"SELECT * FROM {table} WHERE session_id = %s AND seq >= %s AND role <> %s"
    key = db_key(session.pk)
    params: list[Any] = [key, session.low_seq, Role.SYSTEM.value]
    if upper is not None:
        newest += " AND seq < %s"
        params.append(upper)
    sql = f"SELECT * FROM ({newest} ORDER BY seq DESC LIMIT %s) AS newest"
    params.append(limit)
    if head_seq is not None:
        sql = f"SELECT * FROM {table} WHERE session_id = %s AND seq = %s UNION ALL {sql}"
        params = [key, head_seq, *params]
    return list(Message.objects.raw(sql, params))


def get_context(session: ConversationSession, max_tokens: int | None = None) -> list[Message]:
    """Exactly the spec's get_context: the messages only."""
    return context_window(session, max_tokens).messages


def current_turn(session: ConversationSession) -> int:
    return session.turn_count


@storage_errors
def turns(
    session: ConversationSession, *, numbers: Iterable[int] | None = None, newest: int | None = None
) -> list[Turn]:
    """Turns in order, each with ``tool_calls`` (its tool messages) attached. Three queries in all.

    ``numbers`` picks turns; ``newest`` takes only the last n.
    """
    qs = Turn.objects.filter(session=session).select_related("user_message", "assistant_response")
    if numbers is not None:
        qs = qs.filter(number__in=list(numbers))
    if newest is not None:
        result = list(qs.order_by("-number")[:newest])
        result.reverse()
    else:
        result = list(qs.order_by("number"))
    if not result:
        return result
    tools: dict[int, list[Message]] = {t.number: [] for t in result}
    for msg in Message.objects.filter(
        session=session,
        role=Role.TOOL,
        turn_number__gte=result[0].number,
        turn_number__lte=result[-1].number,
    ).order_by("seq"):
        if msg.turn_number in tools:
            tools[msg.turn_number].append(msg)
    for turn in result:
        turn.tool_calls = tools[turn.number]
    return result


def get_turn(session: ConversationSession, number: int) -> Turn | None:
    """The spec's get_turn: None for 0 or past the end."""
    if number < 1 or number > session.turn_count:
        return None
    found = turns(session, numbers=[number])
    return found[0] if found else None


def last_turn(session: ConversationSession) -> Turn | None:
    return get_turn(session, session.turn_count)


def total_tokens(session: ConversationSession) -> int:
    return session.total_tokens
