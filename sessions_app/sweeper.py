"""The periodic sweep of every serving process: housekeeping that must not wait for a request.

``start()`` (called by ``convo_site.asgi``, so every daphne or runserver process runs one) starts a
daemon thread that every CONVO_REPLY_SWEEP_SECONDS:

- marks running replies whose process stopped heartbeating interrupted and tells open pages
  (``replies.sweep``), then resumes replies interrupted by a process death or a shutdown once
  (CONVO_REPLY_AUTO_RETRY);
- at most once a minute, deletes Idempotency-Keys older than CONVO_API_IDEMPOTENCY_TTL_SECONDS (the
  purge_expired_sessions command does it too), which keeps that delete off the append's path.

The thread survives database outages (it reconnects with a bounded backoff, logging once per outage)
and ends when the process shuts down (``replies.workers.shutdown``). CONVO_REPLY_SWEEP_SECONDS="none"
switches it off (the test suite does, and calls ``sweep_once`` itself).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from django.conf import settings
from django.db import connection

from .replies import dbconn, service, workers

logger = logging.getLogger(__name__)

KEY_PURGE_SECONDS = 60.0  # how often the sweep deletes expired Idempotency-Keys
MIN_INTERVAL = 0.05  # a CONVO_REPLY_SWEEP_SECONDS of 0 would spin


def sweep_once(*, purge_keys: bool = True) -> None:
    """One sweep (what the thread does each time); database errors are raised to the caller."""
    from .api.idempotency import purge_expired_keys  # the API imports the replies, not the other way

    service.sweep()
    if purge_keys:
        purge_expired_keys()


class _Sweeper:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()

    def start(self) -> bool:
        """Start this process's sweep thread unless it runs already or the sweep is switched off."""
        if settings.CONVO_REPLY_SWEEP_SECONDS is None:
            return False
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return False
            self._stop = threading.Event()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, args=(self._stop,), name="convo-sweeper", daemon=True)
            self._thread.start()
            return True

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @staticmethod
    def _loop(stop: threading.Event) -> None:
        outage = dbconn.Outage("The periodic sweep")
        next_purge = 0.0
        delay = max(MIN_INTERVAL, settings.CONVO_REPLY_SWEEP_SECONDS or 2.0)
        try:
            while not stop.wait(delay) and not workers.closing():
                if settings.CONVO_REPLY_SWEEP_SECONDS is None:
                    return
                interval = max(MIN_INTERVAL, settings.CONVO_REPLY_SWEEP_SECONDS)
                purge = time.monotonic() >= next_purge
                try:
                    sweep_once(purge_keys=purge)
                    outage.recovered()
                    if purge:
                        next_purge = time.monotonic() + KEY_PURGE_SECONDS
                    delay = interval
                except Exception as exc:  # an outage, tables not migrated yet, ...: once per outage
                    delay = max(interval, outage.failed(exc))
        finally:
            connection.close()


_sweeper = _Sweeper()


def start() -> bool:
    """Start the periodic sweep in this process (idempotent); False when it runs already or is off."""
    return _sweeper.start()


def stop(timeout: float = 5.0) -> None:
    """Stop this process's periodic sweep (tests; shutdown stops it through workers.closing())."""
    _sweeper.stop(timeout)
