"""POST /api/v1/sessions/{id}/branch and the lineage fields of the session resource."""

import datetime as dt

import pytest

from sessions_app import engine
from sessions_app.models import ConversationSession, Message

from .test_api_support import api_for, assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(user):
    return api_for(user)


@pytest.fixture
def chat(api):
    assert api.post("/sessions", {"id": "chat", "system_prompt": "Be brief."}).status_code == 201
    for body in [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "tool", "content": "4", "tool_call_id": "call_1", "name": "calculator", "metadata": {"k": "v"}},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "Thanks"},
    ]:
        assert api.post("/sessions/chat/messages", body).status_code == 201
    assert api.put("/sessions/chat/state/variables/color", {"value": "blue"}).status_code == 200
    return "chat"


def test_branch_creates_a_session_with_the_messages_up_to_at_seq(api, chat):
    r = api.post("/sessions/chat/branch", {"at_seq": 3})
    assert r.status_code == 201
    body = r.json()
    assert body["id"] != "chat"
    assert (body["parent"], body["parent_seq"], body["lineage"]) == ("chat", 3, "branch")
    assert body["state"]["variables"] == {"color": "blue"}
    assert (body["message_count"], body["current_turn"], body["system_prompt"]) == (3, 1, "Be brief.")
    original = api.get("/sessions/chat/messages").json()["items"][:3]
    copied = api.get(f"/sessions/{body['id']}/messages").json()["items"]
    assert copied == original  # seqs, roles, names, tool_call_ids, times, tokens, metadata, turns
    assert api.get(f"/sessions/{body['id']}").json() == body
    # The parent shows no lineage of its own.
    parent = api.get("/sessions/chat").json()
    assert (parent["parent"], parent["parent_seq"], parent["lineage"]) == (None, None, None)


def test_the_parent_is_null_once_it_is_deleted(api, chat):
    branch = api.post("/sessions/chat/branch", {"at_seq": 2}).json()["id"]
    assert api.delete("/sessions/chat").status_code == 204
    body = api.get(f"/sessions/{branch}").json()
    assert (body["parent"], body["parent_seq"], body["lineage"]) == (None, 2, "branch")
    assert body["message_count"] == 2


def test_an_expired_session_can_be_branched(api, chat):
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    ConversationSession.objects.filter(sid="chat").update(updated_at=past, expires_at=past)
    r = api.post("/sessions/chat/branch", {"at_seq": 5})
    assert r.status_code == 201 and r.json()["expired"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"at_seq": 0},
        {"at_seq": -1},
        {"at_seq": 6},
        {"at_seq": 2**40},
        {"at_seq": "2"},
        {"at_seq": 2.0},
        {},
        {"at_seq": None},
        {"at_seq": 2, "x": 1},
    ],
)
def test_a_bad_at_seq_is_422_and_creates_nothing(api, chat, body):
    before = ConversationSession.objects.count()
    assert_error(api.post("/sessions/chat/branch", body), 422, "validation_error")
    assert ConversationSession.objects.count() == before


def test_a_seq_no_longer_in_history_is_422(api, chat):
    assert api.post("/sessions/chat/clear").status_code == 200
    assert api.post("/sessions/chat/messages", {"role": "user", "content": "again"}).status_code == 201
    r = api.post("/sessions/chat/branch", {"at_seq": 3})
    assert_error(r, 422, "validation_error")
    assert "at_seq" in r.json()["detail"]
    assert api.post("/sessions/chat/branch", {"at_seq": 6}).status_code == 201


def test_unknown_and_other_users_sessions_are_404(api, chat, other_user):
    assert_error(api.post("/sessions/nobody/branch", {"at_seq": 1}), 404, "not_found")
    assert_error(api_for(other_user).post("/sessions/chat/branch", {"at_seq": 1}), 404, "not_found")
    assert Message.objects.filter(session__owner=other_user).count() == 0


def test_branch_is_in_the_openapi_schema_with_its_statuses(api):
    spec = api.get("/openapi.json").json()
    operation = spec["paths"]["/api/v1/sessions/{id}/branch"]["post"]
    assert {"201", "404", "422"} <= operation["responses"].keys()
    assert spec["components"]["schemas"]["BranchIn"]["required"] == ["at_seq"]
    session_out = spec["components"]["schemas"]["SessionOut"]["properties"]
    assert {"parent", "parent_seq", "lineage"} <= session_out.keys()


def test_continued_and_edited_sessions_say_so(api, chat, user):
    key = engine.session_get("chat", owner=user).pk
    continued = engine.session_continue(key, owner=user)
    edited = engine.session_edit_branch(key, 5, owner=user)
    assert api.get(f"/sessions/{continued.sid}").json()["lineage"] == "continue"
    body = api.get(f"/sessions/{edited.sid}").json()
    assert (body["lineage"], body["parent_seq"], body["parent"]) == ("edit", 4, "chat")
