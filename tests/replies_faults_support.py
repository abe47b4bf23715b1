"""Helpers of the reply fault tests: a responder the test steers, what was sent to pages, outages."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.db import connection

from sessions_app import events
from sessions_app.replies.responders import Finish, TextDelta


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "the condition") -> Any:
    """Poll ``predicate`` until it is true (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class ScriptedResponder:
    """Says the words of ``ScriptedResponder.steps`` in order; an Event in the steps blocks the reply
    until the test sets it, whatever Stop says (a paused process does not hear Stop either); a callable
    is called in the reply's thread; "until-cancelled" says "more " until Stop."""

    name = "scripted"
    model = "script"
    steps: list[Any] = []

    @classmethod
    def from_settings(cls) -> ScriptedResponder:
        return cls()

    @classmethod
    def label(cls) -> str:
        return "scripted responder"

    def stream(self, request: Any, handle: Any) -> Iterator[Any]:
        for step in list(type(self).steps):
            if isinstance(step, threading.Event):
                step.wait(30)
            elif callable(step):
                step()
            elif step == "until-cancelled":
                while not handle.cancelled.wait(0.01):
                    yield TextDelta("more ")
            else:
                yield TextDelta(step)
        yield Finish("stop")


class Sent:
    """Every session event actually handed to the channel layer (after its commit), in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []

    def record(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        with self.lock:
            self.events.extend(event for _, event in batch)

    def replies(self, reply_id: int | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                e
                for e in self.events
                if e.get("kind") == events.REPLY and (reply_id is None or e.get("reply") == reply_id)
            ]


def backend_pid() -> int:
    """This thread's PostgreSQL backend (its connection's server process)."""
    connection.ensure_connection()
    return connection.connection.info.backend_pid


def terminate_backend(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        return cursor.fetchone()[0]


def terminate_other_backends() -> int:
    """Cut every other connection to this (test) database, as a restart or failover would."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def _allow_connections(allow: bool) -> None:
    """ALTER DATABASE <the test database> ALLOW_CONNECTIONS (PostgreSQL only does that from another one)."""
    import psycopg

    db = connection.settings_dict
    name = connection.ops.quote_name(db["NAME"])
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], password=db["PASSWORD"], dbname="postgres"
    ) as admin:
        admin.autocommit = True
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {'true' if allow else 'false'}")


@contextlib.contextmanager
def connections_refused() -> Iterator[None]:
    """No new connection to this (test) database until the block ends; the existing ones (but this
    thread's) are cut."""
    _allow_connections(False)
    try:
        terminate_other_backends()
        yield
    finally:
        _allow_connections(True)
