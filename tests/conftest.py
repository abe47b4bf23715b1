import datetime as dt
import os

import pytest
from django.conf import settings

from sessions_app import engine

ON_POSTGRES = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
ON_REDIS = bool(os.environ.get("REDIS_URL"))


def pytest_collection_modifyitems(config, items):
    skip_pg = pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL (make test-postgres)")
    skip_redis = pytest.mark.skip(reason="needs Redis: set REDIS_URL (make test-postgres)")
    for item in items:
        if "postgres" in item.keywords and not ON_POSTGRES:
            item.add_marker(skip_pg)
        if "redis" in item.keywords and not ON_REDIS:
            item.add_marker(skip_redis)


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def now():
    """A fixed 'now' (mid-second, to exercise the whole-second expiry rule)."""
    return dt.datetime(2026, 5, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("bob", password="pw-bob-123")


@pytest.fixture
def make_session():
    """Create a session with a given config (defaults: the spec's), now or ``at``."""

    def make(session_id="test", *, system_prompt=None, owner=None, at=None, **config):
        return engine.session_create(
            session_id,
            owner=owner,
            system_prompt=system_prompt,
            config=engine.SessionConfig(**config),
            now=at,
        )

    return make


def add(session_id, role, content, **kwargs):
    """The spec's session.add_message(role, content); returns the stored message."""
    return engine.message_append(session_id, role, content, **kwargs)


def reload(session):
    return engine.session_get(session.id)
