"""The Content-Security-Policy in Chromium: every page works under it with no violation (the chat page's
websocket included), and inline script is refused."""

import pytest
from playwright.sync_api import expect

from .conftest import script
from .test_browser_chat import send

LIVE = "#live-status[data-state=live]"


@pytest.fixture
def violations(context, page):
    """CSP violations the browser reports on any page of the context, across navigations (the
    securitypolicyviolation events, reported through an exposed function, and console errors)."""
    found = []
    context.expose_function("__cspReport", lambda text: found.append(text))
    context.add_init_script(
        "document.addEventListener('securitypolicyviolation', e =>"
        " window.__cspReport(e.violatedDirective + ' ' + e.blockedURI + ' ' + e.sourceFile + ':' + e.lineNumber));"
    )

    def watch(p):
        p.on("console", lambda msg: found.append(msg.text) if "Content Security Policy" in msg.text else None)

    watch(page)
    context.on("page", watch)

    def collect(*_pages):
        return found

    return collect


@pytest.fixture
def staff(django_user_model, transactional_db):
    return django_user_model.objects.create_user("root", password="pw-root-123", is_staff=True, is_superuser=True)


def test_chat_page_runs_under_the_policy(context, page, server, staff, login, make_session, violations):
    """The policy is on every page; the chat page's scripts, styles and live websocket all work with it
    (a message sent in one page is pushed to another)."""
    login(staff)
    make_session("csp-1", owner=staff)
    response = page.goto(f"{server.url}/c/csp-1/")
    policy = response.headers["content-security-policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ):
        assert directive in policy
    assert f"ws://127.0.0.1:{server.port}" in policy
    expect(page.locator(LIVE)).to_be_visible()
    other = context.new_page()
    other.goto(f"{server.url}/c/csp-1/")
    expect(other.locator(LIVE)).to_be_visible()
    send(other, "pushed over the **websocket**", role="assistant")  # no reply to wait for
    expect(page.locator("#message-list > li.role-assistant strong")).to_have_text("websocket")
    assert violations(other) == []
    for path in ("/", "/settings/api-keys/", "/accounts/signup/"):
        response = page.goto(server.url + path)
        assert "default-src 'self'" in response.headers["content-security-policy"]
    assert violations(page) == []


def test_admin_and_api_docs_work_under_the_policy(page, server, staff, login, make_session, violations):
    """The Django admin and the API docs page (Swagger UI, from django-ninja's static files) render
    with no CSP violation."""
    from django.urls import reverse

    from sessions_app import engine

    login(staff)
    session = make_session("csp-admin", owner=staff)
    script(engine.message_append, "csp-admin", "user", "shown in the admin's message table")
    page.goto(f"{server.url}/admin/")
    expect(page.locator("#site-name")).to_be_visible()
    page.goto(server.url + reverse("admin:sessions_app_conversationsession_change", args=[session.pk]))
    expect(page.get_by_text("shown in the admin's message table").first).to_be_visible()
    page.goto(server.url + reverse("admin:sessions_app_conversationsession_changelist"))
    page.goto(f"{server.url}/api/v1/docs")
    expect(page.locator(".swagger-ui .info")).to_be_visible()
    assert violations(page) == []


def test_inline_script_is_refused(page, server, transactional_db, violations):
    """An inline script injected into a page does not run: the policy has no 'unsafe-inline'."""
    page.goto(f"{server.url}/accounts/login/")
    page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.__ran = true';"
        " document.body.appendChild(s); }"
    )
    assert page.evaluate("window.__ran === true") is False
    assert any("script-src" in v for v in violations(page))


def test_login_lock_out_page(page, server, django_user_model, transactional_db):
    """Through daphne (the async middleware path): the fifth wrong password shows the lock-out page,
    and the right password is refused while it lasts."""
    django_user_model.objects.create_user("carol", password="pw-carol-123")
    for attempt in range(5):
        page.goto(f"{server.url}/accounts/login/")
        page.fill("input[name=username]", "carol")
        page.fill("input[name=password]", f"wrong-{attempt}")
        with page.expect_response(lambda r: r.request.method == "POST") as posted:
            page.get_by_role("button", name="Log in").click()
    assert posted.value.status == 429
    expect(page.get_by_role("heading", name="Too many failed logins")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("locked for 15 minutes")
    page.goto(f"{server.url}/accounts/login/")
    page.fill("input[name=username]", "carol")
    page.fill("input[name=password]", "pw-carol-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Too many failed logins")).to_be_visible()


def test_markdown_images_from_elsewhere_become_links(page, server, staff, login, make_session, violations):
    """Markdown never makes the browser fetch a remote resource: an image from another host is shown as a
    link to it (and nothing is requested from that host); an image on this site stays an image."""
    from sessions_app import engine

    login(staff)
    make_session("csp-img", owner=staff)
    engine.message_append(
        "csp-img", "assistant", "![a cat](http://198.51.100.7/cat.png) and ![logo](/static/convo/picture.png)"
    )
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{server.url}/c/csp-img/")
    link = page.locator("#message-list a", has_text="Image: a cat")
    expect(link).to_have_attribute("href", "http://198.51.100.7/cat.png")
    expect(page.locator("#message-list img[src='/static/convo/picture.png']")).to_have_count(1)
    expect(page.locator("#message-list img[src^='http']")).to_have_count(0)
    assert not [url for url in requested if "198.51.100.7" in url]
    assert violations(page) == []
