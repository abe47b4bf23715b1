"""Shared set-up of the benchmark scripts: Django on the bench database, the peer's database, output.

Every script measures Convo and its peer in the same run, on the same PostgreSQL, and prints one JSON
line per result; the Convo line carries ``ratio`` (Convo / peer for the same metric) and ``better``
(which direction is good), because absolute times drift on a shared, noisy machine.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DATABASE_URL = "postgres://postgres:postgres@127.0.0.1:5432/convo_bench"

# Production-like settings: DEBUG off (with it on Django keeps every query in memory), Redis channel
# layer when REDIS_URL is given (bench/run sets it), the real PostgreSQL.
os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "convo_site.settings")
os.environ.setdefault("DJANGO_DEBUG", "false")
os.environ.setdefault("DJANGO_SECRET_KEY", "convo-bench-not-secret")

if not os.environ["DATABASE_URL"].startswith(("postgres://", "postgresql://")):
    sys.exit("bench: DATABASE_URL must point at PostgreSQL (the figures compare PostgreSQL with PostgreSQL)")


def setup_django() -> None:
    import django

    django.setup()


def db_url_named(name: str) -> str:
    """DATABASE_URL with another database name (the peers get databases of their own)."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def db_name() -> str:
    return urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/")


def sqlalchemy_url(name: str) -> str:
    """The peer's SQLAlchemy URL (psycopg 3 driver) for database ``name`` on the same server."""
    parts = urlsplit(db_url_named(name))
    return urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, parts.query, parts.fragment))


def admin_connect():
    """A psycopg connection to the server's maintenance database, in autocommit (CREATE/DROP DATABASE)."""
    import psycopg

    parts = urlsplit(os.environ["DATABASE_URL"])
    return psycopg.connect(urlunsplit(("postgresql", parts.netloc, "/postgres", "", "")), autocommit=True)


def recreate_database(name: str) -> None:
    """Drop and create an empty database (only ever one of the bench's own peer databases)."""
    if not name.startswith(db_name()):
        raise SystemExit(f"bench: refusing to recreate {name!r}: not a {db_name()}* database")
    with admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    if not name.startswith(db_name()):
        raise SystemExit(f"bench: refusing to drop {name!r}: not a {db_name()}* database")
    with admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def message_text(i: int, length: int = 200) -> str:
    """The i-th benchmark message: ~``length`` characters of plain text, different for every i."""
    words = (
        "the session keeps every message with its sequence number turn and token estimate so the "
        "context window can be read from the newest rows without loading the whole conversation "
    )
    base = f"message {i}: " + words * (length // len(words) + 1)
    return base[:length]


def emit(workload: str, impl: str, metric: str, value: float, unit: str, **extra) -> dict:
    line = {"workload": workload, "impl": impl, "metric": metric, "value": round(value, 4), "unit": unit, **extra}
    print(json.dumps(line), flush=True)
    return line


def emit_pair(
    workload: str,
    metric: str,
    unit: str,
    convo: float,
    peer: float,
    *,
    better: str,
    peer_name: str,
    convo_extra: dict | None = None,
    peer_extra: dict | None = None,
) -> None:
    """Print the peer's line, then Convo's with the ratio convo/peer (``better``: "higher" or "lower")."""
    emit(workload, "peer", metric, peer, unit, peer=peer_name, **(peer_extra or {}))
    ratio = convo / peer if peer else float("inf")
    emit(workload, "convo", metric, convo, unit, ratio=round(ratio, 3), better=better, **(convo_extra or {}))


def median_ms(func: Callable[[], object], *, calls: int, warmup: int = 5) -> float:
    """Median wall time of ``func()`` in milliseconds over ``calls`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        func()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        func()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def log(message: str) -> None:
    """Progress for the person running the bench (stderr, so stdout stays JSON lines)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_command(*args: str) -> tuple[float, float, str]:
    """Run ``manage.py args`` as a child; return (wall seconds, peak RSS in MB, output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench: manage.py {' '.join(args)} failed ({proc.returncode}):\n{out}")
    return seconds, usage.ru_maxrss / 1024, out.strip()
