"""The manager: ids, create, get, get_or_create, update, delete, list, list_for_user, owners."""

import pytest

from sessions_app import engine
from sessions_app.models import Message, Turn

from .conftest import add

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("session_id", ["a", "session1", "A-b_c.d:e", "x" * 128, "2026:user.42"])
def test_valid_ids(session_id):
    assert engine.session_create(session_id).id == session_id


@pytest.mark.parametrize(
    "session_id", ["", ".", "..", "x" * 129, "has space", "slash/no", "../etc", "é", "new\nline", "a\x00", 5]
)
def test_invalid_ids_are_refused_with_a_clear_error(session_id):
    with pytest.raises(engine.SessionValidationError, match="session id"):
        engine.session_create(session_id)
    assert engine.session_list() == []


def test_generated_id_when_omitted():
    a, b = engine.session_create(), engine.session_create()
    assert a.id != b.id
    engine.validate_session_id(a.id)


def test_create_with_taken_id_is_refused(make_session):
    make_session("s")
    with pytest.raises(engine.SessionAlreadyExists):
        engine.session_create("s")


def test_defaults_come_from_settings(settings):
    settings.CONVO_MAX_MESSAGES, settings.CONVO_MAX_TOKENS = 7, 99
    settings.CONVO_TIMEOUT_SECONDS, settings.CONVO_PERSIST_SYSTEM_PROMPT = None, False
    session = engine.session_create("s", system_prompt="p")
    assert (session.max_messages, session.max_tokens, session.timeout_seconds) == (7, 99, None)
    assert session.persist_system_prompt is False
    assert session.system_prompt == "p"
    assert engine.messages_all(session) == []  # not persisted as a message


def test_spec_defaults():
    config = engine.SessionConfig()
    assert (config.max_messages, config.max_tokens, config.timeout_seconds, config.persist_system_prompt) == (
        100,
        8192,
        3600,
        True,
    )


@pytest.mark.parametrize(
    "config",
    [
        engine.SessionConfig(max_messages=0),
        engine.SessionConfig(max_tokens=0),
        engine.SessionConfig(timeout_seconds=-1),
        engine.SessionConfig(max_messages=2**31),
        engine.SessionConfig(max_messages="5"),
        engine.SessionConfig(persist_system_prompt="yes"),
    ],
)
def test_bad_config_is_refused(config):
    with pytest.raises(engine.SessionValidationError):
        engine.session_create("s", config=config)
    assert engine.session_list() == []


def test_metadata_must_be_strings():
    with pytest.raises(engine.SessionValidationError):
        engine.session_create("s", metadata={"k": 1})
    assert engine.session_create("s", metadata={"k": "v"}).metadata == {"k": "v"}


def test_message_input_is_validated(make_session):
    make_session("s")
    for kwargs in [
        {"role": "robot", "content": "x"},
        {"role": "user", "content": None},
        {"role": "user", "content": "nul\x00"},
        {"role": "user", "content": "\udc80"},
        {"role": "user", "content": "x", "metadata": {"k": 3}},
    ]:
        with pytest.raises(engine.SessionValidationError):
            engine.message_append("s", **kwargs)
    assert Message.objects.count() == 0


def test_owner_scoping(user, other_user):
    engine.session_create("mine", owner=user)
    engine.session_create("service")
    assert engine.session_list_for_user(user) == ["mine"]
    with pytest.raises(engine.SessionNotFound):
        engine.session_get("mine", owner=other_user)
    with pytest.raises(engine.SessionNotFound):
        engine.message_append("mine", "user", "hi", owner=other_user)
    with pytest.raises(engine.SessionNotFound):
        engine.session_delete("mine", owner=other_user)
    # Ids are per owner: get_or_create gives other_user a session of their own (issue 9).
    theirs, created = engine.session_get_or_create("mine", owner=other_user)
    assert created and theirs.owner_id == other_user.pk
    assert engine.session_get("mine", owner=user).pk != theirs.pk
    assert engine.session_get("service", owner=None).id == "service"
    assert engine.session_get("mine", owner=user).owner_id == user.pk


def test_list_for_user_is_most_recent_first(user, now):
    import datetime as dt

    for i, name in enumerate(["a", "b", "c"]):
        engine.session_create(name, owner=user, now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=i))
    add("a", "user", "bump", now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10))
    assert engine.session_list_for_user(user) == ["a", "c", "b"]


def test_delete_removes_messages_and_turns(make_session):
    make_session("s", system_prompt="p")
    add("s", "user", "q")
    add("s", "assistant", "a")
    engine.session_delete("s")
    assert (Message.objects.count(), Turn.objects.count()) == (0, 0)
    with pytest.raises(engine.SessionNotFound):
        engine.session_delete("s")


def test_update_system_prompt_rewrites_the_pinned_message(make_session):
    make_session("s", system_prompt="old")
    add("s", "user", "q")
    session = engine.session_update("s", system_prompt="a much longer new prompt")
    assert engine.messages_all(session)[0].content == "a much longer new prompt"
    assert session.total_tokens == sum(m.tokens for m in engine.messages_all(session))


def test_update_config_moves_expiry(make_session, now):
    import datetime as dt

    make_session("s", timeout_seconds=10, at=now)
    later = now + dt.timedelta(seconds=5)
    session = engine.session_update("s", config=engine.SessionConfig(timeout_seconds=None), now=later)
    assert session.expires_at is None and session.timeout_seconds is None


def test_clear_without_persist_removes_system_message_too(make_session):
    make_session("s")
    add("s", "system", "first and pinned")
    add("s", "user", "q")
    engine.session_update("s", config=engine.SessionConfig(persist_system_prompt=False))
    session = engine.session_clear_messages("s")
    assert engine.messages_all(session) == []
    assert session.total_tokens == 0
    assert add("s", "user", "again").turn_number == 1


def test_storage_errors_are_wrapped(make_session, monkeypatch):
    from django.db import OperationalError

    from sessions_app.engine import sessions

    def broken(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(sessions, "owned_sessions", broken)
    with pytest.raises(engine.StorageError, match="Storage error: connection refused"):
        engine.session_get("s")
