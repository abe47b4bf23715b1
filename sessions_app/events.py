"""Change notifications: the engine tells the channel layer what changed, after the commit.

Open chat pages subscribe to their session's group; a notification names what changed (and, for a
message, its sequence number) and the page re-reads the database, which stays the source of truth.
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

# What a notification can say changed.
MESSAGE = "message"  # a message was appended (turns and context change with it)
STATE = "state"
CONFIG = "config"  # config, system prompt or metadata edited
CLEARED = "cleared"
DELETED = "deleted"
# An assistant reply in progress (issue 5): data state=started|delta|done|stopped|error, text=the
# text so far. Not a database write: sent at once, and a page that misses one loses nothing (the
# next carries the whole text, and the stored assistant message arrives as a MESSAGE event).
REPLY = "reply"


def group_name(session_id: str) -> str:
    """The channel-layer group of one session (group names allow fewer characters than session ids)."""
    return "convo.session." + hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:40]


def emit(session_id: str, kind: str, **data: Any) -> None:
    """Queue a notification to be sent once the current transaction commits (at once outside one)."""
    emit_many([session_id], kind, **data)


def emit_many(session_ids: list[str], kind: str, **data: Any) -> None:
    if not session_ids:
        return
    events = [{"type": "session.event", "session_id": sid, "kind": kind, **data} for sid in session_ids]
    transaction.on_commit(partial(_send, events))


def _send(events: list[dict[str, Any]]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(_send_all)(layer, events)
    except Exception:  # a push failure must never undo or fail a committed write
        logger.exception("Could not push %d session event(s) to the channel layer", len(events))


async def _send_all(layer: Any, events: list[dict[str, Any]]) -> None:
    for event in events:
        await layer.group_send(group_name(event["session_id"]), event)
