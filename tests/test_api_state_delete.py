"""DELETE of a state variable or data entry: the 404 comes from the removal itself, made under the
session's lock, not from a read before it (two concurrent deletes cannot both answer 204)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sessions_app.models import ConversationSession

from .test_api_support import api_for, assert_error

pytestmark = pytest.mark.django_db

SESSIONS_TABLE = ConversationSession._meta.db_table
PATHS = ["/sessions/s/state/variables/k", "/sessions/s/state/data/k"]


@pytest.fixture
def api(user):
    client = api_for(user)
    assert client.post("/sessions", {"id": "s"}).status_code == 201
    assert client.put("/sessions/s/state/variables/k", {"value": "v"}).status_code == 200
    assert client.put("/sessions/s/state/data/k", {"value": {"a": 1}}).status_code == 200
    return client


def _session_reads(queries) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].startswith("SELECT") and SESSIONS_TABLE in q["sql"]]


@pytest.mark.parametrize("path", PATHS)
def test_delete_reads_the_session_once_under_the_lock(api, path):
    for expected in (204, 404):  # present, then gone
        with CaptureQueriesContext(connection) as queries:
            assert api.delete(path).status_code == expected
        [read] = _session_reads(queries.captured_queries)
        if connection.features.has_select_for_update:
            assert "FOR UPDATE" in read


@pytest.mark.parametrize("path", PATHS)
def test_deleting_a_missing_key_changes_nothing_and_sends_no_event(api, path, django_capture_on_commit_callbacks):
    assert api.delete(path).status_code == 204
    before = ConversationSession.objects.values().get(sid="s")
    with django_capture_on_commit_callbacks() as callbacks:
        assert_error(api.delete(path), 404, "not_found")
    assert ConversationSession.objects.values().get(sid="s") == before
    assert callbacks == []


@pytest.mark.parametrize("path", PATHS)
def test_deleting_from_an_expired_session_is_gone_whether_or_not_the_key_exists(api, path):
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    ConversationSession.objects.filter(sid="s").update(updated_at=past, expires_at=past)
    assert_error(api.delete(path.replace("/k", "/missing")), 410, "session_expired")
    assert_error(api.delete(path), 410, "session_expired")
