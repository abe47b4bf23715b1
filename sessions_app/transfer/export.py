"""Writing conversations out: ``convo.export/1`` JSON, Markdown, JSON Lines and a zip, all streamed.

Every writer is a generator of text (or bytes) pieces that reads the messages in pages of
``PAGE`` rows by sequence number (keyset pagination on the (session, seq) index, the same on
PostgreSQL and SQLite), so a conversation of any length is written in constant memory. The format
is documented in docs/export-format.md, its JSON Schema in docs/convo-export-1.schema.json.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import re
import zipfile
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone

from ..engine.sessions import Owner, owned_sessions
from ..engine.values import SessionConfig
from ..models import ConversationSession, Message, Turn
from .formats import FORMAT

PAGE = 1000  # messages (or sessions) read per query
CHUNK = 64 * 1024  # bytes an HTTP response sends at once


def document_header(session: ConversationSession, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """Everything about a conversation but its messages and turns (see docs/export-format.md)."""
    parent = session.parent if session.parent_id else None
    return {
        "format": FORMAT,
        "exported_at": _time(now or timezone.now()),
        "id": session.sid,
        "key": str(session.pk),
        "title": session.title,
        "pinned": session.pinned,
        "archived": session.archived,
        "created_at": _time(session.created_at),
        "updated_at": _time(session.updated_at),
        "system_prompt": session.system_prompt,
        "config": dataclasses.asdict(SessionConfig.of(session)),
        "state": {"variables": session.variables, "data": session.data},
        "metadata": session.metadata,
        "list": {
            "last_seq": session.last_seq,
            "low_seq": session.low_seq,
            "head_seq": session.head_seq,
            "turn_count": session.turn_count,
            "total_tokens": session.total_tokens,
            "message_count": session.message_count,
        },
        "lineage": {
            "kind": session.lineage or None,
            "parent_id": parent.sid if parent is not None else None,
            "parent_key": str(session.parent_id) if session.parent_id else None,
            "parent_seq": session.parent_seq,
        },
    }


def message_entry(session: ConversationSession, message: Message) -> dict[str, Any]:
    return {
        "seq": message.seq,
        "role": message.role,
        "content": message.content,
        "name": message.name,
        "tool_call_id": message.tool_call_id,
        "created_at": _time(message.created_at),
        "tokens": message.tokens,
        "turn": message.turn_number,
        "in_list": message.seq >= session.low_seq or message.seq == session.head_seq,
        "metadata": message.metadata,
    }


def stored_messages(session: ConversationSession) -> Iterator[Message]:
    """Every stored message of the session (its whole history), in order, a page at a time; those
    appended after ``session`` was read are left out, so the export matches its header."""
    after = 0
    while True:
        page = list(
            Message.objects.filter(session=session, seq__gt=after, seq__lte=session.last_seq).order_by("seq")[:PAGE]
        )
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].seq


def turn_entries(session: ConversationSession) -> Iterator[dict[str, Any]]:
    """Every turn, 1 to the current one, with its metadata (empty when it has none)."""
    rows = Turn.objects.filter(session=session)
    for start in range(0, session.turn_count, PAGE):
        stop = min(start + PAGE, session.turn_count)
        stored = dict(rows.filter(number__gt=start, number__lte=stop).values_list("number", "metadata"))
        for number in range(start + 1, stop + 1):
            yield {"number": number, "metadata": stored.get(number, {})}


# Characters JSON leaves as they are but str.splitlines() (and so many JSON Lines readers) ends a line at.
LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False).translate(LINE_BREAKS)


def iter_json(session: ConversationSession, *, lines: bool = False, now: dt.datetime | None = None) -> Iterator[str]:
    """One conversation as a ``convo.export/1`` JSON document, in pieces. ``lines``: on one line (JSON
    Lines); else one message or turn a line."""
    header = _dumps(document_header(session, now=now))
    sep = "," if lines else ",\n"
    yield header[:-1] + ', "messages": [' + ("" if lines else "\n")
    first = True
    for message in stored_messages(session):
        yield ("" if first else sep) + _dumps(message_entry(session, message))
        first = False
    yield ("" if lines else "\n") + '], "turns": [' + ("" if lines else "\n")
    first = True
    for turn in turn_entries(session):
        yield ("" if first else sep) + _dumps(turn)
        first = False
    yield ("" if lines else "\n") + "]}" + ("" if lines else "\n")


def iter_markdown(session: ConversationSession) -> Iterator[str]:
    """One conversation as Markdown: a heading per message, with its role, time and turn."""
    title = session.title or session.sid
    yield f"# {_md_line(title)}\n\n"
    yield f"- id: `{session.sid}`\n- created: {_time(session.created_at)}\n- updated: {_time(session.updated_at)}\n"
    yield f"- in the session's list: {session.message_count} message(s) (at most {session.max_messages});"
    yield f" turns: {session.turn_count}\n"
    if session.parent_id:
        parent = session.parent
        yield f"- {session.lineage or 'branch'} of `{parent.sid if parent else session.parent_id}`"
        yield f" at message {session.parent_seq}\n" if session.parent_seq else "\n"
    if session.system_prompt:
        yield f"- system prompt: {_md_line(session.system_prompt)[:200]}\n"
    yield "\n"
    for message in stored_messages(session):
        listed = message.seq >= session.low_seq or message.seq == session.head_seq
        parts = [message.role]
        if message.name:
            parts.append(message.name)
        parts.append(_time(message.created_at))
        if message.turn_number:
            parts.append(f"turn {message.turn_number}")
        if message.tool_call_id:
            parts.append(f"tool call `{message.tool_call_id}`")
        if not listed:
            parts.append("kept in history, not in the session's list")
        yield f"## {message.seq}. {' · '.join(parts)}\n\n{message.content}\n\n"


def iter_jsonl(sessions: Iterable[ConversationSession], *, now: dt.datetime | None = None) -> Iterator[str]:
    """Conversations as JSON Lines: one ``convo.export/1`` document a line."""
    for session in sessions:
        yield from iter_json(session, lines=True, now=now)
        yield "\n"


def iter_sessions(qs) -> Iterator[ConversationSession]:
    """The sessions of a queryset, a page at a time by key (constant memory for any number)."""
    after = None
    while True:
        page_qs = qs.order_by("pk")
        if after is not None:
            page_qs = page_qs.filter(pk__gt=after)
        page = list(page_qs.select_related("parent")[:PAGE])
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].pk


def user_sessions(owner: Owner) -> Iterator[ConversationSession]:
    return iter_sessions(owned_sessions(owner))


def iter_zip(sessions: Iterable[ConversationSession], *, now: dt.datetime | None = None) -> Iterator[bytes]:
    """A zip of one ``convo.export/1`` JSON file per conversation, written as it streams (no seeking:
    sizes follow each member in a data descriptor)."""
    now = now or timezone.now()
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for number, session in enumerate(sessions, 1):
            info = zipfile.ZipInfo(f"conversations/{number:05d}-{filename_part(session.sid)}.json", _zip_time(now))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                for piece in iter_json(session, now=now):
                    member.write(piece.encode("utf-8"))
                    if pipe.size >= CHUNK:
                        yield pipe.drain()
            yield pipe.drain()
    yield pipe.drain()


def streaming_response(
    request: HttpRequest, pieces: Iterator[str | bytes], *, content_type: str, filename: str
) -> StreamingHttpResponse:
    """An attachment streamed from ``pieces``. Under ASGI (daphne) the pieces are produced in the
    request's thread a chunk at a time: Django would otherwise read a sync iterator whole first."""
    chunks = _chunks(pieces)
    content = _async_chunks(chunks) if isinstance(request, ASGIRequest) else chunks
    response = StreamingHttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def filename_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:100] or "conversation"


# ---------------------------------------------------------------------------------------------


def _chunks(pieces: Iterator[str | bytes]) -> Iterator[bytes]:
    buffer: list[bytes] = []
    size = 0
    for piece in pieces:
        data = piece.encode("utf-8") if isinstance(piece, str) else piece
        buffer.append(data)
        size += len(data)
        if size >= CHUNK:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    take = sync_to_async(next, thread_sensitive=True)
    while True:
        chunk = await take(chunks, None)
        if chunk is None:
            return
        yield chunk


class _Pipe(io.RawIOBase):
    """A write-only, unseekable file that the zip writes into and the response drains."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        self.size += len(data)
        return len(data)

    def drain(self) -> bytes:
        data = b"".join(self.parts)
        self.parts, self.size = [], 0
        return data


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def _zip_time(now: dt.datetime) -> tuple[int, int, int, int, int, int]:
    t = now.astimezone(dt.UTC)
    return (max(t.year, 1980), t.month, t.day, t.hour, t.minute, t.second)


def _md_line(text: str) -> str:
    return " ".join(text.split())
