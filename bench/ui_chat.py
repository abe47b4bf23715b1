"""The chat page in a real browser (issue 12): cold page weight and Enter → own message.

    python bench/ui_chat.py [--port 8199] [--runs 25]

Starts daphne (DEBUG off, static files collected and served as in production, the built-in responder)
on DATABASE_URL (default: SQLite file of its own), creates a user and a realistic conversation, then
in headless chromium:

- cold_kb: every byte the browser receives to open the chat page with an empty cache (the document,
  stylesheets, scripts, favicon and the context panel's request), as transferred (encodedDataLength);
- enter_to_own_ms: from the Enter key (the keydown event's timestamp) to the user's own message in
  the list (a MutationObserver), median of ``--runs`` sends, each followed by its reply.

Prints one JSON line. Not a test: nothing here asserts a time (targets: ≤ 250 KB, ≤ 100 ms median).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SQLITE = Path(tempfile.gettempdir()) / "convo-bench-ui.sqlite3"
LOG = Path(tempfile.gettempdir()) / "convo-bench-ui-daphne.log"
ENV = {
    "DJANGO_SETTINGS_MODULE": "convo_site.settings",
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "convo-bench-ui-not-secret",
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
    "CONVO_RESPONDER": "builtin",
    "CONVO_BUILTIN_WORD_DELAY": "0",
}
ANSWER = """Here is a helper:

```python
def times_seven(x: int) -> int:
    return x * 7
```

| x | x × 7 |
|---|---|
| 11 | 77 |
| 12 | 84 |
"""

# In the page: the time from Enter's keydown to the message's <li> appearing in the list.
WATCH = """(text) => { window.benchSeen = new Promise((resolve) => {
  let t0 = null;
  const box = document.querySelector('#composer textarea[name=content]');
  document.addEventListener('keydown', (e) => { if (e.key === 'Enter' && t0 === null) t0 = e.timeStamp; }, {capture: true, once: true});
  const list = document.getElementById('message-list');
  const seen = new MutationObserver(() => {
    for (const li of list.querySelectorAll('li.role-user')) {
      if (li.textContent.includes(text)) { seen.disconnect(); resolve(performance.now() - t0); return; }
    }
  });
  seen.observe(list, {childList: true});
}); }"""


def env() -> dict[str, str]:
    out = {**os.environ, **ENV}
    if not out.get("DATABASE_URL"):
        out["CONVO_SQLITE_PATH"] = str(SQLITE)
    return out


def prepare() -> str:
    """Migrate, collect static files, and create the user and the conversation; return a session cookie."""
    for key, value in env().items():
        os.environ.setdefault(key, value)
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from sessions_app import engine

    call_command("migrate", verbosity=0)
    call_command("collectstatic", "--noinput", verbosity=0)
    user, _ = get_user_model().objects.get_or_create(username="bench-ui")
    user.set_password("bench-ui-password-1")
    user.save()
    for session in engine.session_list_for_user(user):
        engine.session_delete(session, owner=user)
    engine.session_create(
        "bench", owner=user, system_prompt="You are concise.", config=engine.SessionConfig(max_messages=1000)
    )
    for i in range(10):
        engine.message_append("bench", "user", f"Question {i}: what is **{i} × 7**? Show code and a table.", owner=user)
        engine.message_append("bench", "assistant", ANSWER, owner=user)
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def start_server(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "convo_site.asgi:application"],
        cwd=REPO,
        env=env(),
        stdout=LOG.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    sys.exit("bench: daphne did not start")


def measure(port: int, cookie: str, runs: int) -> dict:
    from playwright.sync_api import sync_playwright

    url = f"http://127.0.0.1:{port}/c/bench/"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        context.add_cookies([{"name": "sessionid", "value": cookie, "url": f"http://127.0.0.1:{port}"}])
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
        sizes: dict[str, int] = {}
        urls: dict[str, str] = {}
        cdp.on("Network.requestWillBeSent", lambda e: urls.__setitem__(e["requestId"], e["request"]["url"]))
        by_status: dict[str, int] = {}
        page.on("response", lambda r: by_status.__setitem__(r.url, r.status))
        cdp.on("Network.loadingFinished", lambda e: sizes.__setitem__(e["requestId"], e["encodedDataLength"]))
        response = page.goto(url, wait_until="networkidle")
        if response is None or response.status != 200 or "/c/bench/" not in page.url:
            sys.exit(f"bench: the chat page did not open ({response and response.status}, {page.url})")
        try:
            page.wait_for_selector("#live-status[data-state=live]")
        except Exception:
            sys.exit(f"bench: no live connection: {page.locator('#live-status').inner_text()} {by_status}")
        page.wait_for_selector("#context-panel .context-total")
        cold = sum(sizes.values())
        by_url = {urls.get(k, k).replace(f"http://127.0.0.1:{port}", ""): v for k, v in sizes.items()}
        cdp.send("Network.setCacheDisabled", {"cacheDisabled": False})

        times = []
        box = page.locator("#composer textarea[name=content]")
        for i in range(runs):
            text = f"bench message {i} {time.time_ns()}"
            box.fill(text)
            page.evaluate(WATCH, text)  # installs the watcher (window.benchSeen), does not wait for it
            box.press("Enter")
            times.append(page.evaluate("window.benchSeen"))
            page.wait_for_selector("#composer .send:visible")  # its reply has finished
        browser.close()
    return {
        "metric": "ui_chat",
        "cold_kb": round(cold / 1024, 1),
        "cold_resources": dict(sorted(by_url.items(), key=lambda kv: -kv[1])),
        "enter_to_own_ms_median": round(statistics.median(times), 1),
        "enter_to_own_ms_p90": round(sorted(times)[int(len(times) * 0.9) - 1], 1),
        "runs": runs,
        "database": "postgresql" if os.environ.get("DATABASE_URL") else "sqlite",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--runs", type=int, default=25)
    args = parser.parse_args()
    cookie = prepare()
    server = start_server(args.port)
    try:
        print(json.dumps(measure(args.port, cookie, args.runs)))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)


if __name__ == "__main__":
    main()
