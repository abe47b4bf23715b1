"""Faults a deployment meets (issue 10), on two real daphne processes, PostgreSQL and a redis-server of
the suite's own: kill -9 and SIGTERM of a serving process, Redis outages, database connection cuts,
SIGSTOP/SIGCONT of the process running a reply, a 1.7 MB catch-up, two deployments on one Redis.

Each scenario checks, with real websocket pages and API writers: nothing lost, duplicated or out of
order once the pages caught up; no 5xx for a write that was stored; no zombie reply stream; a dead
reply resumed or marked within the stale window; daphne gone within 10 s of SIGTERM. The recovery
times it sees go to test-artifacts/fault-recovery.json (and the README's Reliability section).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid

import httpx
import psycopg
import pytest
import redis as redis_lib
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model

from .conftest import (
    APP_NAME,
    FAULT_RESYNC_SECONDS,
    FAULT_STALE_SECONDS,
    FAULT_SWEEP_SECONDS,
    SHUTDOWN_LIMIT,
    WORD_DELAY,
    Server,
)
from .support import FRAME_LIMIT, Api, Page, Write, check_delivery, committed_5xx, dropped, login

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

# A dead reply is marked within the stale window, plus one sweep and the time to see it.
MARK_WITHIN = FAULT_STALE_SECONDS + FAULT_SWEEP_SECONDS + 2.0
REPLY_SECONDS = 45 * WORD_DELAY  # the built-in responder's answer streams for about this long
CATCH_UP_WITHIN = FAULT_RESYNC_SECONDS + 3.0  # a page has caught up within one check-in (plus slack)
RESUME_WITHIN = MARK_WITHIN + REPLY_SECONDS + 6.0  # marked, resumed, and streamed once more
BACKLOG_SECONDS = 1.0  # a thawed process sends what it had queued before it froze within this


@pytest.fixture
def actor(up):
    """A user with a browser login and an API key, committed (the servers read them; no test transaction)."""
    user = get_user_model().objects.create_user(f"f{uuid.uuid4().hex[:10]}", password="pw-faults-123")
    cookie, secret = login(user)
    return user, cookie, secret


@pytest.fixture
async def api(up, actor):
    client = Api(up.servers, actor[2])
    yield client
    await client.close()


@pytest.fixture
async def pages():
    opened: list[Page] = []
    yield opened
    for page in opened:
        await page.stop()


def sid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def open_page(
    pages: list[Page], servers: list[Server], session_id: str, cookie: str, name: str, *, resync: bool = True
) -> Page:
    page = Page(servers, session_id, cookie, name=name, resync=resync).start()
    pages.append(page)
    assert await page.wait_for(lambda: page.frames, 10) is not None, f"{name}: no answer to the hello"
    return page


async def converged(pages: list[Page], api: Api, session_id: str, timeout: float) -> tuple[list[dict], float]:
    """Wait until every page shows the stored list; return it and the seconds that took."""
    started = time.monotonic()
    stored = await api.messages(session_id)
    while time.monotonic() - started < timeout:
        stored = await api.messages(session_id)
        seqs = [m["seq"] for m in stored]
        if all(p.seqs() == seqs for p in pages):
            break
        await asyncio.sleep(0.1)
    return stored, time.monotonic() - started


async def reply_settled(api: Api, session_id: str, timeout: float) -> dict | None:
    """The session's latest reply once it is no longer running (None: still running at the timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = await api.reply(session_id)
        if reply is not None and reply["status"] != "running":
            return reply
        await asyncio.sleep(0.1)
    return None


async def answered(api: Api, session_id: str, timeout: float) -> dict | None:
    """The session's latest reply once it is done (None: not within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = await api.reply(session_id)
        if reply is not None and reply["status"] == "done":
            return reply
        await asyncio.sleep(0.1)
    return None


async def first_change(api: Api, session_id: str, reply_id: int, timeout: float) -> float | None:
    """Seconds until reply ``reply_id`` stops being the session's running reply (marked or resumed)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        reply = await api.reply(session_id)
        if reply is not None and (reply["id"] != reply_id or reply["status"] != "running"):
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    return None


def assistant_answers(stored: list[dict], after_seq: int) -> list[dict]:
    """Assistant messages stored after the user message ``after_seq``."""
    return [m for m in stored if m["role"] == "assistant" and m["seq"] > after_seq]


def no_zombie(page: Page, reply_id: int, since: float) -> None:
    """The ended reply ``reply_id`` streams nothing to the page after ``since``, never after a newer
    reply's stream began there, and the page does not end up showing it running."""
    ghosts = [entry for entry in page.stream_log if entry[0] >= since and entry[2] == reply_id]
    assert not ghosts, f"{page.name}: reply {reply_id} kept streaming after it was ended: {ghosts[:3]}"
    newer = [i for i, entry in enumerate(page.stream_log) if entry[2] is not None and entry[2] > reply_id]
    if newer:
        interleaved = [entry for entry in page.stream_log[newer[0] :] if entry[2] == reply_id]
        assert not interleaved, f"{page.name}: reply {reply_id} streamed between its successor's frames"
    assert page.stream[0] != "streaming", f"{page.name}: still shows a running reply ({page.stream[1]})"


# ---------------------------------------------------------------------------------------------


async def test_static_files_are_hashed_and_cached_forever(up):
    """ServeStatic (on the event loop) serves the collected, hashed names with a far-future cache."""
    a = up.servers[0]
    async with httpx.AsyncClient() as client:
        page = await client.get(f"{a.url}/accounts/login/")
        assert page.status_code == 200
        src = re.search(r'src="(/static/convo/app\.[0-9a-f]{12}\.js)"', page.text)
        assert src, "the page links the hashed name"
        asset = await client.get(f"{a.url}{src[1]}")
        assert asset.status_code == 200
        assert asset.headers["cache-control"] == "max-age=315360000, public, immutable"


class Scene:
    """Two conversations, each open in a page on each server: one gets an assistant reply (started on
    server A), the other a stream of appends through both servers. (An append to a conversation
    while its reply runs would make that reply drop its answer, so they are kept apart.)"""

    def __init__(self, api: Api, servers: list[Server], cookie: str, name: str) -> None:
        self.api = api
        self.a, self.b = servers
        self.cookie = cookie
        self.name = name
        self.reply_session = sid(f"{name}-r")
        self.write_session = sid(f"{name}-w")
        self.reply_pages: list[Page] = []
        self.write_pages: list[Page] = []
        self.ask: Write | None = None
        self.reply_id: int | None = None
        self.writes: list[Write] = []

    async def open(self, pages: list[Page], *, extra_on_a: int = 0) -> Scene:
        await self.api.create_session(self.reply_session)
        await self.api.create_session(self.write_session)
        orders = [[self.a, self.b], [self.b, self.a]] + [[self.a, self.b]] * extra_on_a
        for i, order in enumerate(orders):
            for session, group in ((self.reply_session, self.reply_pages), (self.write_session, self.write_pages)):
                kind = "reply" if group is self.reply_pages else "writes"
                page = await open_page(pages, order, session, self.cookie, f"{kind}-page-{i}-on-{order[0].name}")
                group.append(page)
        return self

    @property
    def pages(self) -> list[Page]:
        return self.reply_pages + self.write_pages

    def pages_on(self, server: Server) -> list[Page]:
        return [p for p in self.pages if p.servers[0] is server]

    async def start_reply(self) -> int:
        self.ask = await self.api.append(self.reply_session, "ask-0", server=self.a, respond=True)
        watcher = self.reply_pages[1]  # on server B
        assert await watcher.wait_for(lambda: watcher.stream[0] == "streaming", 5) is not None, "no reply stream"
        self.reply_id = watcher.stream[1]
        return self.reply_id

    def write(self, count: int, interval: float) -> asyncio.Future:
        async def run() -> None:
            tasks = []
            for i in range(count):
                server = (self.a, self.b)[i % 2]
                tasks.append(asyncio.ensure_future(self.api.append(self.write_session, f"w{i}", server=server)))
                await asyncio.sleep(interval)
            self.writes += await asyncio.gather(*tasks)

        return asyncio.ensure_future(run())

    async def settle(self, timeout: float) -> tuple[list[dict], list[dict]]:
        """Wait until every page shows its conversation's stored list; check delivery and no 5xx for
        a stored write; return both stored lists."""
        stored_r, _ = await converged(self.reply_pages, self.api, self.reply_session, timeout)
        stored_w, _ = await converged(self.write_pages, self.api, self.write_session, timeout)
        for page in self.reply_pages:
            check_delivery(page, stored_r, [self.ask] if self.ask else [])
        for page in self.write_pages:
            check_delivery(page, stored_w, self.writes)
        assert committed_5xx([*self.writes, *([self.ask] if self.ask else [])]) == []
        return stored_r, stored_w

    def no_zombie(self, since: float) -> None:
        for page in self.reply_pages:
            no_zombie(page, self.reply_id, since)


async def test_kill_9_mid_stream(up, api, actor, pages, record):
    a, b = up.servers
    scene = await Scene(api, [a, b], actor[1], "kill").open(pages)
    reply_id = await scene.start_reply()
    writers = scene.write(20, 0.1)
    await asyncio.sleep(1.0)
    a.kill(signal.SIGKILL)
    killed = time.monotonic()
    await asyncio.to_thread(a.proc.wait, 5)
    await writers
    _, took = await converged(scene.write_pages, api, scene.write_session, CATCH_UP_WITHIN)
    record("kill -9", "pages caught up after the last write (s)", took)

    marked = await first_change(api, scene.reply_session, reply_id, MARK_WITHIN)
    assert marked is not None, f"the dead reply {reply_id} was still running {MARK_WITHIN} s after the kill"
    record("kill -9", "dead reply marked or resumed (s after kill)", time.monotonic() - killed)
    # Resumed by the live process (CONVO_REPLY_AUTO_RETRY): the person gets the answer without acting.
    done = await answered(api, scene.reply_session, RESUME_WITHIN)
    assert done is not None and done["id"] != reply_id, f"the dead reply was not resumed: {done}"
    record("kill -9", "reply resumed and finished (s after kill)", time.monotonic() - killed)
    stored_r, _ = await scene.settle(CATCH_UP_WITHIN)
    assert len(assistant_answers(stored_r, scene.ask.seq)) == 1
    for page in scene.pages_on(a):
        reopened = [t for t, name in page.opens if t > killed]
        assert reopened, f"{page.name}: did not reconnect"
        record("kill -9", "page reconnected to the other server (s)", reopened[0] - killed)
    scene.no_zombie(killed + MARK_WITHIN)


async def test_sigterm_with_requests_and_a_reply_in_flight(up, api, actor, pages, record):
    a, b = up.servers
    scene = await Scene(api, [a, b], actor[1], "term").open(pages, extra_on_a=1)
    await scene.start_reply()
    await asyncio.sleep(0.5)
    batch = [asyncio.ensure_future(api.append(scene.write_session, f"t{i}", server=a)) for i in range(16)]
    await asyncio.sleep(0.02)  # the requests are on their way
    term_at = time.monotonic()
    exit_seconds = await asyncio.to_thread(a.terminate)
    scene.writes += await asyncio.gather(*batch)
    record("SIGTERM", "daphne exited (s after SIGTERM)", exit_seconds)
    assert exit_seconds < SHUTDOWN_LIMIT
    assert a.proc.returncode == 0, f"exit status {a.proc.returncode} (the watchdog had to end it)"
    assert dropped(scene.writes) == [], "requests in flight lost their response"
    statuses = [x.status for w in scene.writes for x in w.attempts if x.server == "a" and x.status is not None]
    record(
        "SIGTERM", "appends answered by the stopping server (201/503)", f"{statuses.count(201)}/{statuses.count(503)}"
    )
    for page in scene.pages_on(a):
        codes = [code for t, code, server in page.closes if server == "a"]
        assert codes and codes[0] in (1001, 1012), f"{page.name}: closed with {codes}"
        assert await page.wait_for(lambda p=page: any(n == "b" and t > term_at for t, n in p.opens), 3) is not None
        back = min(t for t, n in page.opens if n == "b" and t > term_at)
        record("SIGTERM", f"{page.name} reconnected (s after SIGTERM)", back - term_at)
    # Finished within the grace period, or handed over and resumed by the other process.
    done = await answered(api, scene.reply_session, RESUME_WITHIN)
    assert done is not None, "the reply of the stopped server was neither finished nor resumed"
    record("SIGTERM", "reply answered (s after SIGTERM)", time.monotonic() - term_at)
    stored_r, _ = await scene.settle(CATCH_UP_WITHIN)
    scene.no_zombie(time.monotonic())
    assert len(assistant_answers(stored_r, scene.ask.seq)) == 1


async def test_redis_outage_mid_stream(up, api, actor, pages, record):
    a, b = up.servers
    scene = await Scene(api, [a, b], actor[1], "redis").open(pages)
    await scene.start_reply()
    writers = scene.write(30, 0.15)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(up.redis.stop)
    down_at = time.monotonic()
    # A page opening during the outage is accepted and served from the database.
    during = Page([b, a], scene.write_session, actor[1], name="page-opened-during-outage").start()
    pages.append(during)
    scene.write_pages.append(during)
    assert await during.wait_for(lambda: during.frames, 5) is not None, (
        f"a handshake during the outage failed: {during.handshake_failures}"
    )
    await asyncio.sleep(3.0)
    await asyncio.to_thread(up.redis.start)
    up_at = time.monotonic()
    await writers
    statuses = {x.status for w in scene.writes for x in w.attempts}
    assert statuses == {201}, f"appends failed with Redis down: {statuses}"
    settled = await reply_settled(api, scene.reply_session, REPLY_SECONDS + 5)
    assert settled is not None and settled["status"] == "done", settled
    await scene.settle(CATCH_UP_WITHIN)
    record("Redis outage mid-stream", "outage (s)", up_at - down_at)
    record("Redis outage mid-stream", "pages caught up after Redis was back (s)", time.monotonic() - up_at)
    # Staleness: how long a message stored during the outage took to show on each page.
    stale = [
        page.seen_at[w.seq] - w.committed_at
        for page in scene.write_pages[:2]
        for w in scene.writes
        if down_at <= w.committed_at <= up_at
    ]
    assert stale, "no write was stored during the outage"
    record("Redis outage mid-stream", "worst staleness of a page (s)", max(stale))
    assert max(stale) <= FAULT_RESYNC_SECONDS + 2.0, f"a page stayed behind {max(stale):.1f} s"
    for page in scene.reply_pages:
        await page.wait_for(lambda p=page: p.stream[0] != "streaming", CATCH_UP_WITHIN)
        assert page.stream[0] != "streaming", f"{page.name}: a finished reply still shows as running"


async def test_redis_outage_at_the_end_of_a_stream(up, api, actor, pages, record):
    """Redis goes away just before the reply ends: the end of the stream and the stored answer reach
    the pages through their check-in, while Redis is still down."""
    a, b = up.servers
    scene = await Scene(api, [a, b], actor[1], "redis-end").open(pages)
    await scene.start_reply()
    await asyncio.sleep(max(0.5, REPLY_SECONDS - 1.0))
    await asyncio.to_thread(up.redis.stop)
    try:
        settled = await reply_settled(api, scene.reply_session, 10)
        assert settled is not None and settled["status"] == "done", settled
        done_at = time.monotonic()
        stored = await api.messages(scene.reply_session)
        assert len(assistant_answers(stored, scene.ask.seq)) == 1
        seqs = [m["seq"] for m in stored]
        took = await scene.reply_pages[0].wait_for(
            lambda: all(p.seqs() == seqs and p.stream[0] != "streaming" for p in scene.reply_pages),
            FAULT_RESYNC_SECONDS + 2.0,
        )
        assert took is not None, "pages behind with Redis down: " + "; ".join(
            f"{p.name} {p.seqs()} {p.stream[0]}" for p in scene.reply_pages
        )
        record(
            "Redis outage at the end of a stream", "pages showed the answer, Redis down (s)", time.monotonic() - done_at
        )
    finally:
        await asyncio.to_thread(up.redis.start)
    await scene.settle(CATCH_UP_WITHIN)


def cut_connections() -> int:
    """pg_terminate_backend on the servers' connections to the test database (this run's own only)."""
    db = django_settings.DATABASES["default"]
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"], user=db["USER"], password=db["PASSWORD"], dbname=db["NAME"], autocommit=True
    ) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid()",
            [APP_NAME],
        ).fetchall()
    return len(rows)


async def test_database_connection_cuts(up, api, actor, pages, record):
    a, b = up.servers
    scene = await Scene(api, [a, b], actor[1], "cut").open(pages)
    reply_id = await scene.start_reply()
    writers = scene.write(30, 0.1)
    cuts = []
    for _ in range(2):
        await asyncio.sleep(1.0)
        cuts.append(time.monotonic())
        await asyncio.to_thread(cut_connections)
    await writers
    for n, cut in enumerate(cuts, 1):
        after = [w.committed_at for w in scene.writes if w.committed_at and w.committed_at > cut]
        if after:
            record("DB connection cut", f"next stored write after cut {n} (s)", min(after) - cut)
    settled = await reply_settled(api, scene.reply_session, REPLY_SECONDS + MARK_WITHIN + 5)
    assert settled is not None, f"reply {reply_id} is still running after its connections were cut"
    record("DB connection cut", "reply ended (status)", settled["status"])
    # Its process is alive: the reply is not taken for dead (the watcher got its connection back and
    # kept beating); it finished, or ended with the real reason when its own connection was cut.
    assert settled["status"] in ("done", "error"), settled
    if settled["status"] == "error":
        assert settled["error"] and "interrupted" not in settled["error"], settled["error"]
    # Nothing stays "running": the next reply can start at once.
    scene.ask = await api.append(scene.reply_session, "ask-1", server=b, respond=True)
    assert await reply_settled(api, scene.reply_session, REPLY_SECONDS + 5) is not None
    await scene.settle(CATCH_UP_WITHIN)
    scene.no_zombie(time.monotonic())


async def test_sigstop_of_the_process_running_a_reply(up, api, actor, pages, record):
    a, b = up.servers
    scene = await Scene(api, [a, b], actor[1], "stop").open(pages)
    reply_id = await scene.start_reply()
    await asyncio.sleep(0.5)
    a.freeze()
    stopped_at = time.monotonic()
    try:
        marked = await first_change(api, scene.reply_session, reply_id, MARK_WITHIN)
        assert marked is not None, f"the frozen process's reply was still running {MARK_WITHIN} s later"
        record("SIGSTOP", "frozen reply marked or resumed (s after SIGSTOP)", time.monotonic() - stopped_at)
        await asyncio.sleep(max(0.0, FAULT_STALE_SECONDS + 1.0 - (time.monotonic() - stopped_at)))
    finally:
        a.thaw()
    thawed_at = time.monotonic()
    done = await answered(api, scene.reply_session, RESUME_WITHIN)
    assert done is not None and done["id"] != reply_id, f"the frozen reply was not resumed elsewhere: {done}"
    record("SIGSTOP", "reply resumed elsewhere and finished (s after SIGSTOP)", time.monotonic() - stopped_at)
    await asyncio.sleep(1.5)  # the thawed process's reply thread gets its chance to write (it must not)
    stored_r, _ = await scene.settle(CATCH_UP_WITHIN)
    answers = assistant_answers(stored_r, scene.ask.seq)
    assert len(answers) == 1, f"answers to the turn: {[m['seq'] for m in answers]}"
    latest = await api.reply(scene.reply_session)
    assert latest["id"] == done["id"] and latest["status"] == "done"
    # What the frozen process had queued before SIGSTOP goes out as it thaws; after that, nothing.
    scene.no_zombie(thawed_at + BACKLOG_SECONDS)


async def test_a_1_7_mb_catch_up(up, api, actor, pages, record):
    """40 messages of 30,000 characters: the catch-up arrives in frames under the limit, and the socket
    survives a system-prompt edit that re-sends the pane."""
    a, b = up.servers
    session_id = sid("big")
    await api.create_session(session_id)
    filler = ("lorem ipsum dolor sit amet " * 1200)[:29_980]
    writes = [await api.append(session_id, f"big-{i}", server=a, filler=filler) for i in range(40)]
    started = time.monotonic()
    page = await open_page(pages, [a, b], session_id, actor[1], "page")
    took = await page.wait_for(lambda: len(page.shown) == 40, 15)
    assert took is not None, f"caught up {len(page.shown)} of 40; closes: {page.closes}"
    record("1.7 MB catch-up", "caught up (s)", time.monotonic() - started)
    record("1.7 MB catch-up", "bytes", sum(f.size for f in page.frames))
    record("1.7 MB catch-up", "largest frame (bytes)", page.max_frame)
    assert page.max_frame <= FRAME_LIMIT
    assert page.closes == [], f"the socket was closed: {page.closes}"
    # The system prompt edited through the page's form: the whole pane is sent again.
    frames_before = len(page.frames)
    async with httpx.AsyncClient(cookies=_cookies(actor[1])) as client:
        chat = await client.get(f"{a.url}/c/{session_id}/")
        token = chat.cookies.get("csrftoken") or client.cookies.get("csrftoken")
        edit = await client.post(
            f"{a.url}/c/{session_id}/edit/",
            data={
                "system_prompt": "Be brief.",
                "max_messages": "1000",
                "max_tokens": "10000000",
                "timeout_seconds": "3600",
                "persist_system_prompt": "on",
            },
            headers={"X-CSRFToken": token, "HX-Request": "true", "Referer": f"{a.url}/c/{session_id}/"},
        )
        assert edit.status_code == 200, edit.text[:300]
    assert await page.wait_for(lambda: len(page.frames) > frames_before + 1, 10) is not None
    await asyncio.sleep(1.0)
    assert page.closes == [], f"the socket was closed after the edit: {page.closes}"
    assert page.max_frame <= FRAME_LIMIT
    stored = await api.messages(session_id)
    check_delivery(page, stored, writes)


def _cookies(cookie: str) -> dict[str, str]:
    name, _, value = cookie.partition("=")
    return {name: value}


async def test_two_deployments_on_one_redis(up, api, actor, pages, record):
    """A second deployment (its own CONVO_CHANNEL_PREFIX) on the same redis-server hears nothing of the
    first one's events, even for the same session."""
    a, b = up.servers
    other = Server("other", up.redis, CONVO_CHANNEL_PREFIX="faults-other", CONVO_RESYNC_SECONDS="600")
    await asyncio.to_thread(other.start)
    channels: list[str] = []
    listener = redis_lib.Redis.from_url(up.redis.url)
    pubsub = listener.pubsub()
    pubsub.psubscribe("*")

    def listen(until: float) -> None:
        while time.monotonic() < until:
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "pmessage":
                channels.append(message["channel"].decode())

    try:
        session_id = sid("two")
        await api.create_session(session_id)
        await api.append(session_id, "before-0", server=a)
        mine = await open_page(pages, [a], session_id, actor[1], "page-on-a")
        theirs = await open_page(pages, [other], session_id, actor[1], "page-other-deployment", resync=False)
        await theirs.wait_for(lambda: len(theirs.shown) == 1, 5)
        heard_before = len(theirs.frames)
        watching = asyncio.ensure_future(asyncio.to_thread(listen, time.monotonic() + REPLY_SECONDS + 3))
        first = await api.append(session_id, "ask-0", server=a, respond=True)
        writes = [first] + [await api.append(session_id, f"two-{i}", server=b) for i in range(3)]
        assert await reply_settled(api, session_id, REPLY_SECONDS + 5) is not None
        await watching
        stored, _ = await converged([mine], api, session_id, CATCH_UP_WITHIN)
        check_delivery(mine, stored, writes)
        assert mine.stream_log, "the first deployment's page saw no reply stream"
        assert len(theirs.frames) == heard_before, (
            f"the other deployment's page heard {len(theirs.frames) - heard_before} frames of this one's events"
        )
        assert channels, "nothing was published"
        assert all(c.startswith(("faults-a", "faults-other")) for c in channels), sorted({c[:24] for c in channels})
        groups = {c for c in channels if "convo.session." in c}
        assert groups and all(c.startswith("faults-a") for c in groups), groups
        record("two deployments", "channels published by the first (all with its prefix)", len(channels))
    finally:
        pubsub.close()
        listener.close()
        await asyncio.to_thread(other.stop)
