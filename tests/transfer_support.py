"""Helpers shared by the export/import tests (no tests here): a conversation with everything an
export carries, and the comparison of two exports "ids aside"."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sessions_app import engine, transfer
from sessions_app.models import ConversationSession

FIXTURES = Path(__file__).parent / "fixtures" / "transfer"
SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "convo-export-1.schema.json"

T0 = dt.datetime(2026, 3, 1, 9, 30, 0, 123_456, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def rich_session(owner, session_id: str = "trip-plan") -> ConversationSession:
    """A conversation with a pinned system prompt, messages past max_messages (so some left the list),
    a clear (so sequence numbers have a gap and turns restarted), tool calls, a regenerated response,
    names, tool call ids, metadata on messages and turns, state, a title and a pin."""
    engine.session_create(
        session_id,
        owner=owner,
        system_prompt="You plan trips. Be concise.",
        metadata={"source": "test"},
        config=engine.SessionConfig(max_messages=6, max_tokens=500, timeout_seconds=7200),
        now=at(0),
    )
    add = lambda role, text, t, **kw: engine.message_append(session_id, role, text, owner=owner, now=at(t), **kw)  # noqa: E731
    add("user", "Before the clear", 1)
    add("assistant", "This goes with the clear.", 2)
    engine.session_clear_messages(session_id, owner=owner, now=at(3))
    add("user", "Plan two days in Lisbon.", 10, name="ana", metadata={"client": "web"})
    add("assistant", "Day 1: Alfama. Day 2: Belém.", 11)
    add("assistant", "Day 1: Belém. Day 2: Sintra.", 12, metadata={"regenerated": "yes"})  # a second response
    add("user", "What's the weather?", 20)
    add("tool", '{"temp": 21}', 21, tool_call_id="call_7", name="weather")
    add("assistant", "21 °C and sunny — 🌞.", 22)
    add("user", "Thanks!\nLine two\u2028with a line separator.", 30)
    add("assistant", "Enjoy the trip.", 31)
    engine.turn_set_metadata(session_id, 2, {"error": "timeout", "retried": "1"}, owner=owner, now=at(32))
    engine.state_set(session_id, "city", "Lisbon", owner=owner, now=at(33))
    engine.state_set_data(
        session_id, "budget", {"eur": 400, "days": [1, 2], "ok": True, "n": None}, owner=owner, now=at(34)
    )
    ConversationSession.objects.filter(sid=session_id, owner=owner).update(title="Lisbon trip", pinned=True)
    return engine.session_get(session_id, owner=owner)


def export_doc(session: ConversationSession) -> dict:
    return json.loads("".join(transfer.iter_json(session)))


def without_ids(doc: dict) -> dict:
    """An export with what an import may change left out: the ids and key, the export time."""
    doc = json.loads(json.dumps(doc))
    for key in ("id", "key", "exported_at"):
        doc.pop(key)
    return doc


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()
