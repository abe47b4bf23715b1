"""Real-browser tests: Debian's chromium driven by Playwright, against daphne subprocesses (websockets
need ASGI; pytest-django's live_server is WSGI only) that share the test database.

SQLite: the test database is a file, so the daphne processes can open it. PostgreSQL: daphne is
pointed at the test database by name. With REDIS_URL the processes share the Redis channel layer.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import Client

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API keeps a loop running

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
# Two servers for the chat tests and a third whose built-in responder types slowly (to watch a reply
# stream and stop it). CONVO_BROWSER_PORTS moves them, e.g. when several checkouts test at once.
PORTS = tuple(int(p) for p in os.environ.get("CONVO_BROWSER_PORTS", "8150,8151,8152").split(","))
SLOW_PORT = PORTS[2] if len(PORTS) > 2 else PORTS[-1] + 1
FAST_WORD_DELAY = "0.005"  # seconds per streamed word: replies finish quickly, tests stay fast
SLOW_WORD_DELAY = "0.25"
SQLITE_FILE = Path(tempfile.gettempdir()) / f"convo-ui-browser-{os.getpid()}.sqlite3"
ON_SQLITE = "sqlite" in django_settings.DATABASES["default"]["ENGINE"]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": "/usr/bin/chromium", "args": ARGS}


@pytest.fixture(scope="session")
def django_db_modify_db_settings():
    """On SQLite, a test database file the servers can share (instead of an in-memory one)."""
    if ON_SQLITE:
        django_settings.DATABASES["default"]["TEST"]["NAME"] = str(SQLITE_FILE)


class Daphne:
    """A daphne process serving the project on the test database; stop() and start() again to
    simulate a server restart."""

    def __init__(self, port: int, *, word_delay: str = FAST_WORD_DELAY) -> None:
        self.port = port
        self.word_delay = word_delay
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.log = ARTIFACTS / f"daphne-{port}.log"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "convo_site.settings",
            "DJANGO_DEBUG": "true",
            "CONVO_RESPONDER": "builtin",
            "CONVO_BUILTIN_WORD_DELAY": self.word_delay,
            # The test process's own prefix (derived from the database's configured name): the
            # servers' would follow the test database's name, and the two would not hear each other.
            "CONVO_CHANNEL_PREFIX": django_settings.CONVO_CHANNEL_PREFIX,
        }
        db = django_settings.DATABASES["default"]
        if ON_SQLITE:
            env["CONVO_SQLITE_PATH"] = db["NAME"]
        else:
            env["DATABASE_URL"] = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        return env

    def start(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                raise RuntimeError(f"port {self.port} is already in use")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "convo_site.asgi:application"],
            cwd=ROOT,
            env=self.env(),
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daphne exited: see {self.log}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"daphne did not start on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture(scope="session")
def servers(django_db_setup, django_db_blocker):
    started = []
    try:
        for port in PORTS[:2]:
            server = Daphne(port)
            server.start()
            started.append(server)
        yield started
    finally:
        for server in started:
            server.stop()
        if ON_SQLITE:  # the database file itself goes with pytest-django's teardown
            for suffix in ("-wal", "-shm"):
                Path(str(SQLITE_FILE) + suffix).unlink(missing_ok=True)


@pytest.fixture
def server(servers):
    return servers[0]


@pytest.fixture(scope="session")
def slow_server(servers):
    """A server whose built-in responder streams a word every SLOW_WORD_DELAY seconds (started on demand)."""
    server = Daphne(SLOW_PORT, word_delay=SLOW_WORD_DELAY)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server2(servers):
    server = servers[1]
    if server.proc is None:  # a test stopped it and failed before restarting it
        server.start()
    return server


@pytest.fixture
def login(transactional_db, context, server):
    """Log a user in for the browser context (the session cookie works on every test server)."""

    def do(user):
        client = Client(HTTP_HOST="localhost")
        client.force_login(user)
        value = client.cookies[django_settings.SESSION_COOKIE_NAME].value
        context.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME, "value": value, "url": server.url}])

    return do


@pytest.fixture
def shot():
    ARTIFACTS.mkdir(exist_ok=True)

    def take(page, name):
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)

    return take


def script(func, *args, **kwargs):
    """Call the engine as a script would, outside Playwright's event loop thread (so that the
    engine's after-commit push can run), and return the result."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    def run():
        try:
            return func(*args, **kwargs)
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result(timeout=30)


def wait_until(page, js, tries=200):
    """Poll a JavaScript condition through evaluate (the CSP refuses wait_for_function's eval)."""
    for _ in range(tries):
        if page.evaluate(js):
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"never true: {js}")


def render_page(page, server, template):
    """Show a template as production renders it (e.g. the error pages, which the DEBUG test servers
    replace by Django's) on the server's origin, so its stylesheets and scripts load."""
    from django.template.loader import render_to_string

    html = render_to_string(template)
    url = f"{server.url}/__rendered__/{template}"
    page.route(url, lambda route: route.fulfill(status=200, content_type="text/html; charset=utf-8", body=html))
    page.goto(url)
