"""The PostgreSQL pool, after a server restart: every idle connection in it is dead at once.

psycopg's pool checks a connection before handing it out (Django passes its ``check_connection`` when
``CONN_HEALTH_CHECKS`` is on), but on a failed check it puts that one connection away and tries the
next after a growing pause (about 1, 2, 4 s...). With a dozen dead connections idle after a restart,
`pg_terminate_backend` or an idle timeout, a request waited through that whole series and gave up
after ``CONVO_DB_POOL_TIMEOUT`` (a 503). Here the first failed check sweeps the pool: every idle
connection is checked at once and the dead ones replaced (``ConnectionPool.check``), so the request's
next try gets a fresh connection within milliseconds.

Installed on each pool as it is first used (connection_created), as Django builds the pool itself.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)


def _check_or_sweep(pool: Any, conn: Any) -> None:
    try:
        pool.check_connection(conn)
    except Exception:
        logger.info("A pooled connection was dead: checking every idle connection of %s", pool.name)
        pool.check()
        raise


def sweep_on_failed_checks(sender: Any = None, connection: Any = None, **kwargs: Any) -> None:
    """connection_created receiver: make the connection's pool (when it checks connections at all)
    sweep itself on the first failed check."""
    pool = getattr(connection, "pool", None) if getattr(connection, "vendor", "") == "postgresql" else None
    if pool is None or getattr(pool, "_check", None) is not type(pool).check_connection:
        return  # no pool, health checks off, or installed already
    pool._check = functools.partial(_check_or_sweep, pool)
