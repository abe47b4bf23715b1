"""Screenshots of the chat page and the home page at three viewports, light and dark (issue 12).

``make screenshots`` sets CONVO_SCREENSHOTS=1 and they are written to tests/browser/screenshots/ (checked
in); otherwise to test-artifacts/. Each shot also asserts what a user must see at that size: the page
itself does not scroll, nothing overflows sideways, and the header is one line."""

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from sessions_app import engine

from .conftest import ARTIFACTS, script, wait_until
from .test_browser_chat import LIVE, open_chat, send

CHECKED_IN = Path(__file__).parent / "screenshots"
OUT = CHECKED_IN if os.environ.get("CONVO_SCREENSHOTS") == "1" else ARTIFACTS / "screenshots"
VIEWPORTS = [(1440, 900), (1280, 720), (390, 844)]

CODE_ANSWER = """Here is a small helper:

```python
def times_seven(x: int) -> int:
    \"\"\"Multiply by seven.\"\"\"
    return x * 7  # e.g. 12 -> 84
```

| x | x × 7 |
|---|---|
| 11 | 77 |
| 12 | 84 |

Run it with `times_seven(12)`."""

# What the user sees of the frame: the document never scrolls, nothing is wider than the window,
# and the top bar is a single line.
FRAME = """() => ({
  docHeight: document.documentElement.scrollHeight,
  docWidth: document.documentElement.scrollWidth,
  bodyWidth: document.body.scrollWidth,
  innerHeight: window.innerHeight,
  innerWidth: window.innerWidth,
  topbar: document.querySelector('.topbar').getBoundingClientRect().height,
  // Elements reaching past the window's right edge that no scrolling or clipping box contains.
  wide: Array.from(document.querySelectorAll('body *')).filter(el => {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || getComputedStyle(el).visibility === 'hidden' || el.closest('.drawer, .panels, dialog')) return false;
    if (r.right <= window.innerWidth + 1) return false;
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== 'visible' && a.getBoundingClientRect().right <= window.innerWidth + 1) return false;
    }
    return true;
  }).map(el => el.tagName + '.' + el.className).slice(0, 5),
})"""


def check_frame(page):
    frame = page.evaluate(FRAME)
    assert frame["docHeight"] <= frame["innerHeight"], frame
    assert frame["docWidth"] <= frame["innerWidth"] and frame["bodyWidth"] <= frame["innerWidth"], frame
    assert frame["wide"] == [], frame
    assert frame["topbar"] <= 56, frame  # one line


@pytest.fixture
def alice(django_user_model, transactional_db):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


def tour(alice, make_session):
    make_session("trip-planning", owner=alice, system_prompt="You are a concise assistant.")
    script(
        engine.message_append,
        "trip-planning",
        "user",
        "Write a Python helper that multiplies by **seven**, and a table.",
    )
    script(engine.message_append, "trip-planning", "assistant", CODE_ANSWER, metadata={"finish_reason": "stop"})
    script(engine.state_set, "trip-planning", "city", "Lyon")
    make_session("groceries", owner=alice)
    script(engine.message_append, "groceries", "user", "Milk, eggs, and a long list of things to buy for the weekend")


def test_screenshots(page, server, alice, login, make_session):
    login(alice)
    tour(alice, make_session)
    page.set_viewport_size({"width": 1440, "height": 900})
    open_chat(page, server, "trip-planning")
    send(page, "what is 12*7?")  # the built-in responder calls its calculator: a tool chip and an answer
    expect(page.locator("#message-list > li.role-assistant")).to_have_count(2)
    expect(page.locator("#message-list > li.role-tool")).to_have_count(1)
    OUT.mkdir(parents=True, exist_ok=True)
    for width, height in VIEWPORTS:
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            page.set_viewport_size({"width": width, "height": height})
            page.goto(f"{server.url}/c/trip-planning/")
            expect(page.locator(LIVE)).to_be_visible()
            check_frame(page)
            page.screenshot(path=str(OUT / f"chat-{width}x{height}-{scheme}.png"))
            page.goto(f"{server.url}/")
            expect(page.get_by_role("heading", name="Conversations", exact=True)).to_be_visible()
            check_frame(page)
            page.screenshot(path=str(OUT / f"home-{width}x{height}-{scheme}.png"))
    # The phone's overlays: the conversation drawer and the panels sheet.
    page.emulate_media(color_scheme="light")
    page.goto(f"{server.url}/c/trip-planning/")
    expect(page.locator(LIVE)).to_be_visible()
    page.get_by_role("button", name="Conversations").click()
    expect(page.locator("#drawer .session-list")).to_be_visible()
    wait_until(page, "document.getElementById('drawer').getBoundingClientRect().left >= -0.5")
    page.screenshot(path=str(OUT / "chat-390x844-drawer.png"))
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Details").click()
    expect(page.locator("#timeline")).to_be_in_viewport()
    wait_until(page, "document.getElementById('panels').getBoundingClientRect().left <= 0.5")
    page.screenshot(path=str(OUT / "chat-390x844-panels.png"))
