"""Convo beside Open WebUI 0.12.4 on the chat workloads of issue 13, over HTTP, on SQLite and PostgreSQL.

    bash bench/run owui                   # both databases, the sizes 100 / 1,000 / 10,000
    python bench/owui.py --db sqlite --sizes 100,1000 --pairs 11    # (inside bench/.venv)

Each side runs as its own server process, as deployed: Convo under daphne (one process, DEBUG off,
in-memory channel layer), Open WebUI under its own `open-webui serve` (offline: no model, no network).
Both are filled through their HTTP APIs with the same content: Convo by appending to a session, Open
WebUI as its frontend builds a chat (a ``history`` tree of messages plus the ``messages`` list, the
whole chat re-posted to ``POST /api/v1/chats/{id}`` on every send). Every workload alternates the two
sides request by request (interleaved pairs), so load from elsewhere on the machine hits both alike;
the figures are medians of the pairs, and ratio = Convo ÷ Open WebUI (lower is better).

- O1 open a chat of 100 / 1,000 / 10,000 messages: Convo's chat page (the HTML a browser gets) against
  Open WebUI's ``GET /api/v1/chats/{id}`` (the JSON its page fetches), with bytes (gzip when offered).
- O2 add one message to that chat: Convo's API append against Open WebUI's full-chat POST, with the
  bytes sent.
- O3 a user with 1,000 conversations: the sidebar (Convo's home page: the sidebar's first page; Open
  WebUI's ``GET /api/v1/chats/?page=1``, 60 titles) and the API list (Convo's ``GET /api/v1/sessions``,
  50 per page, against the same Open WebUI call).
- O4 16 concurrent clients × 100 appends, each to its own conversation: messages/s, p50, p99, failures.
- Server RSS after each workload (VmRSS of the server process and its children).

Open WebUI lives in bench/.venv-owui (created on demand by bench/run owui, never by make test: it is a
several-GB install). Its databases: a temporary DATA_DIR (SQLite), or ``<bench db>_peer_owui`` on the
same PostgreSQL server. Convo's: a temporary SQLite file, or ``<bench db>_owui``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from common import REPO, db_name, db_url_named, log, message_text, recreate_database

OWUI_VENV = Path(os.environ.get("OWUI_VENV", REPO / "bench" / ".venv-owui"))
PASSWORD = "bench-password-1234"
CONVERSATIONS = 1000  # O3: the user's conversations
O4_CLIENTS, O4_APPENDS = 16, 100


# --------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: server exited ({proc.returncode}); see {log_path}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"bench: {url} did not answer within {timeout} s; see {log_path}")


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, in MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            todo += [int(c) for c in children]
        except (OSError, AttributeError):
            continue
    return total / 1024


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Convo:
    name = "convo"

    def __init__(self, db: str, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
        env.update(
            DJANGO_SETTINGS_MODULE="convo_site.settings",
            DJANGO_DEBUG="false",
            DJANGO_SECRET_KEY="convo-bench-not-secret",
            CONVO_API_RATE_LIMIT="none",  # the bench is one client hammering: no throttle on either side
            CONVO_SIGNUP_PER_HOUR="none",
            CONVO_LOGIN_THROTTLE="false",
            CONVO_SECRET_KEY_FILE=str(workdir / "convo-secret"),
        )
        if db == "postgres":
            name = db_name() + "_owui"
            recreate_database(name)
            env["DATABASE_URL"] = db_url_named(name)
        else:
            env["CONVO_SQLITE_PATH"] = str(workdir / "convo.sqlite3")
        self.env = env
        python = sys.executable
        subprocess.run([python, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=env, check=True)
        # Debug off serves hashed static names from the manifest (staticfiles/, git-ignored), as `make run` does.
        subprocess.run([python, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=REPO, env=env, check=True)
        self.log_path = workdir / "convo.log"
        self.proc = subprocess.Popen(
            [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "convo_site.asgi:application"],
            cwd=REPO,
            env=env,
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(self.base + "/accounts/login/", self.proc, 60, self.log_path)
        self.keys: list[str] = []

    def user(self, username: str) -> tuple[httpx.Client, httpx.Client]:
        """A browser (logged-in cookie client) and an API client (Bearer key) for a new user."""
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from django.contrib.auth import get_user_model;"
             f"get_user_model().objects.create_user({username!r}, password={PASSWORD!r})"],
            cwd=REPO, env=self.env, check=True,
        )  # fmt: skip
        out = subprocess.run(
            [sys.executable, "manage.py", "create_api_key", username, "--name", "bench"],
            cwd=REPO, env=self.env, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        key = out.strip()
        api = httpx.Client(base_url=self.base + "/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60)
        browser = httpx.Client(base_url=self.base, timeout=60, headers={"Accept-Encoding": "gzip"})
        page = browser.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        r = browser.post(
            "/accounts/login/",
            data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token},
            headers={"Referer": self.base + "/accounts/login/"},
        )
        assert r.status_code in (200, 302) and "sessionid" in browser.cookies, r.status_code
        return browser, api

    def new_chat(self, api: httpx.Client, title: str) -> str:
        sid = "c-" + uuid.uuid4().hex[:12]
        # Every message stays in the list (as every message stays in Open WebUI's chat) and nothing expires.
        config = {"max_messages": 100000, "timeout_seconds": None}
        r = api.put(f"/sessions/{sid}", json={"config": config, "title": title})
        if r.status_code == 422:  # a Convo without titles in the API
            r = api.put(f"/sessions/{sid}", json={"config": config})
        assert r.status_code in (200, 201), r.text
        return sid

    def append(self, api: httpx.Client, chat: str, role: str, content: str) -> tuple[int, int]:
        body = json.dumps({"role": role, "content": content})
        r = api.post(f"/sessions/{chat}/messages", content=body, headers={"Content-Type": "application/json"})
        return r.status_code, len(body)

    def open(self, browser: httpx.Client, chat: str) -> httpx.Response:
        return browser.get(f"/c/{chat}/")

    def sidebar(self, browser: httpx.Client) -> httpx.Response:
        return browser.get("/")

    def api_list(self, api: httpx.Client) -> httpx.Response:
        return api.get("/sessions", params={"limit": 50}, headers={"Accept-Encoding": "gzip"})


class OpenWebUI:
    name = "open-webui"

    def __init__(self, db: str, workdir: Path) -> None:
        exe = OWUI_VENV / "bin" / "open-webui"
        if not exe.exists():
            raise SystemExit(f"bench: {exe} is missing; bash bench/run owui creates it")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        data = workdir / "owui-data"
        data.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
        env.update(
            OFFLINE_MODE="true",
            HF_HUB_OFFLINE="1",
            ENABLE_OLLAMA_API="false",
            ENABLE_OPENAI_API="false",
            DATA_DIR=str(data),
            WEBUI_SECRET_KEY="owui-bench-not-secret",
            ENABLE_VERSION_UPDATE_CHECK="false",
            RAG_EMBEDDING_MODEL_AUTO_UPDATE="false",
            RAG_RERANKING_MODEL_AUTO_UPDATE="false",
            ENABLE_COMMUNITY_SHARING="false",
            GLOBAL_LOG_LEVEL="WARNING",
        )
        if db == "postgres":
            name = db_name() + "_peer_owui"
            recreate_database(name)
            env["DATABASE_URL"] = db_url_named(name).replace("postgres://", "postgresql+psycopg://", 1)
        self.log_path = workdir / "owui.log"
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=workdir,
            env=env,
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(self.base + "/health", self.proc, 240, self.log_path)
        self.users = 0
        self.state: dict[str, dict] = {}  # each chat as the frontend holds it between sends

    def user(self, username: str) -> tuple[httpx.Client, httpx.Client]:
        self.users += 1
        r = httpx.post(
            self.base + "/api/v1/auths/signup",
            json={"name": username, "email": f"{username}@bench.example", "password": PASSWORD},
            timeout=60,
        )
        if r.status_code != 200 and self.users > 1:  # later sign-ups need the admin to allow them
            raise SystemExit(f"bench: Open WebUI sign-up of {username} failed: {r.status_code} {r.text[:200]}")
        token = r.json()["token"]
        client = httpx.Client(
            base_url=self.base + "/api/v1",
            headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"},
            timeout=120,
        )
        if self.users == 1:  # the admin: let later users sign up as users, not pending
            config = client.get("/auths/admin/config").json()
            config.update(ENABLE_SIGNUP=True, DEFAULT_USER_ROLE="user")
            assert client.post("/auths/admin/config", json=config).status_code == 200
        return client, client

    # A chat as Open WebUI's frontend keeps it: the history tree and the flat list of the current branch.
    @staticmethod
    def _chat(title: str, messages: list[dict]) -> dict:
        return {
            "id": "",
            "title": title,
            "models": ["bench"],
            "params": {},
            "history": {
                "messages": {m["id"]: m for m in messages},
                "currentId": messages[-1]["id"] if messages else None,
            },
            "messages": messages,
            "tags": [],
            "timestamp": int(time.time() * 1000),
            "files": [],
        }

    def new_chat(self, api: httpx.Client, title: str) -> str:
        r = api.post("/chats/new", json={"chat": self._chat(title, [])})
        assert r.status_code == 200, r.text
        chat_id = r.json()["id"]
        self.state[chat_id] = {"title": title, "messages": []}
        return chat_id

    def fill(self, api: httpx.Client, chat: str, items: list[tuple[str, str]]) -> None:
        """The same messages as Convo's appends, linked into the tree, posted once."""
        for role, content in items:
            self._link(chat, role, content)
        kept = self.state[chat]
        r = api.post(f"/chats/{chat}", json={"chat": self._chat(kept["title"], kept["messages"])})
        assert r.status_code == 200, r.text[:300]

    def _link(self, chat: str, role: str, content: str) -> None:
        messages = self.state[chat]["messages"]
        message = {
            "id": str(uuid.uuid4()),
            "parentId": messages[-1]["id"] if messages else None,
            "childrenIds": [],
            "role": role,
            "content": content,
            "timestamp": int(time.time()),
        }
        if role == "user":
            message["models"] = ["bench"]
        else:
            message.update(model="bench", modelName="bench", done=True)
        if messages:
            messages[-1]["childrenIds"] = [message["id"]]
        messages.append(message)

    def append(self, api: httpx.Client, chat: str, role: str, content: str) -> tuple[int, int]:
        """A send as the frontend does it: the new message linked into the tree, the whole chat re-posted."""
        self._link(chat, role, content)
        kept = self.state[chat]
        body = json.dumps({"chat": self._chat(kept["title"], kept["messages"])})
        r = api.post(f"/chats/{chat}", content=body, headers={"Content-Type": "application/json"})
        return r.status_code, len(body)

    def open(self, browser: httpx.Client, chat: str) -> httpx.Response:
        return browser.get(f"/chats/{chat}")

    def sidebar(self, browser: httpx.Client) -> httpx.Response:
        return browser.get("/chats/", params={"page": 1})

    api_list = sidebar


# ------------------------------------------------------------------------------------------- workloads


def timed(func) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    response = func()
    return (time.perf_counter() - t0) * 1000, response


def wire_bytes(response: httpx.Response) -> int:
    """Bytes on the wire: the body as sent (compressed when the server compressed it)."""
    return int(response.headers.get("content-length") or len(response.content))


def pairs(convo_call, peer_call, n: int) -> tuple[list[float], list[float], httpx.Response, httpx.Response]:
    a, b = [], []
    for i in range(n + 2):  # two warm-up pairs
        order = [(convo_call, a), (peer_call, b)] if i % 2 == 0 else [(peer_call, b), (convo_call, a)]
        for call, times in order:
            ms, response = timed(call)
            assert response.status_code == 200, (response.status_code, response.text[:300])
            if i >= 2:
                times.append(ms)
            if call is convo_call:
                last_a = response
            else:
                last_b = response
    return a, b, last_a, last_b


def row(results: list[dict], db: str, workload: str, size, convo_ms: float, peer_ms: float, **extra) -> None:
    line = {
        "bench": "owui",
        "db": db,
        "workload": workload,
        "size": size,
        "convo_ms": round(convo_ms, 2),
        "owui_ms": round(peer_ms, 2),
        "ratio": round(convo_ms / peer_ms, 3) if peer_ms else None,
        **extra,
    }
    results.append(line)
    print(json.dumps(line), flush=True)


def fill(side, api, chat: str, count: int) -> None:
    if isinstance(side, OpenWebUI):  # one POST of the whole chat (its send re-posts it all: quadratic)
        side.fill(api, chat, [("user" if i % 2 == 0 else "assistant", message_text(i)) for i in range(count)])
        return
    for i in range(count):
        status, _ = side.append(api, chat, "user" if i % 2 == 0 else "assistant", message_text(i))
        assert status in (200, 201), status


def o4(side, clients: list[tuple], appends: int) -> dict:
    """Each client appends to its own conversation; every call timed."""

    def work(client_chat):
        api, chat = client_chat
        times, failures = [], 0
        for i in range(appends):
            t0 = time.perf_counter()
            try:
                status, _ = side.append(api, chat, "user" if i % 2 == 0 else "assistant", message_text(i))
            except httpx.HTTPError:
                status = 599
            times.append((time.perf_counter() - t0) * 1000)
            failures += status not in (200, 201)
        return times, failures

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        results = list(pool.map(work, clients))
    wall = time.perf_counter() - t0
    times = sorted(t for r in results for t in r[0])
    return {
        "msgs_per_s": round(len(times) / wall, 1),
        "p50_ms": round(statistics.median(times), 1),
        "p99_ms": round(times[int(len(times) * 0.99) - 1], 1),
        "failures": sum(r[1] for r in results),
    }


def run_db(db: str, sizes: list[int], n: int, results: list[dict]) -> None:
    workdir = Path(tempfile.mkdtemp(prefix=f"owui-bench-{db}-"))
    log(f"{db}: starting Convo and Open WebUI")
    convo = Convo(db, workdir)
    owui = OpenWebUI(db, workdir)
    try:
        sides = (convo, owui)
        users = {side.name: side.user("alice") for side in sides}
        # O1 / O2 at each size.
        for size in sizes:
            chats = {}
            for side in sides:
                browser, api = users[side.name]
                chats[side.name] = side.new_chat(api, f"chat of {size}")
                log(f"{db}: filling {side.name} with {size} messages")
                fill(side, api, chats[side.name], size)
            a, b, ra, rb = pairs(
                lambda chats=chats: convo.open(users["convo"][0], chats["convo"]),
                lambda chats=chats: owui.open(users["open-webui"][0], chats["open-webui"]),
                n,
            )
            row(results, db, "O1 open a chat", size, statistics.median(a), statistics.median(b),
                convo_bytes=wire_bytes(ra), owui_bytes=wire_bytes(rb))  # fmt: skip
            sent = {}

            def add(side, chats=chats, size=size, sent=sent):
                status, size_sent = side.append(users[side.name][1], chats[side.name], "user", message_text(size))
                sent[side.name] = size_sent
                return httpx.Response(200 if status in (200, 201) else status)

            a, b, _, _ = pairs(lambda: add(convo), lambda: add(owui), n)
            row(results, db, "O2 add a message", size, statistics.median(a), statistics.median(b),
                convo_bytes=sent["convo"], owui_bytes=sent["open-webui"])  # fmt: skip
        rss = {side.name: rss_mb(side.proc.pid) for side in sides}
        log(f"{db}: RSS after O1/O2: {rss}")
        # O3: a user with 1,000 conversations (two messages each).
        lib = {side.name: side.user("bob") for side in sides}
        log(f"{db}: creating {CONVERSATIONS} conversations on each side")
        for side in sides:
            api = lib[side.name][1]
            for i in range(CONVERSATIONS):
                chat = side.new_chat(api, f"conversation {i}")
                fill(side, api, chat, 2)
        a, b, ra, rb = pairs(lambda: convo.sidebar(lib["convo"][0]), lambda: owui.sidebar(lib["open-webui"][0]), n)
        row(results, db, "O3 sidebar", CONVERSATIONS, statistics.median(a), statistics.median(b),
            convo_bytes=wire_bytes(ra), owui_bytes=wire_bytes(rb))  # fmt: skip
        a, b, ra, rb = pairs(lambda: convo.api_list(lib["convo"][1]), lambda: owui.api_list(lib["open-webui"][1]), n)
        row(results, db, "O3 API list", CONVERSATIONS, statistics.median(a), statistics.median(b),
            convo_bytes=wire_bytes(ra), owui_bytes=wire_bytes(rb))  # fmt: skip
        # O4: 16 clients, each its own user and conversation.
        o4_figures = {}
        for side in sides:
            clients = []
            for c in range(O4_CLIENTS):
                api = side.user(f"writer{c}")[1]
                clients.append((api, side.new_chat(api, f"writer {c}")))
            log(f"{db}: O4 on {side.name}")
            o4_figures[side.name] = o4(side, clients, O4_APPENDS)
        line = {
            "bench": "owui",
            "db": db,
            "workload": "O4 16 concurrent appenders",
            "convo": o4_figures["convo"],
            "owui": o4_figures["open-webui"],
            "throughput_ratio": round(o4_figures["convo"]["msgs_per_s"] / o4_figures["open-webui"]["msgs_per_s"], 2),
            "rss_mb": {side.name: round(rss_mb(side.proc.pid), 1) for side in sides},
        }
        results.append(line)
        print(json.dumps(line), flush=True)
    finally:
        for side in (convo, owui):
            stop(side.proc)
        shutil.rmtree(workdir, ignore_errors=True)


def table(results: list[dict]) -> str:
    lines = [
        "| workload | size | db | Convo ms | Open WebUI ms | ratio | bytes Convo / Open WebUI |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if "convo_ms" in r:
            size = f"{r['size']:,}"
            b = f"{r.get('convo_bytes', 0):,} / {r.get('owui_bytes', 0):,}"
            lines.append(
                f"| {r['workload']} | {size} | {r['db']} | {r['convo_ms']} | {r['owui_ms']} | {r['ratio']} | {b} |"
            )
    for r in results:
        if "throughput_ratio" in r:
            c, o = r["convo"], r["owui"]
            lines.append(
                f"| O4 16 × 100 appends: msgs/s, p50 / p99 ms, failures | — | {r['db']} | "
                f"{c['msgs_per_s']}/s, {c['p50_ms']} / {c['p99_ms']}, {c['failures']} | "
                f"{o['msgs_per_s']}/s, {o['p50_ms']} / {o['p99_ms']}, {o['failures']} | "
                f"{r['throughput_ratio']}× | RSS {r['rss_mb']['convo']} / {r['rss_mb']['open-webui']} MB |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite,postgres", help="sqlite, postgres or both (comma-separated)")
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--pairs", type=int, default=11, help="interleaved pairs per workload (medians)")
    args = parser.parse_args()
    results: list[dict] = []
    for db in args.db.split(","):
        run_db(db.strip(), [int(s) for s in args.sizes.split(",")], args.pairs, results)
    print(table(results), file=sys.stderr)


if __name__ == "__main__":
    main()
