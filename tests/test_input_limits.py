"""The input limits (settings CONVO_MAX_*): one check in the engine, the same answer at every entry
point. Over a size limit: the engine raises InputTooLarge, the API answers 413, a form shows the
error inline (422); anything else invalid is a 422; nothing is stored either way."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from sessions_app import engine
from sessions_app.models import ConversationSession, Message

from .test_api_support import api_for, assert_error

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def small_limits(settings):
    settings.CONVO_MAX_CONTENT_CHARS = 20
    settings.CONVO_MAX_NAME_CHARS = 8
    settings.CONVO_MAX_METADATA_BYTES = 100
    settings.CONVO_MAX_STATE_BYTES = 200
    settings.CONVO_MAX_JSON_DEPTH = 3
    return settings


@pytest.fixture
def mine(user):
    return engine.session_create("mine", owner=user)


@pytest.fixture
def client(user):
    client = Client()
    client.force_login(user)
    return client


def _stored(session_id="mine"):
    s = ConversationSession.objects.get(sid=session_id)
    return (s.last_seq, s.system_prompt, s.variables, s.data, s.metadata)


# ---------------------------------------------------------------------------------------------
# The engine.


def test_the_defaults_are_documented_ones(settings):
    assert settings.CONVO_MAX_CONTENT_CHARS == 32000
    assert settings.CONVO_MAX_NAME_CHARS == 256
    assert settings.CONVO_MAX_METADATA_BYTES == 65536
    assert settings.CONVO_MAX_STATE_BYTES == 262144
    assert settings.CONVO_MAX_JSON_DEPTH == 64
    assert settings.CONVO_WS_MAX_FRAME_BYTES == 65536


def test_engine_text_limits(mine, small_limits):
    before = _stored()
    with pytest.raises(engine.InputTooLarge, match="the limit is 20"):
        engine.message_append("mine", "user", "x" * 21)
    with pytest.raises(engine.InputTooLarge):
        engine.session_update("mine", system_prompt="x" * 21)
    with pytest.raises(engine.InputTooLarge):
        engine.state_set("mine", "k", "x" * 21)
    with pytest.raises(engine.SessionValidationError, match="at most 8"):
        engine.message_append("mine", "user", "hi", name="n" * 9)
    with pytest.raises(engine.SessionValidationError, match="at most 8"):
        engine.state_set("mine", "k" * 9, "v")
    with pytest.raises(engine.SessionValidationError, match="at most 8"):
        engine.state_set_data("mine", "k" * 9, 1)
    with pytest.raises(engine.InputTooLarge):
        engine.session_create("big", system_prompt="x" * 21)
    assert _stored() == before and not ConversationSession.objects.filter(sid="big").exists()
    engine.message_append("mine", "user", "x" * 20, name="n" * 8)  # at the limits: fine
    assert engine.session_get("mine").last_seq == 1


def test_engine_metadata_limit(mine, small_limits):
    with pytest.raises(engine.InputTooLarge, match="metadata is too large"):
        engine.message_append("mine", "user", "hi", metadata={"k": "v" * 100})
    with pytest.raises(engine.InputTooLarge):
        engine.session_update("mine", metadata={"k": "v" * 100})
    with pytest.raises(engine.SessionValidationError):
        engine.message_append("mine", "user", "hi", metadata={"long-key-x": "v"})
    assert not Message.objects.exists()
    engine.message_append("mine", "user", "hi", metadata={"k": "v" * 50})
    with pytest.raises(engine.InputTooLarge):
        engine.turn_set_metadata("mine", 1, {"note": "n" * 100})
    assert engine.get_turn(engine.session_get("mine"), 1).metadata == {}


def test_engine_state_limit_counts_the_whole_state(mine, small_limits):
    engine.state_set("mine", "a", "x" * 20)
    engine.state_set_data("mine", "b", ["y" * 15] * 7)
    before = _stored()
    with pytest.raises(engine.InputTooLarge, match="state is too large"):
        engine.state_set_data("mine", "c", ["z" * 15] * 4)
    with pytest.raises(engine.InputTooLarge, match="state is too large"):
        engine.state_set("mine", "d", "w" * 20)
    assert _stored() == before
    # Removing and clearing always work, even over a limit lowered since.
    small_limits.CONVO_MAX_STATE_BYTES = 10
    assert engine.state_remove_data("mine", "b") is True
    engine.state_clear("mine")


def test_engine_json_depth_limit(mine, small_limits):
    engine.state_set_data("mine", "ok", [[[1]]])
    with pytest.raises(engine.SerializationError, match="nested too deeply"):
        engine.state_set_data("mine", "deep", [[[[1]]]])
    with pytest.raises(engine.SerializationError, match="nested too deeply"):
        engine.state_set_data("mine", "deep", {"a": {"b": {"c": {}}}})
    assert engine.session_get("mine").data == {"ok": [[[1]]]}


def test_parse_json_refuses_what_json_loads_cannot_survive(settings):
    for text, message in [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("[" * 65 + "]" * 65, "nested too deeply"),
        ("1" * 5000, "more than 4300 digits"),
        ("Infinity", "not a JSON number"),
        ("{", "Not valid JSON"),
        ("x" * (settings.CONVO_MAX_STATE_BYTES + 1), "too large"),
    ]:
        with pytest.raises(engine.SessionValidationError, match=message):
            engine.parse_json("The value", text)
    assert engine.parse_json("v", "[" * 64 + "]" * 64) is not None


def test_parse_frame(settings):
    assert engine.parse_frame('{"type": "hello"}') == {"type": "hello"}
    for frame in ["[" * 5000, "[]", "1" * 5000, None, b"{}", '{"a": ' + "[" * 70 + "]" * 70 + "}"]:
        assert engine.parse_frame(frame) is None
    with pytest.raises(engine.InputTooLarge):
        engine.parse_frame(" " * (settings.CONVO_WS_MAX_FRAME_BYTES + 1))


# ---------------------------------------------------------------------------------------------
# The UI: the same limits, inline on the form.


def test_forms_show_the_limits_inline_and_store_nothing(client, mine, small_limits):
    before = _stored()
    cases = [
        ("/c/mine/send/", {"role": "user", "content": "x" * 21}, "the limit is 20"),
        ("/c/mine/send/", {"role": "user", "content": "hi", "name": "n" * 9}, "at most 8"),
        ("/c/mine/send/", {"role": "tool", "content": "hi", "tool_call_id": "c" * 9}, "at most 8"),
        ("/c/mine/edit/", {"system_prompt": "x" * 21, "max_messages": 5, "max_tokens": 5}, "the limit is 20"),
        ("/c/mine/state/variables/", {"key": "k", "value": "x" * 21}, "the limit is 20"),
        ("/c/mine/state/variables/", {"key": "k" * 9, "value": "v"}, "at most 8"),
        ("/c/mine/state/data/", {"key": "k", "value": "[[[[1]]]]"}, "nested too deeply"),
        ("/c/mine/state/data/", {"key": "k", "value": json.dumps(["y" * 40] * 4)}, "state is too large"),
        ("/c/mine/state/data/", {"key": "k", "value": "x" * 201}, "too large"),
    ]
    for url, data, message in cases:
        r = client.post(url, data, **HX)
        assert r.status_code == 422, (url, data)
        assert message in r.content.decode(), (url, data, r.content.decode()[:2000])
        assert _stored() == before
    r = client.post("/new/", {"session_id": "n", "system_prompt": "x" * 21, "max_messages": 5, "max_tokens": 5})
    assert r.status_code == 422 and "the limit is 20" in r.content.decode()
    assert not ConversationSession.objects.filter(sid="n").exists()


def test_form_fields_carry_the_limits_to_the_browser(client, mine, small_limits):
    page = client.get("/c/mine/").content.decode()
    assert 'maxlength="20"' in page and 'maxlength="8"' in page


# ---------------------------------------------------------------------------------------------
# The API: 413 over a size limit, 422 otherwise; the same limits.


def test_api_answers_413_over_a_size_limit_and_422_for_an_invalid_value(user, mine, small_limits):
    api = api_for(user)
    before = _stored()
    too_large = [
        ("post", "/sessions/mine/messages", {"role": "user", "content": "hi", "metadata": {"k": "v" * 100}}),
        ("post", "/sessions", {"id": "n", "metadata": {"k": "v" * 100}}),
        ("put", "/sessions/new", {"metadata": {"k": "v" * 100}}),
        ("put", "/sessions/mine/state/data/k", {"value": ["y" * 60] * 4}),
        ("put", "/sessions/mine/state/variables/k", {"value": "x" * 21}),
    ]
    for method, path, body in too_large:
        assert_error(getattr(api, method)(path, body), 413, "content_too_large")
    invalid = [
        ("put", "/sessions/mine/state/data/k", {"value": [[[[1]]]]}),
        ("put", "/sessions/mine/state/data/kkkkkkkkk", {"value": 1}),
        ("put", "/sessions/mine/state/variables/kkkkkkkkk", {"value": "v"}),
        ("post", "/sessions/mine/messages", {"role": "user", "content": "hi", "name": "n" * 9}),
        ("post", "/sessions/mine/messages", {"role": "user", "content": "hi", "metadata": {"k" * 9: "v"}}),
    ]
    for method, path, body in invalid:
        assert_error(getattr(api, method)(path, body), 422, "validation_error")
    assert _stored() == before
    assert not ConversationSession.objects.filter(sid__in=["n", "new"]).exists()


@pytest.mark.django_db(transaction=True)
def test_a_long_model_reply_is_cut_to_the_content_limit(user, replies_env, fake_llm, settings):
    """The reply writer stores model output within the same limits (rather than failing the reply)."""
    from .fake_openai import text_chunks
    from .replies_support import reply_to

    settings.CONVO_MAX_CONTENT_CHARS = 50
    engine.session_create("long", owner=user)
    fake_llm.stream(*text_chunks("word " * 40))
    reply = reply_to("long", "talk a lot")
    assert reply.status == "done"
    stored = Message.objects.get(session__sid="long", role="assistant").content
    assert len(stored) == 50 and stored.startswith("word word")
