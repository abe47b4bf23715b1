"""Personal API keys: stored hashed, shown once, listed and revoked on the settings page, in the
admin and created by the create_api_key command; what a key authenticates as."""

from __future__ import annotations

import datetime as dt
import io
import re

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from sessions_app import keys
from sessions_app.models import ApiKey

from .test_api_support import Api, assert_error

pytestmark = pytest.mark.django_db

KEY_RE = re.compile(r"convo_[A-Za-z0-9_-]{43}")


@pytest.fixture(autouse=True)
def _login_url(settings):
    # The chat UI provides the real login page; the admin's stands in for it here.
    settings.LOGIN_URL = "/admin/login/"


@pytest.fixture
def browser(user):
    client = Client()
    client.force_login(user)
    return client


def test_a_key_is_stored_only_as_its_hash(user):
    key, secret = keys.create_api_key(user, "bot")
    assert KEY_RE.fullmatch(secret)
    stored = ApiKey.objects.get(pk=key.pk)
    assert secret not in {stored.key_hash, stored.prefix, stored.name}
    assert stored.key_hash == keys.hash_key(secret) and len(stored.key_hash) == 64
    assert secret.startswith(stored.prefix)


def test_a_key_authenticates_as_its_user_and_records_its_last_use(user):
    key, secret = keys.create_api_key(user, "bot")
    assert key.last_used_at is None
    r = Api(secret).put("/sessions/s")
    assert r.status_code == 201
    key.refresh_from_db()
    assert key.last_used_at is not None and timezone.now() - key.last_used_at < dt.timedelta(minutes=1)


def test_last_use_is_written_at_most_once_a_minute(user):
    key, secret = keys.create_api_key(user, "bot")
    t0 = timezone.now()
    assert keys.user_for_key(secret, now=t0) == user
    assert keys.user_for_key(secret, now=t0 + dt.timedelta(seconds=30)) == user
    key.refresh_from_db()
    assert key.last_used_at == t0
    keys.user_for_key(secret, now=t0 + dt.timedelta(seconds=61))
    key.refresh_from_db()
    assert key.last_used_at == t0 + dt.timedelta(seconds=61)


def test_a_revoked_key_is_401(user):
    key, secret = keys.create_api_key(user, "bot")
    assert Api(secret).get("/sessions").status_code == 200
    assert keys.revoke_api_key(key) is True
    assert keys.revoke_api_key(key) is False
    assert_error(Api(secret).get("/sessions"), 401, "unauthorized")


def test_a_bad_bearer_key_is_not_rescued_by_a_browser_session(user):
    client = Client()
    client.force_login(user)
    assert client.get("/api/v1/sessions").status_code == 200
    r = client.get("/api/v1/sessions", headers={"Authorization": "Bearer convo_wrong"})
    assert_error(r, 401, "unauthorized")


# ---------------------------------------------------------------------------------------------
# The settings page


def test_settings_page_needs_login():
    r = Client().get("/settings/api-keys/")
    assert r.status_code == 302 and r["Location"].startswith("/admin/login/")
    assert Client().post("/settings/api-keys/", {"name": "x"}).status_code == 302
    assert not ApiKey.objects.exists()


def test_create_on_the_settings_page_shows_the_key_once(browser, user):
    r = browser.post("/settings/api-keys/", {"name": "my-bot"})
    # Post/redirect/get (issue 12): reloading the page after creating a key creates no second key.
    assert r.status_code == 302 and r["Location"] == "/settings/api-keys/"
    assert ApiKey.objects.filter(user=user).count() == 1
    r = browser.get("/settings/api-keys/")
    assert r.status_code == 200
    # The view's no-store, made private by PrivateCacheMiddleware (issue 9: every signed-in page).
    assert {p.strip() for p in r["Cache-Control"].split(",")} == {"no-store", "private"}
    html = r.content.decode()
    secrets_shown = KEY_RE.findall(html)
    assert len(secrets_shown) == 1
    secret = secrets_shown[0]
    assert Api(secret).get("/sessions").status_code == 200
    key = ApiKey.objects.get(user=user)
    assert key.name == "my-bot"
    listing = browser.get("/settings/api-keys/").content.decode()
    assert "my-bot" in listing and key.prefix in listing
    assert secret not in listing and not KEY_RE.search(listing)


def test_settings_page_lists_only_the_users_keys(browser, user, other_user):
    keys.create_api_key(user, "mine")
    keys.create_api_key(other_user, "theirs")
    html = browser.get("/settings/api-keys/").content.decode()
    assert "mine" in html and "theirs" not in html


def test_settings_page_refuses_a_too_long_name(browser):
    r = browser.post("/settings/api-keys/", {"name": "n" * 101})
    assert r.status_code == 400
    assert "at most 100" in r.content.decode()
    assert not ApiKey.objects.exists()


def test_revoke_on_the_settings_page(browser, user):
    key, secret = keys.create_api_key(user, "bot")
    assert browser.get(f"/settings/api-keys/{key.pk}/revoke/").status_code == 405
    r = browser.post(f"/settings/api-keys/{key.pk}/revoke/")
    assert r.status_code == 302 and r["Location"] == "/settings/api-keys/"
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert "revoked" in browser.get("/settings/api-keys/").content.decode()
    assert_error(Api(secret).get("/sessions"), 401)


def test_cannot_revoke_another_users_key(browser, other_user):
    key, secret = keys.create_api_key(other_user, "theirs")
    assert browser.post(f"/settings/api-keys/{key.pk}/revoke/").status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None


def test_settings_page_checks_csrf(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.post("/settings/api-keys/", {"name": "x"}).status_code == 403
    assert not ApiKey.objects.exists()


# ---------------------------------------------------------------------------------------------
# The command


def test_create_api_key_command_prints_a_working_key(user):
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", "alice", "--name", "cron job", stdout=out, stderr=err)
    secret = out.getvalue().strip()
    assert KEY_RE.fullmatch(secret)
    assert "cannot be shown again" in err.getvalue()
    assert ApiKey.objects.get().name == "cron job"
    assert Api(secret).get("/sessions").status_code == 200


def test_create_api_key_command_refuses_an_unknown_user(user):
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("create_api_key", "nobody", stdout=io.StringIO())
    assert not ApiKey.objects.exists()


# ---------------------------------------------------------------------------------------------
# The admin


@pytest.fixture
def admin_browser(django_user_model):
    admin_user = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")
    client = Client()
    client.force_login(admin_user)
    return client


def test_admin_lists_keys_without_their_hash(admin_browser, user):
    key, secret = keys.create_api_key(user, "bot")
    html = admin_browser.get("/admin/sessions_app/apikey/").content.decode()
    assert "bot" in html and key.prefix in html
    assert key.key_hash not in html and secret not in html
    detail = admin_browser.get(f"/admin/sessions_app/apikey/{key.pk}/change/").content.decode()
    assert key.key_hash not in detail and secret not in detail
    assert admin_browser.get("/admin/sessions_app/apikey/add/").status_code == 403


def test_admin_revoke_action(admin_browser, user):
    key, secret = keys.create_api_key(user, "bot")
    r = admin_browser.post(
        "/admin/sessions_app/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk]}, follow=True
    )
    assert "Revoked 1 API key(s)." in r.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert_error(Api(secret).get("/sessions"), 401)
