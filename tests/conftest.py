import datetime as dt
import os
import threading

import pytest
from channels.testing import application as channels_testing_application
from django.conf import settings
from django.db import close_old_connections

from sessions_app import engine, throttle

from .fake_openai import FakeOpenAI
from .replies_faults_support import ScriptedResponder, Sent
from .replies_support import API_KEY, drain_replies

ON_POSTGRES = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
# Tests render pages with debug off and without collectstatic: plain static names here (the manifest
# storage's hashed names need collectstatic, which tests/faults runs for its servers).
settings.STORAGES = {
    **settings.STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
ON_REDIS = bool(os.environ.get("REDIS_URL"))


def _close_worker_connections(**kwargs):
    """What channels' test communicators put in place of close_old_connections while they run.

    Their own stand-in does nothing, so that a test transaction is not closed under the test. But
    database_sync_to_async then leaves the connection of every worker thread open, and each test's
    event loop has its own worker threads: with the PostgreSQL pool on, every test took a pooled
    connection that its dead thread never gave back, until the pool ran dry. Here the worker threads
    close theirs, as they do under daphne; the main thread, which holds the test transaction, keeps
    its own.
    """
    if threading.current_thread() is not threading.main_thread():
        close_old_connections()


channels_testing_application.no_op = _close_worker_connections


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


@pytest.fixture(autouse=True)
def _replies_open_for_each_test():
    """A shutdown test's hand-over runs in daemon threads that may outlive the test and close this
    process for new replies (workers.shutdown) after its own fixture reopened it: wait for them, then
    open the process again, so no later test finds its replies never started."""
    from sessions_app.replies import workers

    for thread in threading.enumerate():
        if thread.name in ("convo-shutdown-handover", "convo-reply-shutdown"):
            thread.join(15)
    workers._closing.clear()


@pytest.fixture(autouse=True)
def _fresh_throttles():
    """Rate-limit counters (sign-up, API) start at zero in every test (on Redis they outlive the run)."""
    throttle.reset()


@pytest.fixture(autouse=True)
def _fresh_library_cache():
    """The library cache (sidebar versions and fragments, by user id) starts empty in every test: user
    ids come back (a rolled-back test's on SQLite, a new test database's on PostgreSQL), their cached
    sidebars must not. On Redis only the library's keys go (the channel layer shares the database)."""
    from django.core.cache import caches
    from django.core.cache.backends.locmem import LocMemCache

    cache = caches["library"]
    if isinstance(cache, LocMemCache):
        cache.clear()
    else:
        client = cache._cache.get_client(write=True)
        keys = list(client.scan_iter(match="*convo:library:*"))
        if keys:
            client.delete(*keys)


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


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    """On SQLite, test on a file rather than Django's shared-cache in-memory database.

    Replies run in threads: with shared cache, a second connection gets "database table is locked"
    at once instead of waiting (busy timeout and WAL apply only to files), which is not how Convo
    runs. An explicit CONVO_SQLITE_TEST_PATH still wins.
    """
    db = settings.DATABASES["default"]
    if "sqlite" in db["ENGINE"] and not db.get("TEST", {}).get("NAME"):
        db.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("sqlite") / "test_convo.sqlite3")


# Assistant replies: fast settings, a local OpenAI-compatible server, and no reply thread left behind.
# No periodic sweep thread in the test process (importing convo_site.asgi would start one): it would
# mark and resume the rows tests make on purpose. The sweep's tests call it themselves.
settings.CONVO_REPLY_SWEEP_SECONDS = None


@pytest.fixture
def replies_env(settings):
    settings.CONVO_RESPONDER = "builtin"
    settings.CONVO_BUILTIN_WORD_DELAY = 0
    settings.CONVO_REPLY_EVENT_INTERVAL = 0
    settings.CONVO_REPLY_POLL_SECONDS = 0.02
    settings.CONVO_LLM_API_KEY = API_KEY
    yield settings
    drain_replies()


@pytest.fixture
def fake_llm(replies_env):
    fake = FakeOpenAI()
    replies_env.CONVO_RESPONDER = "openai"
    replies_env.CONVO_LLM_BASE_URL = fake.url
    replies_env.CONVO_LLM_MODEL = "fake-model"
    replies_env.CONVO_LLM_TIMEOUT = 5
    yield fake
    drain_replies()
    fake.close()


@pytest.fixture
def scripted(replies_env, monkeypatch):
    """Replies by ScriptedResponder: set ``scripted.steps`` to what it says (and where it waits)."""
    from sessions_app.replies.responders import RESPONDERS

    monkeypatch.setitem(RESPONDERS, "scripted", ScriptedResponder)
    monkeypatch.setattr(ScriptedResponder, "steps", [])
    replies_env.CONVO_RESPONDER = "scripted"
    return ScriptedResponder


@pytest.fixture
def sent(monkeypatch):
    """What is actually handed to the channel layer (``Sent``), instead of sending it."""
    from sessions_app import events

    recorder = Sent()
    monkeypatch.setattr(events, "_send", recorder.record)
    return recorder


@pytest.fixture
async def close_async_db():
    """Close the connection that database_sync_to_async's worker thread opened (on PostgreSQL an open
    one keeps the test database from being dropped at the end of the run)."""
    yield
    from channels.db import database_sync_to_async
    from django.db import connections

    await database_sync_to_async(connections.close_all)()
