"""Expiry: now - updated_at > timeout in whole seconds, stored as an indexed expires_at."""

import datetime as dt

import pytest

from sessions_app import engine
from sessions_app.models import Message

from .conftest import add

pytestmark = pytest.mark.django_db
S = dt.timedelta(seconds=1)


def test_expiry_boundary_counts_whole_seconds(make_session, now):
    session = make_session("s", timeout_seconds=10, at=now)  # updated 12:00:00.25
    assert session.expires_at == now.replace(microsecond=0) + 11 * S
    last_live = now.replace(microsecond=999_999) + 10 * S  # 12:00:10.999999: 10 - 0 = 10, not > 10
    assert not engine.is_expired(session, last_live)
    assert engine.is_expired(session, now.replace(microsecond=0) + 11 * S)


def test_zero_timeout_expires_from_the_next_second(make_session, now):
    session = make_session("s", timeout_seconds=0, at=now)
    assert not engine.is_expired(session, now.replace(microsecond=999_999))
    assert engine.is_expired(session, now.replace(microsecond=0) + S)


def test_no_timeout_never_expires(make_session, now):
    session = make_session("s", timeout_seconds=None, at=now)
    assert session.expires_at is None
    assert not engine.is_expired(session, now + dt.timedelta(days=36500))


def test_every_write_touches_updated_at_and_moves_expiry(make_session, now):
    make_session("s", timeout_seconds=60, at=now)
    later = now + 30 * S
    add("s", "user", "hi", now=later)
    session = engine.session_get("s")
    assert session.updated_at == later
    assert session.expires_at == later.replace(microsecond=0) + 61 * S
    engine.state_set("s", "k", "v", now=later + 10 * S)
    assert engine.session_get("s").updated_at == later + 10 * S
    engine.session_clear_messages("s", now=later + 20 * S)
    assert engine.session_get("s").updated_at == later + 20 * S


def test_writes_to_an_expired_session_are_refused_and_store_nothing(make_session, now):
    make_session("s", timeout_seconds=5, at=now)
    with pytest.raises(engine.SessionExpired, match="Session expired: s"):
        add("s", "user", "too late", now=now + 60 * S)
    with pytest.raises(engine.SessionExpired):
        engine.state_set("s", "k", "v", now=now + 60 * S)
    assert Message.objects.filter(session__sid="s").count() == 0
    assert engine.session_get("s").variables == {}


def test_get_or_create_replaces_an_expired_session_under_the_same_id(make_session, now):
    make_session("s", timeout_seconds=5, at=now)
    add("s", "user", "old message", now=now)
    engine.state_set("s", "k", "v", now=now)
    later = now + 60 * S
    session, created = engine.session_get_or_create("s", now=later)
    assert created
    assert session.created_at == later
    assert engine.messages_all(session) == []
    assert session.variables == {}
    assert Message.objects.filter(session__sid="s").count() == 0


def test_get_or_create_returns_a_live_session_unchanged(make_session, now):
    make_session("s", timeout_seconds=50, at=now)
    add("s", "user", "kept", now=now)
    session, created = engine.session_get_or_create("s", now=now + 10 * S)
    assert not created
    assert [m.content for m in engine.messages_all(session)] == ["kept"]


def test_age_in_whole_seconds(make_session, now):
    session = make_session("s", at=now)
    assert (
        engine.age(session, now + dt.timedelta(seconds=90, microseconds=500_000)) == 90 * S
    )  # 12:01:30.75 - 12:00:00.25


def test_session_get_live_refuses_expired(make_session, now):
    make_session("s", timeout_seconds=1, at=now)
    with pytest.raises(engine.SessionExpired):
        engine.session_get_live("s", now=now + 5 * S)
    assert engine.session_get("s").id == "s"  # inspection still works
