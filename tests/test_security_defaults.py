"""Safe by default: debug off unless asked for, a generated secret key kept 0600, friendly error pages
that show nothing of the settings, `check --deploy` clean with the production variables, a
Content-Security-Policy and private caching on every page that needs them, a websocket origin check on
scheme, host and port, and a login throttle per account and per address."""

import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.test import Client
from django.urls import include, path

from convo_site.asgi import application
from convo_site.settings import secret_key_from_file
from sessions_app import engine, keys
from sessions_app.middleware import websocket_origin_allowed

ROOT = Path(__file__).resolve().parents[1]
SECRET_DB_PASSWORD = "hunter2-db-password"  # noqa: S105 - what a 500 page must never show
SECRET_LLM_PASSWORD = "hunter3-llm-password"  # noqa: S105


def boom(request):
    raise RuntimeError("something broke")


def forbidden(request):
    raise PermissionDenied


def cached_for_a_minute(request):
    response = HttpResponse("cacheable")
    response["Cache-Control"] = "public, max-age=60"
    return response


# This module is also the URLconf of the error-page tests: the project's URLs plus a few test views.
urlpatterns = [
    path("test/boom/", boom),
    path("test/forbidden/", forbidden),
    path("test/cached/", cached_for_a_minute),
    path("", include("convo_site.urls")),
]


def run_python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with the project's settings and only the given variables
    (no DJANGO_DEBUG, no DJANGO_SECRET_KEY unless given; the key file under tmp_path)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CONVO_"))}
    base |= {"DJANGO_SETTINGS_MODULE": "convo_site.settings", "CONVO_SECRET_KEY_FILE": str(tmp_path / "key")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=base | env, capture_output=True, text=True, timeout=60
    )


SHOW_SETTINGS = "from django.conf import settings; print(settings.DEBUG, settings.SECRET_KEY)"


def test_debug_is_off_unless_asked_for(tmp_path):
    """With DJANGO_DEBUG unset, debug is off; DJANGO_DEBUG=true (what `make dev` sets) turns it on."""
    result = run_python(SHOW_SETTINGS, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "False"
    on = run_python(SHOW_SETTINGS, tmp_path, DJANGO_DEBUG="true")
    assert on.stdout.split()[0] == "True"


def test_a_secret_key_is_generated_once_kept_0600_and_reused(tmp_path):
    """Without DJANGO_SECRET_KEY, the first start writes a random key to a 0600 file; later starts
    (other processes) read the same key; DJANGO_SECRET_KEY, when set, wins."""
    first = run_python(SHOW_SETTINGS, tmp_path)
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = first.stdout.split()[1]
    assert len(key) >= 50 and key_file.read_text().strip() == key
    assert run_python(SHOW_SETTINGS, tmp_path).stdout.split()[1] == key
    assert run_python(SHOW_SETTINGS, tmp_path, DJANGO_SECRET_KEY="from-the-env").stdout.split()[1] == "from-the-env"
    assert secret_key_from_file(key_file) == key
    assert secret_key_from_file(tmp_path / "other") != key  # a new file, a new key
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind


@pytest.fixture
def error_urls(settings):
    settings.ROOT_URLCONF = __name__
    settings.DATABASE_URL = f"postgres://convo:{SECRET_DB_PASSWORD}@db.internal:5432/convo"
    settings.CONVO_LLM_BASE_URL = f"https://user:{SECRET_LLM_PASSWORD}@llm.internal/v1"


@pytest.mark.django_db
def test_a_500_shows_the_friendly_page_and_no_settings(error_urls, user):
    """A view that raises gets the friendly 500 page with the default settings: no traceback, no
    settings, no passwords (today's debug page showed DATABASE_URL and CONVO_LLM_BASE_URL)."""
    client = Client(raise_request_exception=False)
    client.force_login(user)
    r = client.get("/test/boom/")
    assert r.status_code == 500
    body = r.content.decode()
    assert "Something went wrong" in body
    for leak in (SECRET_DB_PASSWORD, SECRET_LLM_PASSWORD, "DATABASE_URL", "SECRET_KEY", "Traceback", "something broke"):
        assert leak not in body
    assert "default-src 'self'" in r["Content-Security-Policy"]


def test_a_500_with_the_default_environment_shows_nothing_of_it(tmp_path):
    """In a fresh process with only DATABASE_URL and CONVO_LLM_BASE_URL set (passwords in both), as
    the issue observed: the 500 page is the friendly one, without those values (pytest-django forces
    DEBUG off in this process, so this runs in another one)."""
    code = (
        "import django; django.setup()\n"
        "from django.test import Client, override_settings\n"
        "with override_settings(ROOT_URLCONF='tests.test_security_defaults'):\n"
        "    r = Client(raise_request_exception=False, HTTP_HOST='localhost').get('/test/boom/')\n"
        "print(r.status_code)\n"
        "print(r.content.decode())\n"
    )
    result = run_python(
        code,
        tmp_path,
        DATABASE_URL=f"postgres://convo:{SECRET_DB_PASSWORD}@db.internal:5432/convo",
        CONVO_LLM_BASE_URL=f"https://user:{SECRET_LLM_PASSWORD}@llm.internal/v1",
        # Without the pool's background connection attempts to the unreachable host (their retries
        # and waits are the pool's business, pinned in test_db_settings): one plain failing connect.
        CONVO_DB_POOL_MAX_SIZE="0",
    )
    status, _, body = result.stdout.partition("\n")
    assert status == "500", result.stderr
    assert "Something went wrong" in body
    for leak in (SECRET_DB_PASSWORD, SECRET_LLM_PASSWORD, "DATABASE_URL", "Traceback", "something broke"):
        assert leak not in body


@pytest.mark.django_db
def test_404_and_403_are_friendly_pages(error_urls):
    r = Client().get("/no/such/page/")
    assert r.status_code == 404
    assert "Page not found" in r.content.decode()
    assert "default-src 'self'" in r["Content-Security-Policy"]
    r = Client().get("/test/forbidden/")
    assert r.status_code == 403
    assert "Not allowed" in r.content.decode()


def test_check_deploy_is_clean_with_the_production_variables(tmp_path):
    """`manage.py check --deploy` has no warning with CONVO_HTTPS, CONVO_PROXY_SSL_HEADER, a long
    secret key and the allowed hosts set."""
    env = {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
        "DJANGO_ALLOWED_HOSTS": "convo.example.com",
        "DJANGO_CSRF_TRUSTED_ORIGINS": "https://convo.example.com",
        "CONVO_HTTPS": "true",
        "CONVO_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CONVO_"))}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=base | {"CONVO_SECRET_KEY_FILE": str(tmp_path / "key")} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout + result.stderr
    shown = run_python(
        "from django.conf import settings as s; print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE,"
        " s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.SECURE_PROXY_SSL_HEADER)",
        tmp_path,
        **env,
        CONVO_HSTS_SECONDS="600",
    )
    assert shown.stdout.strip() == "True True True 600 ('HTTP_X_FORWARDED_PROTO', 'https')"


# Content-Security-Policy and caching


@pytest.mark.django_db
def test_every_page_has_the_policy(user):
    client = Client()
    r = client.get("/accounts/login/")
    policy = r["Content-Security-Policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self' ws://testserver",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "base-uri 'self'",
        "object-src 'none'",
    ):
        assert directive in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    client.force_login(user)
    assert "default-src 'self'" in client.get("/")["Content-Security-Policy"]
    secure = client.get("/", secure=True)["Content-Security-Policy"]
    assert "connect-src 'self' wss://testserver" in secure


@pytest.mark.django_db
def test_authenticated_pages_and_api_responses_are_private_and_not_stored(user, error_urls):
    """Pages for a signed-in user and every API response carry Cache-Control: private, no-store; an
    anonymous page does not; a view's own Cache-Control stays, made private for a signed-in user."""
    anonymous = Client()
    assert "no-store" not in anonymous.get("/").get("Cache-Control", "")
    for r in (anonymous.get("/api/v1/sessions"), anonymous.get("/api/v1/no-such-thing")):
        assert {"private", "no-store"} <= {p.strip() for p in r["Cache-Control"].split(",")}
    _key, secret = keys.create_api_key(user, "bot")
    r = Client().get("/api/v1/sessions", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200
    assert {"private", "no-store"} <= {p.strip() for p in r["Cache-Control"].split(",")}

    browser = Client()
    browser.force_login(user)
    for url in ("/", "/settings/api-keys/"):
        parts = {p.strip() for p in browser.get(url)["Cache-Control"].split(",")}
        assert {"private", "no-store"} <= parts
    parts = {p.strip() for p in browser.get("/test/cached/")["Cache-Control"].split(",")}
    assert parts == {"private", "no-store", "max-age=60"}
    assert anonymous.get("/test/cached/")["Cache-Control"] == "public, max-age=60"


# The websocket origin check


def scope(origin=None, host="localhost", scheme="ws", **headers):
    pairs = [(b"host", host.encode())] if host else []
    if origin:
        pairs.append((b"origin", origin.encode()))
    pairs += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {"type": "websocket", "scheme": scheme, "headers": pairs}


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        ("http://localhost", "localhost", "ws", True),
        ("http://localhost:80", "localhost", "ws", True),  # default ports are the same origin
        ("http://localhost:8000", "localhost:8000", "ws", True),
        ("https://localhost", "localhost", "wss", True),
        ("https://localhost:443", "localhost:443", "wss", True),
        ("http://LOCALHOST:8000", "localhost:8000", "ws", True),
        ("http://[::1]:8000", "[::1]:8000", "ws", True),
        ("http://localhost:8001", "localhost:8000", "ws", False),  # another port
        ("http://localhost", "localhost:8000", "ws", False),
        ("https://localhost", "localhost", "ws", False),  # another scheme
        ("http://localhost", "localhost", "wss", False),
        ("http://127.0.0.1", "localhost", "ws", False),  # another host, even an allowed one
        ("http://evil.example", "localhost", "ws", False),
        ("http://evil.example", "evil.example", "ws", False),  # a host not in ALLOWED_HOSTS
        ("null", "localhost", "ws", False),
        ("http://localhost/path", "localhost", "ws", False),
        ("http://user@localhost", "localhost", "ws", False),
        ("http://localhost:99999", "localhost", "ws", False),
        (None, "localhost", "ws", False),  # no Origin at all
        ("http://localhost", None, "ws", False),  # no Host: no own origin to compare with
    ],
)
def test_origin_must_match_scheme_host_and_port(origin, host, scheme, allowed):
    assert websocket_origin_allowed(scope(origin, host, scheme)) is allowed


def test_trusted_origins_match_exactly(settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com"]
    assert websocket_origin_allowed(scope("https://chat.example.com", "localhost"))
    assert websocket_origin_allowed(scope("https://chat.example.com:443", "localhost"))
    assert not websocket_origin_allowed(scope("https://chat.example.com:8443", "localhost"))
    assert not websocket_origin_allowed(scope("http://chat.example.com", "localhost"))
    assert not websocket_origin_allowed(scope("https://evil.chat.example.com", "localhost"))


def test_behind_a_tls_proxy_the_forwarded_scheme_counts(settings):
    settings.ALLOWED_HOSTS = ["convo.example.com"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proxied = {"x_forwarded_proto": "https"}
    assert websocket_origin_allowed(scope("https://convo.example.com", "convo.example.com", **proxied))
    assert not websocket_origin_allowed(scope("http://convo.example.com", "convo.example.com", **proxied))
    assert not websocket_origin_allowed(scope("https://convo.example.com", "convo.example.com"))


def _cookie(user):
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    return f"{django_settings.SESSION_COOKIE_NAME}={client.cookies[django_settings.SESSION_COOKIE_NAME].value}"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("host", "origin", "accepted"),
    [
        ("localhost:8000", "http://localhost:8000", True),  # same origin
        ("localhost:8000", "http://localhost:9000", False),  # another port
        ("localhost:8000", "https://localhost:8000", False),  # another scheme
        ("localhost:8000", "http://127.0.0.1:8000", False),  # another host
    ],
)
async def test_the_real_application_checks_the_origin(user, host, origin, accepted):
    """Through the project's ASGI application and the real consumer, as the session's owner."""
    await database_sync_to_async(engine.session_create)("ws-origin", owner=user)
    cookie = await database_sync_to_async(_cookie)(user)
    headers = [(b"host", host.encode()), (b"origin", origin.encode()), (b"cookie", cookie.encode())]
    comm = WebsocketCommunicator(application, "/ws/sessions/ws-origin/", headers=headers)
    connected, _ = await comm.connect(timeout=5)
    assert connected is accepted
    await comm.disconnect()


# The login throttle


def login(username, password, address):
    return Client(REMOTE_ADDR=address).post("/accounts/login/", {"username": username, "password": password})


@pytest.mark.django_db
def test_five_wrong_passwords_lock_the_account_and_the_address(user, other_user):
    """After CONVO_LOGIN_FAILURE_LIMIT (5) wrong passwords the right one is refused with a 429 and the
    lock-out page, for that account from anywhere and for any account from that address; another
    account from another address is unaffected."""
    assert django_settings.AXES_FAILURE_LIMIT == 5
    for _ in range(4):
        assert login("alice", "wrong", "10.0.0.1").status_code == 200  # the form, with its error
    assert login("alice", "wrong", "10.0.0.1").status_code == 429  # the fifth failure locks
    r = login("alice", "pw-alice-123", "10.0.0.1")
    assert r.status_code == 429
    body = r.content.decode()
    assert "Too many failed logins" in body and "locked for 15 minutes" in body
    assert "_auth_user_id" not in r.client.session
    assert login("alice", "pw-alice-123", "10.0.0.2").status_code == 429  # the account, from elsewhere
    assert login("bob", "pw-bob-123", "10.0.0.1").status_code == 429  # the address, for anyone
    ok = login("bob", "pw-bob-123", "10.0.0.3")
    assert ok.status_code == 302 and ok.client.session["_auth_user_id"] == str(other_user.pk)


@pytest.mark.django_db
def test_a_successful_login_resets_the_count(user):
    for _ in range(4):
        login("alice", "wrong", "10.0.0.1")
    assert login("alice", "pw-alice-123", "10.0.0.1").status_code == 302
    for _ in range(4):
        login("alice", "wrong", "10.0.0.1")
    assert login("alice", "pw-alice-123", "10.0.0.1").status_code == 302


@pytest.mark.django_db
def test_a_locked_address_keeps_its_api_keys(user):
    """The throttle is for passwords: an API key keeps working from a locked-out address."""
    _key, secret = keys.create_api_key(user, "bot")
    for _ in range(6):
        login("alice", "wrong", "127.0.0.1")
    assert login("alice", "pw-alice-123", "127.0.0.1").status_code == 429
    r = Client().get("/api/v1/sessions", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200


@pytest.mark.django_db
def test_the_api_docs_page_does_not_keep_the_bearer_key(client):
    """Swagger UI's persistAuthorization would keep a pasted Bearer key in the browser's localStorage."""
    page = client.get("/api/v1/docs").content.decode()
    assert '"persistAuthorization": false' in page
    assert '"persistAuthorization": true' not in page
