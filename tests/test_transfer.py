"""Export and import (sessions_app.transfer): the convo.export/1 round trip, ChatGPT's and Open WebUI's
exports, broken files, numbering by the engine's bookkeeping, id clashes and lineage."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile

import jsonschema
import pytest

from sessions_app import engine, transfer
from sessions_app.models import ConversationSession, Message, Turn

from .transfer_support import SCHEMA, at, export_doc, fixture, rich_session, without_ids

pytestmark = pytest.mark.django_db


def test_export_carries_the_whole_history_and_the_list(user):
    """Every stored message (also those that left the list), with the list's boundaries, the turns
    with their metadata, state, config, title and lineage fields."""
    session = rich_session(user)
    doc = export_doc(session)
    assert doc["format"] == "convo.export/1"
    assert doc["title"] == "Lisbon trip" and doc["pinned"] is True and doc["archived"] is False
    assert doc["config"] == {
        "max_messages": 6,
        "max_tokens": 500,
        "timeout_seconds": 7200,
        "persist_system_prompt": True,
    }
    assert doc["state"] == {
        "variables": {"city": "Lisbon"},
        "data": {"budget": {"eur": 400, "days": [1, 2], "ok": True, "n": None}},
    }
    stored = list(Message.objects.filter(session=session).order_by("seq"))
    assert [m["seq"] for m in doc["messages"]] == [m.seq for m in stored] == [1, 4, 5, 6, 7, 8, 9, 10, 11]
    assert doc["list"] == {
        "last_seq": 11,
        "low_seq": session.low_seq,
        "head_seq": 1,
        "turn_count": 3,  # restarted by the clear
        "total_tokens": session.total_tokens,
        "message_count": 6,
    }
    assert session.low_seq == 7  # five messages after the pinned prompt are listed; 4..6 left the list
    assert [m["in_list"] for m in doc["messages"]] == [True, False, False, False, True, True, True, True, True]
    user_msg = doc["messages"][1]
    assert user_msg == {
        "seq": 4, "role": "user", "content": "Plan two days in Lisbon.", "name": "ana", "tool_call_id": None,
        "created_at": "2026-03-01T09:30:10.123456+00:00", "tokens": engine.estimate_tokens("Plan two days in Lisbon."),
        "turn": 1, "in_list": False, "metadata": {"client": "web"},
    }  # fmt: skip
    assert doc["messages"][5]["tool_call_id"] == "call_7" and doc["messages"][5]["turn"] == 2
    assert doc["turns"] == [
        {"number": 1, "metadata": {}},
        {"number": 2, "metadata": {"error": "timeout", "retried": "1"}},
        {"number": 3, "metadata": {}},
    ]
    assert doc["lineage"] == {"kind": None, "parent_id": None, "parent_key": None, "parent_seq": None}


def test_export_validates_against_the_checked_in_schema(user, make_session):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    rich = export_doc(rich_session(user))
    jsonschema.validate(rich, schema)
    empty = export_doc(make_session("empty", owner=user, timeout_seconds=None))
    jsonschema.validate(empty, schema)
    broken = dict(rich, format="convo.export/2")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_round_trip_gives_identical_content(user):
    """export → import → export: the same document, ids aside; the rows and bookkeeping match too."""
    original = rich_session(user)
    first = export_doc(original)
    result = transfer.import_bytes(json.dumps(first).encode(), owner=user)
    [imported] = result.imported
    assert result.source == "convo"
    assert imported.renamed and imported.requested_id == "trip-plan"  # the user already has that id
    again = export_doc(engine.session_get(imported.id, owner=user))
    assert without_ids(again) == without_ids(first)
    copy = imported.session
    fields = ["last_seq", "low_seq", "head_seq", "turn_count", "total_tokens", "created_at", "updated_at", "title"]
    assert [getattr(copy, f) for f in fields] == [getattr(original, f) for f in fields]
    rows = lambda s: list(  # noqa: E731
        Message.objects.filter(session=s)
        .order_by("seq")
        .values_list(
            "seq", "role", "content", "name", "tool_call_id", "metadata", "created_at", "tokens", "turn_number"
        )
    )
    assert rows(copy) == rows(original)
    assert engine.turn_metadata(copy.pk, 2) == {"error": "timeout", "retried": "1"}
    # The engine reads the copy as it reads the original.
    assert [m.seq for m in engine.get_context(copy)] == [m.seq for m in engine.get_context(original)]
    assert [t.number for t in engine.turns(copy)] == [t.number for t in engine.turns(original)]
    # The original is untouched.
    assert export_doc(engine.session_get("trip-plan", owner=user)) | {"exported_at": None} == first | {
        "exported_at": None
    }


def test_imported_conversation_keeps_working_with_the_engine(user):
    """Appending to an imported conversation continues its numbering as if it had never moved."""
    original = rich_session(user)
    [imported] = transfer.import_bytes("".join(transfer.iter_json(original)).encode(), owner=user).imported
    a = engine.message_append("trip-plan", "user", "One more question", owner=user, now=at(40))
    b = engine.message_append(imported.id, "user", "One more question", owner=user, now=at(40))
    assert (a.seq, a.turn_number) == (b.seq, b.turn_number) == (12, 4)
    x, y = engine.session_get("trip-plan", owner=user), engine.session_get(imported.id, owner=user)
    assert (x.low_seq, x.head_seq, x.total_tokens) == (y.low_seq, y.head_seq, y.total_tokens)


def test_imported_conversation_is_live_and_keeps_its_activity_time(user, make_session):
    """The import counts as its latest use for expiry (it is not purged on arrival); updated_at is the original's."""
    old = make_session("old", owner=user, at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), timeout_seconds=3600)
    [imported] = transfer.import_bytes("".join(transfer.iter_json(old)).encode(), owner=user).imported
    copy = engine.session_get(imported.id, owner=user)
    assert copy.updated_at == old.updated_at
    assert not copy.is_expired()
    assert engine.count_expired().sessions == 1  # only the original


def test_markdown_export(user):
    session = rich_session(user)
    text = "".join(transfer.iter_markdown(session))
    assert text.startswith("# Lisbon trip\n")
    assert (
        "## 4. user · ana · 2026-03-01T09:30:10.123456+00:00 · turn 1 · kept in history, not in the session's list"
        in text
    )
    assert (
        '## 8. tool · weather · 2026-03-01T09:30:21.123456+00:00 · turn 2 · tool call `call_7`\n\n{"temp": 21}' in text
    )
    assert "Enjoy the trip." in text and "Before the clear" not in text


def test_zip_export_holds_one_document_per_conversation_and_imports_back(user, other_user, make_session):
    rich_session(user)
    make_session("second", owner=user, system_prompt="Hi")
    make_session("not-mine", owner=other_user)
    data = b"".join(transfer.iter_zip(transfer.user_sessions(user)))
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    docs = [json.loads(archive.read(name)) for name in archive.namelist()]
    assert sorted(d["id"] for d in docs) == ["second", "trip-plan"]
    result = transfer.import_bytes(data, owner=other_user)
    assert sorted(i.id for i in result.imported) == ["second", "trip-plan"]  # free ids for bob: kept
    for doc in docs:
        copy = export_doc(engine.session_get(doc["id"], owner=other_user))
        assert without_ids(copy) == without_ids(doc)


def test_branch_lineage_follows_the_import(user, other_user, make_session):
    """A branch exported with its parent points at the parent's imported copy; exported alone into
    the account that still has the parent, at the parent itself."""
    parent = make_session("parent", owner=user)
    engine.message_append("parent", "user", "hello", owner=user)
    child = make_session("child", owner=user)
    ConversationSession.objects.filter(pk=child.pk).update(parent=parent, parent_seq=1, lineage="branch")
    doc = export_doc(engine.session_get("child", owner=user))
    assert doc["lineage"] == {"kind": "branch", "parent_id": "parent", "parent_key": str(parent.pk), "parent_seq": 1}

    both = b"".join(transfer.iter_zip(transfer.user_sessions(user)))
    transfer.import_bytes(both, owner=other_user)
    child_copy = engine.session_get("child", owner=other_user)
    assert child_copy.parent == engine.session_get("parent", owner=other_user)
    assert (child_copy.parent_seq, child_copy.lineage) == (1, "branch")

    [alone] = transfer.import_bytes(json.dumps(doc).encode(), owner=user).imported
    assert alone.session.parent_id == parent.pk
    [stranger] = transfer.import_bytes(json.dumps(doc).encode(), owner=other_user).imported
    assert stranger.session.parent_id is None  # another user's conversation is never linked


def test_json_lines_and_a_list_of_documents_import(user, make_session):
    make_session("a", owner=user)
    make_session("b", owner=user)
    lines = "".join(transfer.iter_jsonl(transfer.user_sessions(user))).encode()
    assert lines.count(b"\n") == 2
    assert len(transfer.import_bytes(lines, owner=user).imported) == 2
    listed = json.dumps([export_doc(engine.session_get("a", owner=user))]).encode()
    assert len(transfer.import_bytes(listed, owner=user).imported) == 1
    assert ConversationSession.objects.filter(owner=user).count() == 5


# ---------------------------------------------------------------------------------------------
# ChatGPT and Open WebUI


def contents(session):
    return list(
        Message.objects.filter(session=session).order_by("seq").values_list("seq", "role", "content", "turn_number")
    )


def test_chatgpt_export_imports_the_current_branch(user):
    result = transfer.import_bytes(fixture("chatgpt_conversations.json"), owner=user)
    assert result.format_name == "ChatGPT export"
    boiling, pasta = (i.session for i in result.imported)
    assert boiling.sid == "6a1f3b2c-0d4e-4f5a-9b6c-7d8e9f0a1b2c" and boiling.title == "Boiling point of water"
    # Root and hidden system node skipped; the edited question's branch (u-2b) is the one imported;
    # the execution output is a tool message; the image part of a multimodal message is left out.
    assert contents(boiling) == [
        (1, "user", "What is the boiling point of water at sea level?", 1),
        (2, "assistant", "100 °C (212 °F) at one standard atmosphere.", 1),
        (3, "user", "And at the top of Mount Everest, roughly?", 2),
        (4, "assistant", "Roughly 71 °C, because the air pressure is about a third of sea level.", 2),
        (5, "tool", "70.6", 2),
        (6, "assistant", "The calculation gives 70.6 °C.", 2),
    ]
    first = Message.objects.get(session=boiling, seq=1)
    assert first.created_at == dt.datetime.fromtimestamp(1714557601.5, tz=dt.UTC)
    assert Message.objects.get(session=boiling, seq=2).metadata == {"chatgpt_id": "a-1", "model": "gpt-4o"}
    assert Message.objects.get(session=boiling, seq=5).name == "python"
    assert boiling.created_at == dt.datetime.fromtimestamp(1714557600, tz=dt.UTC)
    assert boiling.updated_at == dt.datetime.fromtimestamp(1714557697.5, tz=dt.UTC)
    assert (boiling.turn_count, boiling.last_seq, boiling.head_seq, boiling.low_seq) == (2, 6, None, 1)
    assert boiling.timeout_seconds is None and not boiling.is_expired()
    # The user_editable_context node (hidden, no parts) is skipped.
    assert contents(pasta)[0][2] == "Something quick with anchovies?" and len(contents(pasta)) == 2
    assert pasta.archived is True


def test_openwebui_export_imports_the_current_branch(user):
    result = transfer.import_bytes(fixture("openwebui_chats.json"), owner=user)
    assert result.format_name == "Open WebUI export"
    haiku, miles = (i.session for i in result.imported)
    assert haiku.title == "Seasonal haiku" and haiku.pinned is True
    assert haiku.system_prompt == "You are a poet who writes only haiku."
    rows = contents(haiku)
    assert [r[1] for r in rows] == ["system", "user", "assistant", "user", "assistant"]
    assert rows[2][2].startswith("Crisp air, amber light")  # the regenerated answer on currentId's branch
    assert [r[3] for r in rows] == [None, 1, 1, 2, 2]
    assert (haiku.head_seq, haiku.low_seq) == (1, 2)  # the system prompt is pinned, as session_create does
    assert Message.objects.get(session=haiku, seq=3).created_at == dt.datetime.fromtimestamp(1714730420, tz=dt.UTC)
    assert Message.objects.get(session=haiku, seq=3).metadata == {"openwebui_id": "m3", "model": "llama3.1:8b"}
    assert miles.sid == "1e7d3a4f-5b6c-4d7e-8f90-9a0b1c2d3e4f" and len(contents(miles)) == 2


def test_foreign_import_numbers_messages_as_engine_appends_do(user, settings):
    """Past max_messages, the list keeps the newest messages exactly as appending them one by one would."""
    settings.CONVO_MAX_MESSAGES = 4
    settings.CONVO_TIMEOUT_SECONDS = None
    messages = {}
    previous = None
    roles = ["system", "user", "assistant", "user", "assistant", "assistant", "user", "assistant", "user"]
    for n, role in enumerate(roles):
        node = f"n{n}"
        messages[node] = {"id": node, "parentId": previous, "childrenIds": [], "role": role,
                          "content": f"message {n} " * (n + 1), "timestamp": 1714730400 + n}  # fmt: skip
        if previous:
            messages[previous]["childrenIds"].append(node)
        previous = node
    chat = [{"id": "long", "title": "Long", "chat": {"history": {"messages": messages, "currentId": previous}},
             "created_at": 1714730400, "updated_at": 1714730410}]  # fmt: skip
    [imported] = transfer.import_bytes(json.dumps(chat).encode(), owner=user).imported
    engine.session_create("appended", owner=user, config=engine.SessionConfig.default())
    for n, role in enumerate(roles):
        engine.message_append("appended", role, f"message {n} " * (n + 1), owner=user)
    a, b = imported.session, engine.session_get("appended", owner=user)
    fields = ["last_seq", "low_seq", "head_seq", "turn_count", "total_tokens", "message_count"]
    assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
    assert [(r[0], r[1], r[3]) for r in contents(a)] == [(r[0], r[1], r[3]) for r in contents(b)]


# ---------------------------------------------------------------------------------------------
# Broken files: a clear error naming the conversation and field, and nothing imported


BROKEN = [
    ("chatgpt_bad_json.json", ["not valid JSON", "line"]),
    ("chatgpt_missing_mapping.json", ['conversation 2 ("Weeknight pasta")', "field mapping", "missing"]),
    ("chatgpt_cycle.json", ['conversation 2 ("Weeknight pasta")', "field mapping", "cycle"]),
    ("chatgpt_missing_current_node.json", ['conversation 2 ("Weeknight pasta")', "field current_node", "'no-such-node'"]),
    ("chatgpt_wrong_type.json", ["conversation 2", "field mapping['u-21'].message.content.parts", "expected a list, got a string"]),
    ("chatgpt_bad_role.json", ["conversation 2", "field mapping['u-21'].message.author.role", "'critic' is not a role"]),
    ("openwebui_missing_current.json", ['conversation 2 ("Miles to km")', "field chat.history.currentId", "'n9'"]),
    ("openwebui_cycle.json", ["conversation 2", "field chat.history.messages", "cycle"]),
    ("openwebui_wrong_type.json", ["conversation 2", "field chat.history.messages['n2'].content", "expected a string, got a number"]),
    ("openwebui_missing_history.json", ["conversation 2", "field chat.history", "missing"]),
    ("convo_bad_version.json", ["Unsupported format version 'convo.export/9'"]),
    ("convo_wrong_turn.json", ['conversation 1 ("Lisbon trip")', "field messages[3].turn", "the engine numbers"]),
    ("convo_missing_field.json", ['conversation 1 ("Lisbon trip")', "field config.max_tokens", "missing"]),
    ("convo_bad_time.json", ["conversation 1", "field messages[0].created_at", "not an ISO 8601 time"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "expected"), BROKEN)
def test_broken_files_name_the_conversation_and_field_and_import_nothing(user, name, expected):
    before = ConversationSession.objects.count(), Message.objects.count()
    with pytest.raises(transfer.ImportInvalid) as caught:
        transfer.import_bytes(fixture(name), owner=user)
    for part in expected:
        assert part in str(caught.value), (part, str(caught.value))
    assert (ConversationSession.objects.count(), Message.objects.count()) == before


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "The file is empty"),
        (b"[]", "empty list"),
        (b'{"hello": 1}', "Unrecognised file"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"PK\x03\x04garbage", "not a readable zip"),
        (b'{"format": "convo.export/1"}\n{"format": ', "Line 2 is not valid JSON"),
        (b'[{"format": "convo.export/1", "config": 5}]', "field config: expected an object, got a number"),
        (b"[NaN]", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'[{"mapping": {}, "current_node": ' + b"9" * 5000 + b"}]", "not valid JSON here: Exceeds the limit"),
        (b'{"format": "convo.export/1"}\n[' + b"[" * 100_000, "Line 2 is not valid JSON"),
    ],
)
def test_unreadable_files(user, raw, expected):
    with pytest.raises(transfer.ImportInvalid, match=expected):
        transfer.import_bytes(raw, owner=user)


def test_a_bad_conversation_late_in_a_file_imports_none_before_it(user):
    """Checked whole first: the good first conversation of a file whose second is bad is not written."""
    with pytest.raises(transfer.ImportInvalid):
        transfer.import_bytes(fixture("chatgpt_cycle.json"), owner=user)
    assert not ConversationSession.objects.filter(title="Boiling point of water").exists()


def test_content_over_the_limit_is_named(user, settings):
    settings.CONVO_MAX_CONTENT_CHARS = 20
    with pytest.raises(transfer.ImportInvalid, match=r"conversation 1 .*mapping\['u-1'\]\.message\.content.*too long"):
        transfer.import_bytes(fixture("chatgpt_conversations.json"), owner=user)


def test_size_limit(user, settings):
    settings.CONVO_IMPORT_MAX_BYTES = 100
    with pytest.raises(transfer.ImportTooLarge, match="largest import is 100 bytes"):
        transfer.import_bytes(fixture("openwebui_chats.json"), owner=user)


def test_an_id_clash_gets_a_new_id_and_never_overwrites(user, make_session):
    existing = make_session("1e7d3a4f-5b6c-4d7e-8f90-9a0b1c2d3e4f", owner=user, system_prompt="mine")
    result = transfer.import_bytes(fixture("openwebui_chats.json"), owner=user)
    miles = result.imported[1]
    assert miles.renamed and miles.id != existing.sid
    assert engine.session_get(existing.sid, owner=user).pk == existing.pk
    assert contents(existing) == [(1, "system", "mine", None)]
    assert Turn.objects.count() == 0


def test_no_current_node_imports_the_newest_branch(user):
    """ChatGPT's current_node null (or Open WebUI's currentId missing): the newest leaf's branch."""
    chatgpt = json.loads(fixture("chatgpt_conversations.json"))[:1]
    chatgpt[0]["current_node"] = None
    chatgpt[0]["mapping"]["a-2a"]["message"]["create_time"] = 1714557600.0 + 500  # the first edit, now newest
    [boiling] = transfer.import_bytes(json.dumps(chatgpt).encode(), owner=user).imported
    assert [r[2] for r in contents(boiling.session)][-2:] == ["And on Everest?", "About 70 °C."]
    webui = json.loads(fixture("openwebui_chats.json"))[:1]
    del webui[0]["chat"]["history"]["currentId"]
    [haiku] = transfer.import_bytes(json.dumps(webui).encode(), owner=user).imported
    assert contents(haiku.session)[-1][2].startswith("Snow hushes the streets")  # m5, the newest leaf


def test_a_leading_system_message_is_the_pinned_system_prompt(user):
    chatgpt = json.loads(fixture("chatgpt_conversations.json"))[:1]
    system = chatgpt[0]["mapping"]["sys-1"]["message"]
    system["content"]["parts"] = ["Answer in metric units."]
    del system["metadata"]["is_visually_hidden_from_conversation"]
    [imported] = transfer.import_bytes(json.dumps(chatgpt).encode(), owner=user).imported
    session = imported.session
    assert session.system_prompt == "Answer in metric units."
    assert (session.head_seq, session.low_seq) == (1, 2)
    assert contents(session)[:2] == [
        (1, "system", "Answer in metric units.", None),
        (2, "user", contents(session)[1][2], 1),
    ]
    assert [m.seq for m in engine.get_context(session)][0] == 1


def test_openwebui_failed_replies_without_content_are_skipped(user):
    chats = json.loads(fixture("openwebui_chats.json"))[1:]
    messages = chats[0]["chat"]["history"]["messages"]
    del messages["n2"]["content"]
    messages["n2"]["error"] = {"content": "Ollama: 500, message='Internal Server Error'"}
    [miles] = transfer.import_bytes(json.dumps(chats).encode(), owner=user).imported
    assert contents(miles.session) == [(1, "user", "Convert 5 miles to kilometres.", 1)]


def test_an_id_taken_between_the_look_and_the_insert_gets_a_new_id(user, make_session, monkeypatch):
    """The unique constraint has the last word: a concurrent writer's session is never overwritten."""
    from sessions_app.transfer import import_

    theirs = make_session("1e7d3a4f-5b6c-4d7e-8f90-9a0b1c2d3e4f", owner=user, system_prompt="theirs")
    monkeypatch.setattr(import_, "id_taken", lambda owner, sid: False)  # as if it came just after the look
    miles = transfer.import_bytes(fixture("openwebui_chats.json"), owner=user).imported[1]
    assert miles.renamed and miles.id != theirs.sid
    assert contents(miles.session)[0][2] == "Convert 5 miles to kilometres."
    assert contents(engine.session_get(theirs.sid, owner=user)) == [(1, "system", "theirs", None)]
