"""The fault suite's cluster: its own redis-server and real daphne processes (`daphne
convo_site.asgi:application`, as `make run` serves) on free ports, on the test database.

PostgreSQL + Redis only (the scenarios are about a multi-process deployment): skipped on SQLite.
The daphne processes run as in production (debug off, static files collected) with short fault
windows, so that the whole suite stays under three minutes: replies heartbeat every 0.5 s and are
stale after FAULT_STALE_SECONDS, pages check in every FAULT_RESYNC_SECONDS, shutdown grace 3 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
RECOVERY_FILE = ARTIFACTS / "fault-recovery.json"
ON_POSTGRES = django_settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
ON_REDIS = bool(os.environ.get("REDIS_URL"))

FAULT_STALE_SECONDS = 3.0  # CONVO_REPLY_STALE_SECONDS of the servers
FAULT_HEARTBEAT_SECONDS = 0.5
FAULT_SWEEP_SECONDS = 1.0  # CONVO_REPLY_SWEEP_SECONDS of the servers
FAULT_RESYNC_SECONDS = 2.0  # CONVO_RESYNC_SECONDS of the servers (and of the test pages)
FAULT_GRACE_SECONDS = 3.0  # CONVO_SHUTDOWN_GRACE_SECONDS
WORD_DELAY = 0.1  # the built-in responder's reply (about 45 words) then streams for about 4.5 s
SHUTDOWN_LIMIT = 10.0
APP_NAME = "convo-faults-server"  # daphne must exit within this many seconds of SIGTERM


def pytest_collection_modifyitems(config, items):
    if ON_POSTGRES and ON_REDIS:
        return
    skip = pytest.mark.skip(reason="the fault suite runs on PostgreSQL + Redis (make test-postgres)")
    for item in items:
        if "tests/faults/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process on {port} exited ({proc.returncode}): see {log}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s: see {log}")


class RedisServer:
    """A redis-server of the suite's own, on a free port; stop() and start() make an outage."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.log = ARTIFACTS / f"faults-redis-{self.port}.log"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


class Server:
    """One daphne process serving the project on the test database."""

    def __init__(self, name: str, redis: RedisServer, **env: str) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.redis = redis
        self.extra_env = env
        self.proc: subprocess.Popen | None = None
        self.frozen = False  # SIGSTOPped: a load balancer's health check takes it out
        self.log = ARTIFACTS / f"faults-daphne-{name}.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self.frozen

    def freeze(self) -> None:
        assert self.proc is not None
        self.frozen = True
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def env(self) -> dict[str, str]:
        db = django_settings.DATABASES["default"]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CONVO_", "DJANGO_DEBUG", "PYTEST", "DJANGO_ALLOW"))
        }
        env.update(
            DJANGO_SETTINGS_MODULE="convo_site.settings",
            DATABASE_URL=f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            REDIS_URL=self.redis.url,
            CONVO_RESPONDER="builtin",
            CONVO_BUILTIN_WORD_DELAY=str(WORD_DELAY),
            CONVO_REPLY_HEARTBEAT_SECONDS=str(FAULT_HEARTBEAT_SECONDS),
            CONVO_REPLY_STALE_SECONDS=str(FAULT_STALE_SECONDS),
            CONVO_REPLY_POLL_SECONDS="0.1",
            CONVO_REPLY_SWEEP_SECONDS=str(FAULT_SWEEP_SECONDS),
            CONVO_RESYNC_SECONDS=str(FAULT_RESYNC_SECONDS),
            CONVO_SHUTDOWN_GRACE_SECONDS=str(FAULT_GRACE_SECONDS),
            CONVO_CHANNEL_PREFIX="faults-a",
            CONVO_API_RATE_LIMIT="none",
            CONVO_LOGIN_THROTTLE="false",
            CONVO_MAX_CONCURRENT_REPLIES="100",
            CONVO_WS_FRAMES_PER_SECOND="100",
            CONVO_WS_FRAME_BURST="100",
            CONVO_LOG_LEVEL="INFO",
            PGAPPNAME=APP_NAME,  # libpq: lets a scenario cut exactly these servers' connections
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        if self.alive:
            return
        self.port = self.port if _port_free(self.port) else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        with self.log.open("ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')} on {self.port}\n".encode())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "convo_site.asgi:application"],
            cwd=ROOT,
            env=self.env(),
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, self.proc, self.log)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def terminate(self) -> float:
        """SIGTERM; return the seconds until the process exited (killed after SHUTDOWN_LIMIT + 5)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(SHUTDOWN_LIMIT + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        return time.monotonic() - started

    def stop(self) -> None:
        self.thaw()
        if self.alive:
            self.terminate()
        self.proc = None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Cluster:
    def __init__(self, redis: RedisServer, servers: list[Server]) -> None:
        self.redis = redis
        self.servers = servers

    def ensure_up(self) -> None:
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        for server in self.servers:
            server.thaw()
            server.start()


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment, django_db_blocker, django_db_modify_db_settings):
    """The test database, made for this run and dropped after it. pytest-django's own fixture makes
    one only for the aliases its `django_db` tests name, and these scenarios have none (their rows are
    committed for the servers to read, with no test transaction or flush around them): without this
    they would run on the configured database itself."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    yield
    with django_db_blocker.unblock():
        teardown_databases(config, verbosity=0)


@pytest.fixture(scope="session")
def cluster(django_db_setup, django_db_blocker):
    name = django_settings.DATABASES["default"]["NAME"]
    assert name.startswith("test_"), f"the fault suite would write to the configured database {name!r}"
    ARTIFACTS.mkdir(exist_ok=True)
    # Production serving: debug off, so the hashed static names come from collectstatic.
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=ROOT,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "DJANGO_DEBUG"},
    )
    redis = RedisServer()
    redis.start()
    servers = [Server("a", redis), Server("b", redis)]
    try:
        for server in servers:
            server.start()
        with django_db_blocker.unblock():
            yield Cluster(redis, servers)
    finally:
        for server in servers:
            server.stop()
        redis.stop()


@pytest.fixture
def up(cluster):
    """The cluster with everything running (a failed scenario may have left a process down)."""
    cluster.ensure_up()
    yield cluster
    cluster.ensure_up()


_recovery: dict[str, dict[str, float | int | str]] = {}


@pytest.fixture
def record():
    """Record an observed figure: record(scenario, name, value); written to test-artifacts/."""

    def put(scenario: str, name: str, value: float | int | str) -> None:
        _recovery.setdefault(scenario, {})[name] = round(value, 3) if isinstance(value, float) else value

    return put


def pytest_sessionfinish(session, exitstatus):
    if not _recovery:
        return
    ARTIFACTS.mkdir(exist_ok=True)
    RECOVERY_FILE.write_text(json.dumps(_recovery, indent=2, sort_keys=True) + "\n")
    lines = ["", f"fault suite: recovery figures (also in {RECOVERY_FILE.relative_to(ROOT)})"]
    for scenario, figures in sorted(_recovery.items()):
        lines.append(f"  {scenario}: " + ", ".join(f"{k}={v}" for k, v in sorted(figures.items())))
    print("\n".join(lines))
