"""Session state: string variables and typed JSON data."""

import datetime as dt
import decimal

import pytest

from sessions_app import engine

pytestmark = pytest.mark.django_db


def test_variables_set_get_remove(make_session):
    make_session("s")
    engine.state_set("s", "name", "Alice")
    engine.state_set("s", "name", "Bob")
    assert engine.state_get(engine.session_get("s"), "name") == "Bob"
    assert engine.state_remove("s", "name") == "Bob"
    assert engine.state_remove("s", "name") is None
    assert engine.state_get(engine.session_get("s"), "name") is None


@pytest.mark.parametrize(
    "value",
    [{"theme": "dark", "n": [1, 2.5, None, True]}, [1, "two"], "text", 42, 3.25, None, False, {"nested": {"ü": "✓"}}],
)
def test_data_holds_any_json_value(make_session, value):
    make_session("s")
    engine.state_set_data("s", "k", value)
    session = engine.session_get("s")
    assert engine.state_has_data(session, "k")
    assert engine.state_get_data(session, "k", default="missing") == value


@pytest.mark.parametrize(
    "value", [{1, 2}, object(), dt.datetime(2026, 1, 1), decimal.Decimal("1.5"), float("nan"), float("inf"), "nul\x00"]
)
def test_non_json_values_raise_serialization_error_and_store_nothing(make_session, value):
    make_session("s")
    engine.state_set_data("s", "k", "before")
    with pytest.raises(engine.SerializationError, match="Serialization error"):
        engine.state_set_data("s", "k", value)
    assert engine.state_get_data(engine.session_get("s"), "k") == "before"


def test_circular_value_is_refused(make_session):
    make_session("s")
    loop: list = []
    loop.append(loop)
    with pytest.raises(engine.SerializationError):
        engine.state_set_data("s", "k", loop)


def test_remove_data_and_clear(make_session):
    make_session("s")
    engine.state_set("s", "v", "1")
    engine.state_set_data("s", "d", {"a": 1})
    assert engine.state_remove_data("s", "d") is True
    assert engine.state_remove_data("s", "d") is False
    engine.state_set_data("s", "d", [1])
    engine.state_clear("s")
    session = engine.session_get("s")
    assert (session.variables, session.data) == ({}, {})


def test_bad_keys_and_values_are_refused(make_session):
    make_session("s")
    with pytest.raises(engine.SessionValidationError):
        engine.state_set("s", "", "v")
    with pytest.raises(engine.SessionValidationError):
        engine.state_set("s", "k", 5)
    with pytest.raises(engine.SessionValidationError):
        engine.state_set("s", "k", "\ud800")
    assert engine.session_get("s").variables == {}


def test_state_of_missing_session(db):
    with pytest.raises(engine.SessionNotFound):
        engine.state_set("nope", "k", "v")
