"""manage.py export_sessions and import_sessions."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from sessions_app import engine, transfer
from sessions_app.models import ConversationSession, Message

from .transfer_support import FIXTURES, export_doc, rich_session, without_ids

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_export_writes_json_lines(user, other_user, make_session):
    rich_session(user)
    make_session("second", owner=user)
    make_session("theirs", owner=other_user)
    everything = run("export_sessions").splitlines()  # no U+2028 and the like left unescaped
    assert sorted(json.loads(line)["id"] for line in everything) == ["second", "theirs", "trip-plan"]
    alice = [json.loads(line) for line in run("export_sessions", "--owner", "alice").splitlines()]
    assert sorted(d["id"] for d in alice) == ["second", "trip-plan"]
    [one] = run("export_sessions", "--owner", "alice", "--id", "trip-plan").splitlines()
    assert without_ids(json.loads(one)) == without_ids(export_doc(engine.session_get("trip-plan", owner=user)))
    [theirs] = run("export_sessions", "--id", "theirs").splitlines()  # an id only one owner has
    assert json.loads(theirs)["id"] == "theirs"


def test_export_to_a_file_and_import_it_back(user, other_user, tmp_path):
    original = rich_session(user)
    path = tmp_path / "out.jsonl"
    assert run("export_sessions", "--owner", "alice", "--output", str(path)) == ""
    out = run("import_sessions", str(path), "--owner", "bob")
    assert "Imported trip-plan: 9 message(s)" in out and "Imported 1 conversation(s) for bob." in out
    copy = engine.session_get("trip-plan", owner=other_user)
    assert without_ids(export_doc(copy)) == without_ids(export_doc(original))
    again = run("import_sessions", str(path), "--owner", "bob")
    assert "(its id trip-plan was taken)" in again
    assert ConversationSession.objects.filter(owner=other_user).count() == 2


@pytest.mark.parametrize("name", ["chatgpt_conversations.json", "openwebui_chats.json", "convo_export.json"])
def test_import_the_fixtures(user, name):
    out = run("import_sessions", str(FIXTURES / name), "--owner", "alice")
    assert "conversation(s) for alice" in out
    assert ConversationSession.objects.filter(owner=user).exists()


def test_the_checked_in_convo_export_imports_as_written(user):
    """The documented example file: imported and exported again, it is the same document."""
    doc = json.loads((FIXTURES / "convo_export.json").read_text())
    run("import_sessions", str(FIXTURES / "convo_export.json"), "--owner", "alice")
    copy = engine.session_get("trip-plan", owner=user)
    assert without_ids(export_doc(copy)) == without_ids(doc)


def test_a_zip_imports(user, other_user, tmp_path, make_session):
    rich_session(user)
    make_session("second", owner=user)
    path = tmp_path / "all.zip"
    path.write_bytes(b"".join(transfer.iter_zip(transfer.user_sessions(user))))
    assert "Imported 2 conversation(s) for bob." in run("import_sessions", str(path), "--owner", "bob")


def test_command_errors(user, other_user, make_session, tmp_path):
    make_session("same", owner=user)
    make_session("same", owner=other_user)
    with pytest.raises(CommandError, match="No user named 'carol'"):
        run("export_sessions", "--owner", "carol")
    with pytest.raises(CommandError, match="Several owners"):
        run("export_sessions", "--id", "same")
    with pytest.raises(CommandError, match="No conversation 'nope' of alice"):
        run("export_sessions", "--owner", "alice", "--id", "nope")
    with pytest.raises(CommandError, match="Cannot write"):
        run("export_sessions", "--output", str(tmp_path / "missing-dir" / "x.jsonl"))
    with pytest.raises(CommandError, match="No user named 'carol'"):
        run("import_sessions", str(FIXTURES / "openwebui_chats.json"), "--owner", "carol")
    with pytest.raises(CommandError, match="Cannot read"):
        run("import_sessions", str(tmp_path / "nothing.json"), "--owner", "alice")
    before = Message.objects.count(), ConversationSession.objects.count()
    with pytest.raises(CommandError, match=r"Nothing was imported\. conversation 2 .*field mapping.*cycle"):
        run("import_sessions", str(FIXTURES / "chatgpt_cycle.json"), "--owner", "alice")
    assert (Message.objects.count(), ConversationSession.objects.count()) == before


def test_a_bad_line_late_in_json_lines_imports_nothing(user, tmp_path, make_session):
    make_session("a", owner=user)
    good = "".join(transfer.iter_jsonl(transfer.user_sessions(user)))
    path = tmp_path / "mixed.jsonl"
    path.write_text(good + good.replace('"max_tokens": 8192, ', ""))
    with pytest.raises(CommandError, match=r"conversation 2, field config\.max_tokens: missing"):
        run("import_sessions", str(path), "--owner", "alice")
    assert ConversationSession.objects.count() == 1
