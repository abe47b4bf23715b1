"""Database connection recovery for Convo's long-lived threads (reply threads, the watcher, the sweeper).

A request's connection is closed by Django at the end of the request; a thread that lives for minutes
keeps its own, and after a cut (a restarted database, a failover, ``pg_terminate_backend``, a network
blip) every query on it fails until it is closed. These helpers close it and try again on a fresh
one, with a bounded backoff, and log one warning per outage (and one line when it is over), not one
traceback per attempt. Imports nothing else of ``replies``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

from .responders import redact

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The first retry after a failure waits this long; each next one twice as long, up to BACKOFF_MAX.
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


def is_connection_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it wraps, e.g. the engine's StorageError) is a lost or refused
    connection rather than a problem with the query itself."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OperationalError | InterfaceError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def reset_connection() -> None:
    """Close this thread's connection (ignoring errors: it is usually broken already); the next query
    opens a fresh one. Callers retry whole transactions, from outside them."""
    with contextlib.suppress(Exception):
        connection.close()


def release() -> None:
    """Give this thread's connection back to the pool (PostgreSQL with ``OPTIONS["pool"]``) between a
    long-lived thread's calls: a reply that waits on its model for seconds must not hold one of the
    pool's connections meanwhile (the next call takes one again, health-checked). Without a pool,
    the connection is kept: opening one per call would cost a round of authentication each time."""
    if getattr(connection, "pool", None) is not None and not connection.in_atomic_block:
        connection.close()


class Outage:
    """One thread's view of database outages: a warning when one starts, a line when it ends."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.since: float | None = None
        self.failures = 0

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> float:
        """Record a failed attempt (closing the connection); return how long to wait before the next."""
        reset_connection()
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            logger.warning(
                "%s could not use the database (%s); retrying on a new connection",
                self.who,
                redact(str(exc).strip() or type(exc).__name__),
            )
        return min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (self.failures - 1))

    def recovered(self) -> None:
        if self.since is not None:
            logger.info(
                "%s reconnected to the database after %.1f s (%d failed attempts)",
                self.who,
                time.monotonic() - self.since,
                self.failures,
            )
        self.since = None
        self.failures = 0


def retry(
    action: Callable[[], T],
    *,
    who: str,
    budget: float,
    outage: Outage | None = None,
    wait: Callable[[float], object] = time.sleep,
) -> T:
    """Run ``action``; after a connection error close the connection and run it again, with a
    bounded backoff, for at most ``budget`` seconds; then the last error is raised. ``action`` must be
    safe to run again (a whole transaction, or an idempotent statement). ``wait`` sleeps (a thread
    that can be cancelled passes an Event's wait, which returns True to give up at once)."""
    outage = outage or Outage(who)
    deadline = time.monotonic() + budget
    while True:
        try:
            result = action()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            delay = outage.failed(exc)
            if time.monotonic() + delay > deadline or wait(delay) is True:
                raise
            continue
        outage.recovered()
        return result
