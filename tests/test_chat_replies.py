"""The chat UI's assistant replies: Send starts one (user role only), a second Send is refused while
it runs, Stop stores the partial, Regenerate and Retry, failures shown with a Retry, owner-only URLs.

Replies run in threads of this process, so these tests commit for real (transaction=True).
"""

import datetime as dt
import re
import time

import pytest
from django.test import Client
from django.utils import timezone

from sessions_app import engine, replies
from sessions_app.models import Reply

from .fake_openai import chunk, text_chunks
from .replies_support import API_KEY

pytestmark = pytest.mark.django_db(transaction=True)

HX = {"HTTP_HX_REQUEST": "true"}
BUILTIN = "built-in responder — no language model configured"


@pytest.fixture
def client(user):
    c = Client(HTTP_HOST="localhost")
    c.force_login(user)
    return c


@pytest.fixture
def stranger(other_user):
    c = Client(HTTP_HOST="localhost")
    c.force_login(other_user)
    return c


@pytest.fixture
def chat(user, make_session, replies_env):
    return make_session("talk", owner=user, system_prompt="Be brief.", max_messages=100)


def send(client, content, role="user", **extra):
    return client.post("/c/talk/send/", {"role": role, "content": content, **extra}, **HX)


def finished(session_id="talk"):
    """Wait for the session's newest reply to end; return its row."""
    reply = replies.latest_reply(session_id)
    assert reply is not None, "no reply was started"
    return replies.wait_reply(reply.pk, timeout=15)


def running_with_text(session_id="talk"):
    """Wait (bounded) until the running reply has stored some text; return its row."""
    for _ in range(500):
        reply = replies.running_reply(session_id)
        if reply is not None and reply.text:
            return reply
        time.sleep(0.02)
    raise AssertionError("the reply never stored any text")


def page(client):
    return client.get("/c/talk/").content.decode()


def actions(html):
    start = html.index('id="reply-actions"')
    return html[start : html.index("</div>", start)]


# ---------------------------------------------------------------------------------------------
# Send


def test_a_user_message_starts_a_reply_with_a_tool_call(client, chat):
    """Send "what is 12*7?": the builtin calls the calculator, the answer completes the turn, and the
    page shows the tool call in the timeline and offers Regenerate."""
    response = send(client, "what is 12*7?")
    assert response.status_code == 200
    assert 'id="msg-2"' in response.content.decode()  # the user's message, out of band
    reply = finished()
    assert reply.status == "done" and reply.text == "12*7 = 84."
    session = engine.session_get("talk")
    assert [m.role for m in engine.messages_all(session)] == ["system", "user", "tool", "assistant"]
    turn = engine.last_turn(session)
    assert turn.is_complete and turn.assistant_response.content == "12*7 = 84."
    html = page(client)
    timeline = html[html.index('id="timeline"') : html.index('id="state-panel"')]
    assert re.search(r"tool calculator <code>call_\w+</code></span> 84", timeline)
    assert "Regenerate" in actions(html) and "Retry" not in actions(html)
    assert 'class="msg role-assistant streaming"' not in html  # nothing running


@pytest.mark.parametrize(
    "data",
    [
        {"role": "assistant", "content": "written by hand"},
        {"role": "system", "content": "a note"},
        {"role": "tool", "content": "42", "tool_call_id": "call_1", "name": "calculator"},
    ],
)
def test_other_roles_start_no_reply(client, chat, data):
    """An operator writing a transcript by hand: the message is stored, no reply starts."""
    assert client.post("/c/talk/send/", data, **HX).status_code == 200
    assert not Reply.objects.exists()
    assert engine.session_get("talk").message_count == 2


def test_a_second_send_while_replying_is_refused_and_stores_nothing(client, chat, replies_env):
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.2
    assert send(client, "tell me a long story").status_code == 200
    count = engine.session_get("talk").message_count
    refused = send(client, "and another thing")
    assert refused.status_code == 409
    html = refused.content.decode()
    assert 'role="alert"' in html and "still replying" in html
    assert "and another thing</textarea>" in html  # the text is kept in the composer
    assert engine.session_get("talk").message_count == count
    assert Reply.objects.count() == 1
    assert replies.stop_reply("talk")
    finished()


def test_send_with_a_misconfigured_responder_is_refused(client, chat, replies_env):
    replies_env.CONVO_RESPONDER = "openai"
    replies_env.CONVO_LLM_MODEL = ""
    response = send(client, "hello?")
    assert response.status_code == 503
    assert "CONVO_LLM_MODEL must be set" in response.content.decode()
    assert engine.session_get("talk").message_count == 1 and not Reply.objects.exists()


# ---------------------------------------------------------------------------------------------
# A page opened mid-reply, Stop


def test_a_page_opened_mid_reply_shows_the_text_so_far_and_stop(client, chat, replies_env):
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.1
    replies_env.CONVO_REPLY_SAVE_INTERVAL = 0
    send(client, "hello there")
    reply = running_with_text()
    html = page(client)
    stream = html[html.index('id="reply-stream"') : html.index('id="reply-actions"')]
    assert 'aria-live="polite"' in stream
    assert f'data-reply="{reply.pk}"' in stream and "replying…" in stream
    assert reply.text.strip() in stream  # the text so far (the page may have a little more)
    # Send became Stop (issue 12): the composer's Stop submits the page's stop form.
    assert 'id="stop-form"' in html and 'action="/c/talk/reply/stop/"' in html and 'form="stop-form"' in html
    assert replies.stop_reply("talk")
    finished()


def test_stop_stores_the_partial_reply(client, chat, fake_llm, replies_env):
    """Stop cancels the provider call itself; the text so far is stored with finish reason stopped."""
    replies_env.CONVO_REPLY_SAVE_INTERVAL = 0
    fake_llm.stream(*text_chunks("The first half", " of an answer")[:-1], mode="hold")
    send(client, "explain everything")
    running_with_text()
    response = client.post("/c/talk/reply/stop/", **HX)
    assert response.status_code == 204
    reply = finished()
    assert reply.status == "stopped" and reply.finish_reason == "stopped"
    assert fake_llm.client_left.wait(5)  # the model's stream was closed, not just the display
    answer = engine.last_turn(engine.session_get("talk")).assistant_response
    assert answer.content == "The first half of an answer"
    assert answer.metadata["finish_reason"] == "stopped"
    html = page(client)
    assert 'title="finish reason">stopped</span>' in html
    assert "Regenerate" in actions(html)


def test_stop_without_a_running_reply_says_so(client, chat):
    response = client.post("/c/talk/reply/stop/", **HX)
    assert response.status_code == 200
    assert "no reply to stop" in response.content.decode()


def test_stop_without_htmx_goes_back_to_the_page(client, chat, replies_env):
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.2
    client.post("/c/talk/send/", {"role": "user", "content": "hi"})
    response = client.post("/c/talk/reply/stop/")
    assert response.status_code == 302 and response["Location"] == "/c/talk/"
    assert finished().status == "stopped"


# ---------------------------------------------------------------------------------------------
# Regenerate and Retry


def test_regenerate_answers_the_last_turn_again(client, chat):
    send(client, "hello there")
    first = finished()
    response = client.post("/c/talk/reply/regenerate/", **HX)
    assert response.status_code == 200 and 'id="reply-actions"' in response.content.decode()
    second = finished()
    assert second.pk != first.pk and second.status == "done" and second.regenerate
    session = engine.session_get("talk")
    assistants = [m for m in engine.messages_all(session) if m.role == "assistant"]
    assert [m.seq for m in assistants] == [first.message_seq, second.message_seq]
    assert engine.last_turn(session).assistant_response.seq == second.message_seq
    assert 'title="A regenerated answer">regenerated</span>' in page(client)


def test_regenerate_while_replying_is_refused(client, chat, replies_env):
    send(client, "hello there")
    finished()
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.2
    client.post("/c/talk/reply/regenerate/", **HX)
    refused = client.post("/c/talk/reply/regenerate/", **HX)
    assert refused.status_code == 409 and "still replying" in refused.content.decode()
    assert Reply.objects.count() == 2
    replies.stop_reply("talk")
    finished()


def test_retry_needs_an_open_turn(client, chat):
    nothing = client.post("/c/talk/reply/retry/", **HX)
    assert nothing.status_code == 409 and "no message to reply to" in nothing.content.decode()
    send(client, "hello there")
    finished()
    answered = client.post("/c/talk/reply/retry/", **HX)
    assert answered.status_code == 409
    assert 'role="alert"' in answered.content.decode() and "regenerate it" in answered.content.decode()
    assert Reply.objects.count() == 1


def test_an_unanswered_turn_offers_a_reply(client, chat):
    """A user message stored without a reply (by the API or a script) gets a Reply button."""
    engine.message_append("talk", "user", "what is 6*7?")
    assert "Reply</button>" in actions(page(client)) and "no reply yet" in actions(page(client))
    response = client.post("/c/talk/reply/retry/", **HX)
    assert response.status_code == 200
    assert finished().text == "6*7 = 42."
    assert "Regenerate</button>" in actions(page(client))


def test_a_failed_reply_shows_the_error_and_retry_completes_the_turn(client, chat, fake_llm):
    fake_llm.error(500, {"error": {"message": "The model crashed", "type": "server_error"}})
    send(client, "hello there")
    failed = finished()
    assert failed.status == "error"
    session = engine.session_get("talk")
    turn = engine.last_turn(session)
    assert not turn.is_complete and "The model crashed" in turn.metadata["reply_error"]
    assert [m.role for m in engine.messages_all(session)] == ["system", "user"]
    html = page(client)
    stream = html[html.index('id="reply-stream"') : html.index('id="reply-actions"')]
    assert "The assistant could not reply to turn 1." in stream and "The model crashed" in stream
    assert "Retry</button>" in actions(html) and "could not reply to turn 1:</strong> " in actions(html)
    assert "The model crashed" in actions(html)  # the reason next to Retry, always (issue 12)
    timeline = html[html.index('id="timeline"') : html.index('id="state-panel"')]
    assert 'class="turn-error"' in timeline and "The model crashed" in timeline

    fake_llm.stream(*text_chunks("Better", " now."))
    assert client.post("/c/talk/reply/retry/", **HX).status_code == 200
    done = finished()
    assert done.status == "done" and done.text == "Better now."
    turn = engine.last_turn(engine.session_get("talk"))
    assert turn.is_complete and "reply_error" not in turn.metadata
    html = page(client)
    assert "could not reply" not in html and 'class="turn-error"' not in html


def test_an_expired_session_offers_no_reply_actions(client, user, make_session, replies_env):
    make_session("old", owner=user, timeout_seconds=1, at=timezone.now() - dt.timedelta(seconds=5))
    html = client.get("/c/old/").content.decode()
    assert "Regenerate" not in html and "Retry</button>" not in html
    refused = client.post("/c/old/reply/retry/", **HX)
    assert refused.status_code == 409 and "expired" in refused.content.decode()


# ---------------------------------------------------------------------------------------------
# Responder label, ownership, CSRF


def test_the_page_names_the_responder(client, chat):
    assert f"Replies: {BUILTIN}" in page(client)


def test_the_page_names_the_model_but_never_the_key(client, chat, fake_llm):
    html = page(client)
    assert "Replies: fake-model on 127.0.0.1" in html
    assert API_KEY not in html and fake_llm.url not in html


@pytest.mark.parametrize("url", ["/c/talk/reply/regenerate/", "/c/talk/reply/retry/", "/c/talk/reply/stop/"])
def test_reply_urls_are_owner_only(stranger, client, chat, url):
    assert stranger.post(url, **HX).status_code == 404
    assert stranger.post("/c/talk/send/", {"role": "user", "content": "hi"}, **HX).status_code == 404
    assert not Reply.objects.exists() and engine.session_get("talk").message_count == 1
    anonymous = Client(HTTP_HOST="localhost").post(url)
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    assert client.get(url).status_code == 405


def test_reply_urls_need_the_csrf_token(user, chat):
    c = Client(HTTP_HOST="localhost", enforce_csrf_checks=True)
    c.force_login(user)
    for url in ("/c/talk/reply/regenerate/", "/c/talk/reply/retry/", "/c/talk/reply/stop/"):
        assert c.post(url, **HX).status_code == 403
    token = re.search(r'"X-CSRFToken": "([^"]+)"', c.get("/c/talk/").content.decode()).group(1)
    assert c.post("/c/talk/send/", {"role": "user", "content": "hi"}, HTTP_X_CSRFTOKEN=token, **HX).status_code == 200
    finished()
    response = c.post("/c/talk/reply/regenerate/", HTTP_X_CSRFTOKEN=token, **HX)
    assert response.status_code == 200
    assert finished().regenerate


def test_the_streamed_text_is_escaped(client, chat, fake_llm, replies_env):
    replies_env.CONVO_REPLY_SAVE_INTERVAL = 0
    fake_llm.stream(
        chunk({"role": "assistant", "content": ""}), chunk({"content": "<img src=x onerror=alert(1)>"}), mode="hold"
    )
    send(client, "hi")
    running_with_text()
    html = page(client)
    stream = html[html.index('id="reply-stream"') : html.index('id="reply-actions"')]
    assert "&lt;img src=x onerror=alert(1)&gt;" in stream and "<img" not in stream
    replies.stop_reply("talk")
    finished()
