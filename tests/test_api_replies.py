"""Assistant replies through the API: "respond": true, POST/GET /reply, /reply/stop."""

import pytest

from sessions_app import engine, replies
from sessions_app.api.schemas import reply_out

from .test_api_support import api_for, assert_error

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api(user, replies_env):
    client = api_for(user)
    assert client.put("/sessions/chat", {"system_prompt": "Be brief."}).status_code == 201
    return client


def wait_done(api, session_id="chat"):
    body = api.get(f"/sessions/{session_id}/reply").json()
    return reply_out(replies.wait_reply(body["id"], timeout=15), session_id)


def test_respond_true_starts_a_reply_that_completes_the_turn_with_a_tool_call(api):
    response = api.post("/sessions/chat/messages", {"role": "user", "content": "what is 12*7?", "respond": True})
    assert response.status_code == 201
    body = response.json()
    assert body["seq"] == 2 and body["turn"] == 1
    assert body["reply"]["status"] == "running" and body["reply"]["turn"] == 1
    done = wait_done(api)
    assert done["status"] == "done" and "84" in done["text"]
    turn = api.get("/sessions/chat/turns/1").json()
    assert turn["complete"] is True
    assert [t["name"] for t in turn["tool_calls"]] == ["calculator"]
    assert turn["tool_calls"][0]["content"] == "84"
    assert turn["assistant_response"]["metadata"]["responder"] == "builtin"
    assert turn["assistant_response"]["metadata"]["finish_reason"] == "stop"


def test_append_without_respond_has_no_reply_field(api):
    body = api.post("/sessions/chat/messages", {"role": "user", "content": "hi"}).json()
    assert "reply" not in body
    assert_error(api.get("/sessions/chat/reply"), 404, "not_found")


def test_respond_is_only_for_user_messages(api):
    response = api.post("/sessions/chat/messages", {"role": "assistant", "content": "x", "respond": True})
    assert "respond" in assert_error(response, 422, "validation_error")["detail"]
    assert engine.session_get("chat").message_count == 1


def test_a_second_respond_while_replying_is_refused_and_stores_nothing(api, replies_env):
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.2
    api.post("/sessions/chat/messages", {"role": "user", "content": "tell me something", "respond": True})
    count = engine.session_get("chat").message_count
    refused = api.post("/sessions/chat/messages", {"role": "user", "content": "again", "respond": True})
    assert_error(refused, 409, "reply_in_progress")
    assert engine.session_get("chat").message_count == count
    stop = api.post("/sessions/chat/reply/stop")
    assert stop.status_code == 200
    assert stop.json()["stopped"] is True
    assert stop.json()["reply"]["status"] == "stopped"
    assert stop.json()["reply"]["finish_reason"] == "stopped"
    assert api.post("/sessions/chat/reply/stop").json() == {"stopped": False, "reply": None}


def test_regenerate_completes_the_turn_again_and_keeps_the_old_response(api):
    api.post("/sessions/chat/messages", {"role": "user", "content": "hello there", "respond": True})
    first = wait_done(api)
    assert_error(api.post("/sessions/chat/reply", {}), 409, "nothing_to_reply")
    started = api.post("/sessions/chat/reply", {"regenerate": True})
    assert started.status_code == 202 and started.json()["regenerate"] is True
    second = wait_done(api)
    assert second["message_seq"] > first["message_seq"]
    assistants = [m for m in api.get("/sessions/chat/messages").json()["items"] if m["role"] == "assistant"]
    assert len(assistants) == 2
    assert api.get("/sessions/chat/turns/1").json()["assistant_response"]["seq"] == second["message_seq"]


def test_reply_endpoints_hide_other_users_sessions(api, other_user):
    stranger = api_for(other_user)
    assert_error(stranger.post("/sessions/chat/reply", {}), 404, "not_found")
    assert_error(stranger.get("/sessions/chat/reply"), 404, "not_found")
    assert_error(stranger.post("/sessions/chat/reply/stop"), 404, "not_found")
    respond = {"role": "user", "content": "hi", "respond": True}
    assert_error(stranger.post("/sessions/chat/messages", respond), 404, "not_found")
