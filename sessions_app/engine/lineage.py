"""Lineage: conversations made from others (branch, edit, continue), and the versions a chat browses.

- ``session_branch`` copies a conversation up to and including one of its messages into a new one;
  ``session_edit_branch`` copies everything before a user message (an edit: the caller appends the
  edited text); ``session_continue`` copies all of it (an expired conversation goes on in a new one).
  The copy keeps each message's seq, role, name, tool_call_id, time, tokens and metadata, the turns'
  metadata, the config and the state; its list bookkeeping comes from replaying the messages as
  appends (``bookkeeping.replay_appends``). The new conversation records its parent, the seq it was
  taken at (``parent_seq``) and how (``lineage``); it belongs to the parent's owner, under a new id.
- Edit versions: the conversations that answer "what if this user message had said something else"
  are the original and every edit made of that message (edits of edits included): they share the
  point before it (``parent_seq``). ``edit_versions`` lists them in the order they were made.
- Response versions: a regenerated turn has several responses (the spec keeps them all in the list;
  the newest completes the turn). A chat shows one of them, and may store which (``response_choose``,
  in the turn's metadata under ``CHOICE_KEY``): then only that one (with the tool messages its reply
  stored) is sent to the model (``unchosen_responses``, which the replies' context window leaves out).
  Where no choice is stored, the spec's context window holds unchanged.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from .. import events
from ..models import ConversationSession, Message, Role, Turn
from .bookkeeping import BOOKKEEPING_FIELDS, replay_appends
from .context import turn_user_seq
from .errors import SessionValidationError, storage_errors
from .messages import turn_set_metadata
from .purge import db_key
from .sessions import ANY_OWNER, Owner, SessionRef, lock_session
from .values import new_session_id, touch

BRANCH, EDIT, CONTINUE = "branch", "edit", "continue"
LINEAGES = (BRANCH, EDIT, CONTINUE)

# A turn's metadata key holding the chosen response: its seq, or LATEST (the newest one, whichever
# that is: a chat's Regenerate chooses the answer it is about to get).
CHOICE_KEY = "response_choice"
LATEST = "latest"

COPY_BATCH = 5000  # (seq, role, tokens) rows read per query while a copy is replayed


# ---------------------------------------------------------------------------------------------
# Copies: branch, edit, continue.


@storage_errors
def session_branch(
    session_id: SessionRef, at_seq: int, *, owner: Owner = ANY_OWNER, now: dt.datetime | None = None
) -> ConversationSession:
    """A new conversation with the messages of ``session_id`` up to and including ``at_seq`` (the seq
    of one of its stored messages; SessionValidationError otherwise). Expired conversations may be
    branched (they are only read); the branch is live."""

    def check(parent: ConversationSession) -> None:
        if (
            not _is_seq(at_seq)
            or not 1 <= at_seq <= parent.last_seq
            or not Message.objects.filter(session=parent, seq=at_seq).exists()
        ):
            raise SessionValidationError(
                f"at_seq must be the sequence number of a message of {parent.sid} (1 to {parent.last_seq}).",
                field="at_seq",
            )

    return _copy(session_id, owner, lambda parent: at_seq, BRANCH, check, now)


@storage_errors
def session_edit_branch(
    session_id: SessionRef, seq: int, *, owner: Owner = ANY_OWNER, now: dt.datetime | None = None
) -> ConversationSession:
    """The conversation an edit of user message ``seq`` starts: everything before that message
    (lineage "edit", ``parent_seq`` = seq − 1). The caller appends the edited text, which gets ``seq``."""

    def check(parent: ConversationSession) -> None:
        if not _is_seq(seq) or not Message.objects.filter(session=parent, seq=seq, role=Role.USER).exists():
            raise SessionValidationError(f"Message {seq} of {parent.sid} is not a user message.", field="seq")

    return _copy(session_id, owner, lambda parent: seq - 1, EDIT, check, now)


@storage_errors
def session_continue(
    session_id: SessionRef, *, owner: Owner = ANY_OWNER, now: dt.datetime | None = None
) -> ConversationSession:
    """A new, live conversation carrying all of ``session_id`` over (its whole history, turns, config
    and state), linked to it (lineage "continue"): how an expired conversation goes on."""
    return _copy(session_id, owner, lambda parent: parent.last_seq, CONTINUE, lambda parent: None, now)


MAX_SEQ = 2**63 - 1  # sequence numbers are 64-bit: a larger one is no seq (and no query)


def _is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ


def _copy(
    session_id: SessionRef,
    owner: Owner,
    through_of: Callable[[ConversationSession], int],
    lineage: str,
    check: Callable[[ConversationSession], None],
    now: dt.datetime | None,
) -> ConversationSession:
    now = now or timezone.now()
    with transaction.atomic():
        # The parent's row lock: no message lands in it while it is copied.
        parent = lock_session(session_id, owner, now, allow_expired=True)
        check(parent)
        through = through_of(parent)
        child = ConversationSession(
            sid=new_session_id(),
            owner_id=parent.owner_id,
            system_prompt=parent.system_prompt,
            variables=dict(parent.variables),
            data=copy.deepcopy(parent.data),
            metadata=dict(parent.metadata),
            max_messages=parent.max_messages,
            max_tokens=parent.max_tokens,
            timeout_seconds=parent.timeout_seconds,
            persist_system_prompt=parent.persist_system_prompt,
            created_at=now,
            title=parent.title,
            parent=parent,
            parent_seq=through,
            lineage=lineage,
        )
        touch(child, now)
        child.save(force_insert=True)
        _copy_messages(parent, child, through)
        turns = Turn.objects.filter(session=parent, number__lte=child.turn_count).order_by("number")
        Turn.objects.bulk_create(
            Turn(session=child, number=number, metadata=kept)
            for number, metadata in turns.values_list("number", "metadata")
            if (kept := _turn_metadata_through(metadata, through))
        )
        child.save(update_fields=BOOKKEEPING_FIELDS)
        events.emit(child.pk, events.CONFIG)
    return child


@dataclass
class _Row:
    """What the replay needs of a stored message (not its text)."""

    seq: int
    role: str
    tokens: int
    stored_turn: int | None  # the turn number it has
    turn_number: int | None = None  # the one the replay gives it


def _copy_messages(parent: ConversationSession, child: ConversationSession, through: int) -> None:
    """Copy the parent's messages up to ``through`` into ``child`` in one INSERT ... SELECT (their
    text never passes through Python), and count them into the child's bookkeeping by replaying them
    as appends, read in pages of (seq, role, tokens): memory stays flat whatever their number. A
    message whose stored turn number is not the one the replay gives (none the engine wrote) is
    renumbered."""
    connection = transaction.get_connection()
    quote = connection.ops.quote_name
    table = quote(Message._meta.db_table)
    session_column = quote(Message._meta.get_field("session").column)
    copied = [quote(Message._meta.get_field(name).column) for name in MESSAGE_COPY_FIELDS]
    columns = ", ".join(copied)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({session_column}, {columns}) SELECT %s, {columns} FROM {table} "
            f"WHERE {session_column} = %s AND {quote('seq')} <= %s",
            [db_key(child.pk), db_key(parent.pk), through],
        )
    renumbered: dict[int | None, list[int]] = {}
    for row in replay_appends(child, _rows(parent, through), through=through):
        if row.stored_turn != row.turn_number:
            renumbered.setdefault(row.turn_number, []).append(row.seq)
    for number, seqs in renumbered.items():
        for start in range(0, len(seqs), 500):
            Message.objects.filter(session=child, seq__in=seqs[start : start + 500]).update(turn_number=number)


# The columns a copy keeps as they are (the session is the copy's; the row id is new).
MESSAGE_COPY_FIELDS = (
    "seq", "role", "content", "name", "tool_call_id", "metadata", "created_at", "tokens", "turn_number",
)  # fmt: skip


def _rows(parent: ConversationSession, through: int) -> Iterator[_Row]:
    """The parent's messages up to ``through`` as replay rows, in order, read in pages by seq."""
    after = 0
    while True:
        page = list(
            Message.objects.filter(session=parent, seq__gt=after, seq__lte=through)
            .order_by("seq")
            .values_list("seq", "role", "tokens", "turn_number")[:COPY_BATCH]
        )
        for seq, role, tokens, turn_number in page:
            yield _Row(seq, role, tokens, turn_number)
        if len(page) < COPY_BATCH:
            return
        after = page[-1][0]


def _turn_metadata_through(metadata: dict[str, str], through: int) -> dict[str, str]:
    """A turn's metadata as a copy up to ``through`` keeps it: a chosen response the copy does not
    have is no choice there."""
    choice = metadata.get(CHOICE_KEY)
    if choice is not None and choice != LATEST and (not choice.isdigit() or int(choice) > through):
        metadata = {k: v for k, v in metadata.items() if k != CHOICE_KEY}
    return metadata


@storage_errors
def lineage_children(session: ConversationSession, *, limit: int = 50) -> list[ConversationSession]:
    """The conversations made from ``session`` (branches, edits, continuations), oldest first."""
    return list(ConversationSession.objects.filter(parent=session).order_by("created_at", "pk")[:limit])


# ---------------------------------------------------------------------------------------------
# Edit versions.


@dataclass
class EditVersions:
    """The versions of a user message: the conversations sharing the point before it."""

    seq: int  # the message's seq (the same in every version)
    sessions: list[ConversationSession]  # the original first, then the edits in the order they were made
    index: int  # which one is the conversation asked about (0-based)

    @property
    def number(self) -> int:
        return self.index + 1

    @property
    def count(self) -> int:
        return len(self.sessions)

    @property
    def previous(self) -> ConversationSession | None:
        return self.sessions[self.index - 1] if self.index > 0 else None

    @property
    def next(self) -> ConversationSession | None:
        return self.sessions[self.index + 1] if self.index + 1 < len(self.sessions) else None


@storage_errors
def edit_versions(session: ConversationSession, seq: int) -> EditVersions | None:
    """The versions of user message ``seq`` of ``session`` (None when it has no other): the first
    conversation that had it, and every edit of it made since, from any of them."""
    point = seq - 1
    root = session
    while root.lineage == EDIT and root.parent_seq == point and root.parent_id is not None:
        parent = ConversationSession.objects.filter(pk=root.parent_id).first()
        if parent is None:
            break
        root = parent
    members = [root]
    frontier = [root.pk]
    while frontier:
        found = list(ConversationSession.objects.filter(parent__in=frontier, lineage=EDIT, parent_seq=point))
        members += found
        frontier = [s.pk for s in found]
    if len(members) < 2:
        return None
    members[1:] = sorted(members[1:], key=lambda s: (s.created_at, str(s.pk)))
    index = next(i for i, s in enumerate(members) if s.pk == session.pk)
    return EditVersions(seq=seq, sessions=members, index=index)


@storage_errors
def edit_versions_of(session: ConversationSession, seqs: Iterable[int]) -> dict[int, EditVersions]:
    """``edit_versions`` of several messages of ``session`` (those that have versions, by seq), in a
    few queries whatever their number: one per level of edits of edits."""
    points = {seq - 1 for seq in seqs}
    found: dict[int, EditVersions] = {}
    own = session.parent_seq if session.lineage == EDIT and session.parent_id is not None else None
    if own is not None and own in points:
        points.discard(own)
        versions = edit_versions(session, own + 1)
        if versions is not None:
            found[own + 1] = versions
    groups: dict[int, list[ConversationSession]] = {}
    level = list(ConversationSession.objects.filter(parent=session, lineage=EDIT, parent_seq__in=points))
    while level:
        for child in level:
            groups.setdefault(child.parent_seq, []).append(child)
        point_of = {child.pk: child.parent_seq for child in level}
        level = [
            grandchild
            for grandchild in ConversationSession.objects.filter(parent__in=list(point_of), lineage=EDIT)
            if grandchild.parent_seq == point_of[grandchild.parent_id]
        ]
    for point, members in groups.items():
        members.sort(key=lambda s: (s.created_at, str(s.pk)))
        found[point + 1] = EditVersions(seq=point + 1, sessions=[session, *members], index=0)
    return found


# ---------------------------------------------------------------------------------------------
# Response versions.


@dataclass
class ResponseVersions:
    """The responses of a turn answered more than once, and which one is shown and sent."""

    turn: int
    seqs: list[int]  # the turn's assistant messages, oldest first
    chosen: int  # the one shown (and, when ``stored``, the only one sent)
    stored: bool  # whether the choice is stored in the turn's metadata (else: the newest, spec's context)
    others: frozenset[int]  # the other versions' messages: their responses and their replies' tool messages

    @property
    def number(self) -> int:
        return self.seqs.index(self.chosen) + 1

    @property
    def count(self) -> int:
        return len(self.seqs)

    @property
    def previous(self) -> int | None:
        i = self.seqs.index(self.chosen)
        return self.seqs[i - 1] if i > 0 else None

    @property
    def next(self) -> int | None:
        i = self.seqs.index(self.chosen)
        return self.seqs[i + 1] if i + 1 < len(self.seqs) else None


@storage_errors
def response_versions(session: ConversationSession, turns: Iterable[int]) -> dict[int, ResponseVersions]:
    """The turns among ``turns`` that have more than one response, by number. Two queries, on the
    messages from the first of those turns on."""
    wanted = sorted({n for n in turns if isinstance(n, int) and 1 <= n <= session.turn_count})
    if not wanted:
        return {}
    first = turn_user_seq(session.pk, wanted[0]) or 0
    rows: dict[int, list[tuple[int, str, dict]]] = {}
    for number, seq, role, metadata in (
        Message.objects.filter(
            session=session, seq__gte=first, turn_number__in=wanted, role__in=[Role.ASSISTANT, Role.TOOL]
        )
        .order_by("seq")
        .values_list("turn_number", "seq", "role", "metadata")
    ):
        rows.setdefault(number, []).append((seq, role, metadata or {}))
    several = [n for n, found in rows.items() if sum(role == Role.ASSISTANT for _, role, _ in found) > 1]
    if not several:
        return {}
    choices = {
        number: (metadata or {}).get(CHOICE_KEY)
        for number, metadata in Turn.objects.filter(session=session, number__in=several).values_list(
            "number", "metadata"
        )
    }
    return {n: _versions(n, rows[n], choices.get(n)) for n in several}


def _versions(number: int, rows: list[tuple[int, str, dict]], choice: str | None) -> ResponseVersions:
    responses = [(seq, meta.get("reply")) for seq, role, meta in rows if role == Role.ASSISTANT]
    seqs = [seq for seq, _ in responses]
    chosen = seqs[-1]
    stored = isinstance(choice, str) and (choice == LATEST or (choice.isdigit() and int(choice) in seqs))
    if stored and choice != LATEST:
        chosen = int(choice)
    reply = dict(responses)[chosen]
    others = {seq for seq in seqs if seq != chosen}
    others |= {seq for seq, role, meta in rows if role == Role.TOOL and "reply" in meta and meta["reply"] != reply}
    return ResponseVersions(turn=number, seqs=seqs, chosen=chosen, stored=stored, others=frozenset(others))


@storage_errors
def unchosen_responses(session: ConversationSession) -> set[int]:
    """The listed messages a stored choice leaves out of what is sent: in each turn whose response was
    chosen, the other responses and the tool messages of their replies. Empty (one small query) when
    no turn has a choice, which is the spec's context window."""
    chosen_turns = list(
        Turn.objects.filter(session=session, metadata__has_key=CHOICE_KEY).values_list("number", flat=True)
    )
    if not chosen_turns:
        return set()
    left_out: set[int] = set()
    for versions in response_versions(session, chosen_turns).values():
        if versions.stored:
            left_out |= {seq for seq in versions.others if seq >= session.low_seq}
    return left_out


@storage_errors
def response_choose(
    session_id: SessionRef,
    turn: int,
    seq: int | None,
    *,
    owner: Owner = ANY_OWNER,
    now: dt.datetime | None = None,
) -> dict[str, str]:
    """Store which response of ``turn`` is shown and sent: the assistant message ``seq`` of that turn,
    or (None) the newest one; return the turn's metadata. Raises SessionValidationError when ``seq``
    is not one of its responses, SessionNotFound for a turn the session does not have, SessionExpired.
    Open pages show the turn's answers again (``events.VERSIONS``)."""
    now = now or timezone.now()
    with transaction.atomic():
        session = lock_session(session_id, owner, now)
        if seq is not None and (
            not _is_seq(seq)
            or not _is_seq(turn)
            or not Message.objects.filter(session=session, seq=seq, role=Role.ASSISTANT, turn_number=turn).exists()
        ):
            raise SessionValidationError(f"Message {seq} is not a response of turn {turn}.", field="seq")
        value = LATEST if seq is None else str(seq)
        metadata = turn_set_metadata(session.pk, turn, {CHOICE_KEY: value}, owner=owner, now=now)
        events.emit(session.pk, events.VERSIONS, turn=turn)
    return metadata
