"""Django's SQLite backend, with writers of one process queued on a lock instead of SQLite's busy loop.

With ``transaction_mode = "IMMEDIATE"`` every transaction takes SQLite's write lock when it begins. A
second writer then waits in SQLite's busy handler, which polls with growing sleeps (1, 2, 5, ... 100 ms):
under 16 concurrent appenders the unlucky ones kept losing the race and the p99 reached 1.3-1.9 s.
Here the transactions of one process first take a per-database-file lock, so they queue and each
starts the moment the previous one ends; SQLite's busy timeout still arbitrates between processes.
The semantics do not change: BEGIN IMMEDIATE already allowed one writing transaction at a time.
"""

from __future__ import annotations

import threading

from django.db import OperationalError
from django.db.backends.sqlite3 import base

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(name, threading.Lock())


class DatabaseWrapper(base.DatabaseWrapper):
    _write_lock: threading.Lock | None = None

    def _start_transaction_under_autocommit(self):
        if self.transaction_mode != "IMMEDIATE" or self.is_in_memory_db():
            return super()._start_transaction_under_autocommit()
        lock = _lock_for(str(self.settings_dict["NAME"]))
        timeout = float(self.settings_dict.get("OPTIONS", {}).get("timeout", 5))
        if not lock.acquire(timeout=timeout):
            raise OperationalError("database is locked (waited for this process's other writers)")
        self._write_lock = lock
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_write_lock()
            raise

    def _release_write_lock(self) -> None:
        lock, self._write_lock = self._write_lock, None
        if lock is not None:
            lock.release()

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release_write_lock()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release_write_lock()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release_write_lock()
