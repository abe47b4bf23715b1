"""The openai responder against a local server speaking the Chat Completions streaming protocol."""

import asyncio
import json
import logging

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.core import checks

from sessions_app import engine, events, replies
from sessions_app.models import Reply

from .fake_openai import chunk, text_chunks, tool_call_chunks, usage_chunk
from .replies_support import API_KEY, reply_to

pytestmark = pytest.mark.django_db(transaction=True)


def test_streams_text_and_stores_usage(fake_llm, make_session):
    """The request carries the model, stream flags, the context window as messages, the tools and the
    key; the streamed text is stored with the provider's usage beside the engine's estimate."""
    make_session("s", system_prompt="You are terse.")
    fake_llm.stream(*text_chunks("Hel", "lo", " world"), usage_chunk(21, 3))
    reply = reply_to("s", "Say hello", name="alice")
    assert (reply.status, reply.text, reply.responder, reply.model) == ("done", "Hello world", "openai", "fake-model")

    [request] = fake_llm.requests
    body = request["json"]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert body["model"] == "fake-model"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello", "name": "alice"},
    ]
    assert [t["function"]["name"] for t in body["tools"]] == [
        "calculator",
        "get_state_variable",
        "set_state_variable",
        "current_time",
    ]

    answer = engine.last_turn(engine.session_get("s")).assistant_response
    assert answer.content == "Hello world"
    meta = answer.metadata
    assert (meta["responder"], meta["model"], meta["finish_reason"]) == ("openai", "fake-model", "stop")
    assert (meta["usage_prompt_tokens"], meta["usage_completion_tokens"], meta["usage_total_tokens"]) == (
        "21",
        "3",
        "24",
    )
    assert meta["estimated_prompt_tokens"] == str(
        engine.estimate_tokens("You are terse.") + engine.estimate_tokens("Say hello")
    )
    assert int(meta["latency_ms"]) >= 0


def test_the_context_window_is_what_is_sent(fake_llm, make_session):
    """Older messages past max_tokens are not sent: exactly the engine's window."""
    make_session("s", system_prompt="sys", max_tokens=30)
    for i in range(5):
        engine.message_append("s", "user", f"question {i} " + "q" * 30)
        engine.message_append("s", "assistant", f"answer {i}")
    engine.message_append("s", "user", "latest")
    window = engine.context_window(engine.session_get("s"))
    fake_llm.stream(*text_chunks("ok"))
    replies.wait_reply(replies.start_reply("s").pk)
    sent = fake_llm.requests[0]["json"]["messages"]
    assert sent == [{"role": m.role, "content": m.content} for m in window.messages]
    assert sent[0] == {"role": "system", "content": "sys"} and len(sent) < 12


def test_tool_call_deltas_split_across_chunks(fake_llm, make_session):
    """Two parallel tool calls whose arguments arrive in pieces are assembled, run, stored as tool
    messages of the turn, and sent back after the assistant message that made them."""
    make_session("s")
    fake_llm.stream(
        *tool_call_chunks(
            ("call_calc", "calculator", ['{"expr', 'ession": "12', '*7"}']),
            ("call_set", "set_state_variable", ['{"key": "colour", ', '"value": "blue"}']),
            text="Let me check.",
        ),
        usage_chunk(50, 20),
    )
    fake_llm.stream(*text_chunks("It is ", "84."), usage_chunk(80, 4))
    reply = reply_to("s", "what is 12*7? remember blue")
    assert reply.status == "done" and reply.tool_rounds == 1
    assert reply.text == "Let me check.\n\nIt is 84."

    session = engine.session_get("s")
    assert session.variables == {"colour": "blue"}
    turn = engine.last_turn(session)
    assert [(t.name, t.tool_call_id, t.content) for t in turn.tool_calls] == [
        ("calculator", "call_calc", "84"),
        ("set_state_variable", "call_set", '{"key": "colour", "value": "blue", "saved": true}'),
    ]
    assert turn.tool_calls[0].metadata["arguments"] == '{"expression": "12*7"}'
    assert turn.is_complete and turn.assistant_response.content == reply.text
    meta = turn.assistant_response.metadata
    assert (meta["usage_prompt_tokens"], meta["usage_completion_tokens"], meta["tool_rounds"]) == ("130", "24", "1")

    second = fake_llm.requests[1]["json"]["messages"]
    assert second == [
        {"role": "user", "content": "what is 12*7? remember blue"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_calc",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": "12*7"}'},
                },
                {
                    "id": "call_set",
                    "type": "function",
                    "function": {"name": "set_state_variable", "arguments": '{"key": "colour", "value": "blue"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_calc", "content": "84"},
        {"role": "tool", "tool_call_id": "call_set", "content": '{"key": "colour", "value": "blue", "saved": true}'},
    ]

    # The next turn's request still carries the tool exchange in a valid shape.
    fake_llm.stream(*text_chunks("Sure."))
    reply_to("s", "thanks")
    third = fake_llm.requests[2]["json"]["messages"]
    assert [m["role"] for m in third] == ["user", "assistant", "tool", "tool", "assistant", "user"]
    assert third[1]["tool_calls"][0]["id"] == "call_calc"


def test_whole_tool_calls_without_index(fake_llm, make_session):
    """Servers that send each call whole, without an index, and the arguments as an object."""
    make_session("s")
    fake_llm.stream(
        chunk(
            {
                "tool_calls": [
                    {
                        "id": "a",
                        "type": "function",
                        "function": {"name": "calculator", "arguments": {"expression": "2*3"}},
                    }
                ]
            }
        ),
        chunk(
            {
                "tool_calls": [
                    {
                        "id": "b",
                        "type": "function",
                        "function": {"name": "calculator", "arguments": '{"expression": "4*5"}'},
                    }
                ]
            }
        ),
        chunk({}, "tool_calls"),
    )
    fake_llm.stream(*text_chunks("6 and 20."))
    assert reply_to("s", "two sums").status == "done"
    tools = engine.last_turn(engine.session_get("s")).tool_calls
    assert [(t.tool_call_id, t.content) for t in tools] == [("a", "6"), ("b", "20")]


def test_bad_tool_arguments_go_back_to_the_model(fake_llm, make_session):
    make_session("s")
    fake_llm.stream(*tool_call_chunks(("c1", "calculator", ['{"expression": ']), ("c2", "no_such_tool", ["{}"])))
    fake_llm.stream(*text_chunks("Sorry."))
    reply = reply_to("s", "compute")
    assert reply.status == "done"
    tools = engine.last_turn(engine.session_get("s")).tool_calls
    assert [t.content for t in tools] == [
        "Error: the arguments are not valid JSON.",
        "Error: there is no tool named 'no_such_tool'.",
    ]
    assert [t.metadata["status"] for t in tools] == ["error", "error"]


def test_tool_rounds_are_bounded(fake_llm, make_session, replies_env):
    """After CONVO_REPLY_MAX_TOOL_ROUNDS rounds the model is asked without tools."""
    make_session("s")
    replies_env.CONVO_REPLY_MAX_TOOL_ROUNDS = 2
    for i in range(2):
        fake_llm.stream(*tool_call_chunks((f"c{i}", "current_time", ["{}"])))
    fake_llm.stream(*tool_call_chunks(("c9", "current_time", ["{}"])))  # ignores that tools are gone
    reply = reply_to("s", "loop forever")
    assert (reply.status, reply.tool_rounds, reply.finish_reason) == ("done", 2, "max_tool_rounds")
    assert ["tools" in r["json"] for r in fake_llm.requests] == [True, True, False]
    assert len(engine.last_turn(engine.session_get("s")).tool_calls) == 2


def test_http_error_leaves_the_turn_open_and_can_be_retried(fake_llm, make_session):
    make_session("s")
    fake_llm.error(429, {"error": {"message": "Rate limit reached for fake-model", "type": "rate_limit"}})
    reply = reply_to("s", "hello")
    assert reply.status == "error"
    assert reply.error == "The language model server returned HTTP 429: Rate limit reached for fake-model"
    session = engine.session_get("s")
    turn = engine.last_turn(session)
    assert not turn.is_complete
    assert turn.metadata["reply_error"] == reply.error
    assert [m.role for m in engine.messages_all(session)] == ["user"]

    fake_llm.stream(*text_chunks("Hi!"))
    retry = replies.wait_reply(replies.start_reply("s").pk)
    assert retry.status == "done"
    turn = engine.last_turn(engine.session_get("s"))
    assert turn.is_complete and "reply_error" not in turn.metadata


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ({"chunks": [chunk({"content": "Hi"}), "data: {not json\n\n"]}, "malformed stream"),
        ({"chunks": [chunk({"content": "Hi"})], "done": False}, "ended before the reply was complete"),
        ({"chunks": [chunk({"content": "Hi"}), {"error": {"message": "model overloaded"}}]}, "model overloaded"),
        (
            {
                "chunks": [
                    chunk(
                        {"tool_calls": [{"index": 0, "id": "x", "function": {"arguments": "{}"}}]},
                        chunk({}, "tool_calls"),
                    )
                ]
            },
            "without a name",
        ),
    ],
    ids=["not-json", "truncated", "error-in-stream", "nameless-tool-call"],
)
def test_malformed_streams_are_errors(fake_llm, make_session, script, message):
    make_session("s")
    fake_llm.stream(*script["chunks"], done=script.get("done", True))
    reply = reply_to("s", "hello")
    assert reply.status == "error" and message in reply.error
    turn = engine.last_turn(engine.session_get("s"))
    assert not turn.is_complete and message in turn.metadata["reply_error"]


def test_error_body_that_is_not_json(fake_llm, make_session):
    make_session("s")
    fake_llm.error(502, "<html>Bad gateway</html>", content_type="text/html")
    assert reply_to("s", "hello").error == "The language model server returned HTTP 502: <html>Bad gateway</html>"


def test_a_stalled_stream_times_out(fake_llm, make_session, replies_env):
    replies_env.CONVO_LLM_TIMEOUT = 0.3
    make_session("s")
    fake_llm.stream(chunk({"content": "Hel"}), mode="stall")
    reply = reply_to("s", "hello")
    assert reply.status == "error"
    port = fake_llm.server.server_address[1]
    assert reply.error == f"The language model server (127.0.0.1:{port}) did not answer within 0.3 seconds."
    assert not engine.last_turn(engine.session_get("s")).is_complete


def test_unreachable_server(replies_env, make_session):
    replies_env.CONVO_RESPONDER = "openai"
    replies_env.CONVO_LLM_MODEL = "m"
    replies_env.CONVO_LLM_BASE_URL = "http://127.0.0.1:8399/v1"  # nothing listens there
    make_session("s")
    reply = reply_to("s", "hello")
    assert reply.error == "Could not connect to the language model server (127.0.0.1:8399)."


def test_stop_cancels_the_provider_call(fake_llm, make_session, replies_env):
    """Stop closes the HTTP stream itself (the server sees the client leave) and stores the partial."""
    replies_env.CONVO_REPLY_SAVE_INTERVAL = 0
    make_session("s")
    fake_llm.stream(*text_chunks("Once ", "upon ", "a time")[:-1], mode="hold")
    _, reply = replies.append_and_reply("s", "tell a story")
    assert fake_llm.holding.wait(10)
    for _ in range(200):  # the client has read what was sent (bounded)
        reply.refresh_from_db()
        if reply.text == "Once upon a time" or replies.running_reply("s") is None:
            break
        fake_llm.client_left.wait(0.02)
    assert replies.stop_reply("s")
    reply = replies.wait_reply(reply.pk)
    assert (reply.status, reply.text) == ("stopped", "Once upon a time")
    assert fake_llm.client_left.wait(10)
    answer = engine.last_turn(engine.session_get("s")).assistant_response
    assert (answer.content, answer.metadata["finish_reason"]) == ("Once upon a time", "stopped")


def test_stop_before_the_server_answers(fake_llm, make_session, replies_env):
    """Stop while the server has not even sent its headers still ends the call at once: nothing is
    stored, the turn stays open for a retry."""
    replies_env.CONVO_LLM_TIMEOUT = 60
    make_session("s")
    fake_llm.stream(mode="no_headers")
    _, reply = replies.append_and_reply("s", "hello")
    assert fake_llm.holding.wait(10)
    replies.stop_reply("s")
    reply = replies.wait_reply(reply.pk, timeout=10)  # far less than the 60 s read timeout
    assert (reply.status, reply.message_seq) == ("stopped", None)
    assert not engine.last_turn(engine.session_get("s")).is_complete


def test_regenerate_sends_the_turn_without_its_earlier_response(fake_llm, make_session):
    make_session("s")
    fake_llm.stream(*tool_call_chunks(("c1", "calculator", ['{"expression": "1+1"}'])))
    fake_llm.stream(*text_chunks("Two."))
    reply_to("s", "1+1?")
    fake_llm.stream(*text_chunks("It is 2."))
    again = replies.wait_reply(replies.start_reply("s", regenerate=True).pk)
    assert again.text == "It is 2."
    assert fake_llm.requests[2]["json"]["messages"] == [{"role": "user", "content": "1+1?"}]
    session = engine.session_get("s")
    assert engine.last_turn(session).assistant_response.content == "It is 2."
    assert [m.content for m in engine.messages_all(session) if m.role == "assistant"] == ["Two.", "It is 2."]


def test_a_plain_json_answer_is_understood(fake_llm, make_session):
    """A server that ignores stream=true and sends one completion still works."""
    make_session("s")
    fake_llm.completion(
        {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Plain."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
    )
    reply = reply_to("s", "hi")
    assert reply.text == "Plain."
    assert engine.last_turn(engine.session_get("s")).assistant_response.metadata["usage_total_tokens"] == "6"


def test_the_api_key_never_leaks(fake_llm, make_session, caplog):
    """A server echoing the key in its error: the key reaches no stored error, turn metadata, log
    line or exception text; the label and the responder's repr do not show it either."""
    caplog.set_level(logging.DEBUG)
    make_session("s")
    fake_llm.error(401, {"error": {"message": f"Incorrect API key provided: {API_KEY}. Half: {API_KEY[:20]}"}})
    reply = reply_to("s", "hello")
    assert reply.status == "error" and "Incorrect API key provided: [redacted]" in reply.error
    turn = engine.last_turn(engine.session_get("s"))
    stored = [reply.error, reply.text, json.dumps(turn.metadata), caplog.text, replies.responder_label()]
    from sessions_app.replies.responders import ProviderError, get_responder

    stored += [repr(get_responder()), str(ProviderError(f"boom Bearer {API_KEY}"))]
    for text in stored:
        assert API_KEY not in text and API_KEY[:20] not in text and API_KEY[-20:] not in text
    assert "Bearer [redacted]" in stored[-1]
    assert replies.responder_label() == f"fake-model on 127.0.0.1:{fake_llm.server.server_address[1]}"


def test_a_key_in_the_base_url_stays_out_of_the_logs(fake_llm, make_session, replies_env, caplog):
    """Some gateways take the key in the URL: httpx logs the URL, the log line is redacted."""
    caplog.set_level(logging.DEBUG)
    replies_env.CONVO_LLM_BASE_URL = f"{fake_llm.url}?key={API_KEY}"
    make_session("s")
    fake_llm.stream(*text_chunks("ok"))
    assert reply_to("s", "hello").status == "done"
    assert fake_llm.requests[0]["path"] == f"/v1/chat/completions?key={API_KEY}"
    assert "HTTP Request: POST" in caplog.text and "[redacted]" in caplog.text
    assert API_KEY not in caplog.text


def test_the_admin_never_shows_the_key(fake_llm, make_session, admin_client):
    make_session("s")
    fake_llm.error(401, {"error": {"message": f"bad key {API_KEY}"}})
    reply = reply_to("s", "hello")
    for url in (
        "/admin/sessions_app/reply/",
        f"/admin/sessions_app/reply/{reply.pk}/change/",
        "/admin/sessions_app/turnentry/",  # the turn list, which shows the error in the turn's metadata
    ):
        page = admin_client.get(url)
        assert page.status_code == 200 and API_KEY.encode() not in page.content
    assert b"[redacted]" in admin_client.get("/admin/sessions_app/turnentry/").content


async def test_an_error_is_pushed_to_the_page(fake_llm, close_async_db):
    """A failed reply sends a REPLY error event with the message (and without the key)."""
    session = await database_sync_to_async(engine.session_create)("s")
    layer = get_channel_layer()
    page = await layer.new_channel()
    await layer.group_add(events.group_name(session.pk), page)
    fake_llm.error(500, {"error": {"message": f"internal failure for {API_KEY}"}})
    await database_sync_to_async(replies.append_and_reply)("s", "hello")
    for _ in range(100):
        event = await asyncio.wait_for(layer.receive(page), timeout=15)
        if event["kind"] == events.REPLY and event["state"] == "error":
            break
    assert event["error"] == "The language model server returned HTTP 500: internal failure for [redacted]"
    assert API_KEY not in json.dumps(event)


def test_settings_are_checked(settings):
    from sessions_app.apps import check_responder_settings

    settings.CONVO_RESPONDER = "gpt"
    [error] = check_responder_settings()
    assert error.level == checks.ERROR and "CONVO_RESPONDER must be one of builtin, openai" in error.msg
    settings.CONVO_RESPONDER = "openai"
    settings.CONVO_LLM_MODEL = ""
    assert "CONVO_LLM_MODEL must be set" in check_responder_settings()[0].msg
    settings.CONVO_LLM_MODEL = "m"
    assert check_responder_settings() == []


def test_misconfiguration_stores_nothing(replies_env, make_session):
    from django.core.exceptions import ImproperlyConfigured

    replies_env.CONVO_RESPONDER = "openai"
    replies_env.CONVO_LLM_MODEL = ""
    make_session("s")
    with pytest.raises(ImproperlyConfigured):
        replies.append_and_reply("s", "hello")
    assert engine.messages_all(engine.session_get("s")) == []
    assert not Reply.objects.exists()
