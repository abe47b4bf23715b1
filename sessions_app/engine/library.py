"""The library: what a person keeps of their conversations beyond what the model sees (issue 11).

A conversation's title, and whether it is pinned or archived. None of these change the session's
list, context window, limits or expiry, and none counts as activity (``updated_at`` stays, so a
rename does not move a conversation up the sidebar, nor extend its life). Every change tells the
owner's open pages once committed (``events.library_changed``).

Titles are given on append (``bookkeeping.append_bookkeeping``: the first user message of an
untitled session), or here, by a person or a client.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import transaction
from django.utils import timezone

from .. import events
from ..models import ConversationSession
from .errors import SessionValidationError, storage_errors
from .sessions import ANY_OWNER, Owner, SessionRef, lock_session, owned_sessions
from .values import check_title

_UNSET: Any = object()

# The columns the sidebar shows (one query reads exactly these for a page of entries).
SIDEBAR_COLUMNS = (
    "key", "sid", "owner_id", "title", "pinned", "archived", "updated_at", "expires_at", "last_seq", "low_seq",
    "head_seq",
)  # fmt: skip


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SessionValidationError(f"{name} must be true or false", field=name)
    return value


@storage_errors
def session_set_library(
    session_id: SessionRef,
    *,
    owner: Owner = ANY_OWNER,
    title: str | None = _UNSET,
    pinned: bool | None = None,
    archived: bool | None = None,
    now: dt.datetime | None = None,
) -> ConversationSession:
    """Rename, pin / unpin or archive / unarchive a conversation (expired or not); return it.

    ``title`` is made one line and trimmed (``values.check_title``); an empty one means untitled: the
    sidebar shows the id, and the next user message gives the conversation its title again.
    """
    if title is not _UNSET:
        title = check_title(title)
    if pinned is not None:
        _flag("pinned", pinned)
    if archived is not None:
        _flag("archived", archived)
    now = now or timezone.now()
    with transaction.atomic():
        session = lock_session(session_id, owner, now, allow_expired=True)
        changed = []
        for name, value in (("title", title), ("pinned", pinned), ("archived", archived)):
            if value is not _UNSET and value is not None and getattr(session, name) != value:
                setattr(session, name, value)
                changed.append(name)
        if changed:
            session.save(update_fields=changed)
            if "title" in changed:  # the page's header shows it (pin and archive show in the sidebar only)
                events.emit(session.pk, events.STATE)
            events.library_changed(session.owner_id)
    return session


@storage_errors
def sidebar_page(
    owner: Owner, *, archived: bool = False, offset: int = 0, limit: int = 30
) -> tuple[list[ConversationSession], bool]:
    """One page of the owner's conversations as the sidebar lists them, and whether more follow.

    Pinned first, then by activity (newest first); archived ones only in the archive (``archived``).
    One query, reading only the columns the sidebar shows.
    """
    qs = (
        owned_sessions(owner).filter(archived=archived).order_by("-pinned", "-updated_at", "sid").only(*SIDEBAR_COLUMNS)
    )
    rows = list(qs[offset : offset + limit + 1])
    return rows[:limit], len(rows) > limit
