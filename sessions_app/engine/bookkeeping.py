"""The message list's bookkeeping: sequence and turn numbers of an append, the message limit, a clear.

Both append paths (``messages``, under the row lock, and ``pg_append``, in one statement), a config
change (``sessions.session_update``), a clear and a copy of a conversation (``lineage``, which replays
the stored messages as appends) apply these functions, so each rule is written once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice

from ..models import ConversationSession, Message, Role
from .values import title_from

# The session columns an append or a clear changes (an append may also give an untitled session its title).
BOOKKEEPING_FIELDS = [
    "last_seq", "low_seq", "head_seq", "turn_count", "total_tokens", "updated_at", "expires_at", "title",
]  # fmt: skip


def append_bookkeeping(session: ConversationSession, new: Message) -> None:
    """Give ``new`` its sequence and turn numbers and count it in the session's bookkeeping (in memory)."""
    was_empty = session.message_count == 0
    new.seq = session.last_seq + 1
    if new.role == Role.USER:
        new.turn_number = session.turn_count + 1
        session.turn_count = new.turn_number
    elif new.role in (Role.ASSISTANT, Role.TOOL) and session.turn_count:
        new.turn_number = session.turn_count
    else:
        new.turn_number = None
    session.last_seq = new.seq
    session.total_tokens += new.tokens
    # The library's title: the first user message's (a replayed copy's rows carry no text: the copy
    # takes its parent's title instead).
    if new.role == Role.USER and not session.title and getattr(new, "content", None) is not None:
        session.title = title_from(new.content)
    if was_empty and new.role == Role.SYSTEM:
        # The first message of the list is a system message: it is pinned from now on.
        session.head_seq, session.low_seq = new.seq, new.seq + 1


def enforce_limits(session: ConversationSession, *, oldest: list[tuple[int, str, int]] | None = None) -> None:
    """The spec's enforce_limits: while the list is too long, drop its first message, or its second
    when the first is a system message. Dropped messages stay in the database (their turns show them).

    Keeps the invariant that with no pinned head, the first listed message is not a system message.
    ``oldest``: the (seq, role, tokens) of the oldest listed messages when the caller already has them
    (at least ``excess + 2``, or all); read from the database otherwise.

    Every write that can lengthen the list or lower max_messages calls this, so a stored session is
    never over its limit, and one append puts it over by at most one (``pg_append`` relies on that).
    """
    excess = session.message_count - session.max_messages
    if excess <= 0:
        return
    # The oldest listed messages after the head, in order: enough to remove ``excess`` of them,
    # pin one system message on the way, and look at the message that ends up first.
    if oldest is None:
        oldest = list(
            Message.objects.filter(session=session, seq__gte=session.low_seq)
            .order_by("seq")
            .values_list("seq", "role", "tokens")[: excess + 2]
        )
    rows = iter(oldest)
    while session.message_count > session.max_messages:
        seq, role, tokens = next(rows)
        if session.head_seq is None and role == Role.SYSTEM:
            session.head_seq = seq  # it is first now: pinned, and the next one goes instead
        else:
            session.total_tokens -= tokens
        session.low_seq = seq + 1
    if session.head_seq is None:
        first = next(rows, None)
        if first is not None and first[1] == Role.SYSTEM:
            session.head_seq, session.low_seq = first[0], first[0] + 1


def clear_bookkeeping(session: ConversationSession, keep: tuple[int, int] | None) -> None:
    """The spec's clear_messages on the bookkeeping (in memory): the list restarts after the newest
    sequence number, holding only the pinned head when it is kept (``keep``: its seq and tokens), and
    turn numbering restarts at 1."""
    session.head_seq = keep[0] if keep else None
    session.low_seq = session.last_seq + 1
    session.turn_count = 0
    session.total_tokens = keep[1] if keep else 0


def replay_appends(session: ConversationSession, rows: Iterable[Message], *, through: int) -> Iterator[Message]:
    """Count copies of a session's stored messages (``rows``, in order, each keeping its ``seq``, up to
    ``through``) into the new, empty ``session`` as appends: each gets its turn number and the list its
    limit, by ``append_bookkeeping`` and ``enforce_limits``. Yields each row once it is counted.

    Sequence numbers are gap-free except where a clear deleted messages: a gap (also one before
    ``through``) is replayed as that clear. Memory stays bounded by the list (``max_messages``), not by
    the number of rows.
    """
    listed: deque[tuple[int, str, int]] = deque()  # (seq, role, tokens) of the listed messages after the head
    head_tokens = 0

    def cleared_before(seq: int) -> None:
        if seq > session.last_seq + 1:  # the messages in between were deleted by a clear
            session.last_seq = seq - 1
            clear_bookkeeping(session, (session.head_seq, head_tokens) if session.head_seq is not None else None)
            listed.clear()

    for row in rows:
        cleared_before(row.seq)
        append_bookkeeping(session, row)
        if session.head_seq == row.seq:
            head_tokens = row.tokens
        else:
            listed.append((row.seq, row.role, row.tokens))
        excess = session.message_count - session.max_messages
        if excess > 0:
            oldest = list(islice(listed, excess + 2))
            head = session.head_seq
            enforce_limits(session, oldest=oldest)
            if session.head_seq != head:
                head_tokens = next(tokens for seq, _, tokens in oldest if seq == session.head_seq)
        while listed and listed[0][0] < session.low_seq:
            listed.popleft()
        yield row
    cleared_before(through + 1)
