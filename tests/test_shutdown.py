"""Graceful shutdown (convo_site/shutdown.py) on the real application: no middleware makes a thread
wait on the event loop, a draining process refuses new requests with 503 and closes its websockets
with 1012, and it waits for the requests in flight before it stops. (Real daphne processes and
SIGTERM: tests/faults.)"""

import asyncio
import json

import pytest
from asgiref.sync import iscoroutinefunction
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.conf import settings
from django.utils.module_loading import import_string

from convo_site import asgi, shutdown
from sessions_app import engine

from .test_consumers import HOST, ORIGIN, cookie_for

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _reopen_replies():
    """A drain calls the replies' shutdown, which closes this process for new replies: open it again
    for the tests that follow."""
    from sessions_app.replies import workers

    yield
    workers._closing.clear()


def test_every_middleware_runs_on_the_event_loop():
    """A sync-only middleware under ASGI holds an executor thread that waits on the loop for the rest
    of the request (async_to_sync): when daphne stops the loop, that thread waits forever and the
    process never exits (whitenoise's middleware did this)."""
    sync_only = [path for path in settings.MIDDLEWARE if not getattr(import_string(path), "async_capable", False)]
    assert sync_only == []


@pytest.mark.parametrize("path", ["sessions_app.request_guard.NulRequestMiddleware"])
def test_the_nul_guard_is_async_when_the_chain_is(path):
    async def inner(request):
        return "passed"

    middleware = import_string(path)(inner)
    assert iscoroutinefunction(middleware)


async def test_a_draining_process_refuses_new_requests(settings):
    drain = shutdown.Drain()
    app = drain.wrap(asgi.router)
    stopped = []
    settings.CONVO_SHUTDOWN_GRACE_SECONDS = 2
    await drain.shutdown(stop=lambda: stopped.append(True))
    assert stopped == [True]
    api = await HttpCommunicator(app, "GET", "/api/v1/sessions", headers=[HOST]).get_response(timeout=5)
    assert api["status"] == 503
    assert dict(api["headers"])[b"retry-after"] == b"1"
    assert json.loads(api["body"])["error"] == "shutting_down"
    page = await HttpCommunicator(app, "GET", "/accounts/login/", headers=[HOST]).get_response(timeout=5)
    assert page["status"] == 503


async def test_shutdown_waits_for_the_request_in_flight(settings, user, close_async_db):
    """A request that started before the shutdown gets its real answer; only then does the server stop."""
    settings.CONVO_SHUTDOWN_GRACE_SECONDS = 5
    drain = shutdown.Drain()
    app = drain.wrap(asgi.router)
    cookie = (await database_sync_to_async(cookie_for)(user)).encode()
    release = asyncio.Event()

    async def slow_receive_app(scope, receive, send):
        async def late_receive():
            await release.wait()  # the body arrives after the shutdown began
            return await receive()

        return await asgi.router(scope, late_receive, send)

    in_flight_app = drain.wrap(slow_receive_app)  # the same drain as ``app``
    request = HttpCommunicator(in_flight_app, "GET", "/api/v1/sessions", headers=[HOST, (b"cookie", cookie)])
    response = asyncio.ensure_future(request.get_response(timeout=10))
    for _ in range(100):
        if drain.http_in_flight:
            break
        await asyncio.sleep(0.01)
    assert drain.http_in_flight == 1
    stopped = []
    shutting = asyncio.ensure_future(drain.shutdown(stop=lambda: stopped.append(drain.http_in_flight)))
    await asyncio.sleep(0.2)
    assert stopped == []  # still waiting for the request
    refused = await HttpCommunicator(app, "GET", "/api/v1/sessions", headers=[HOST]).get_response(timeout=5)
    assert refused["status"] == 503
    release.set()
    answer = await response
    assert answer["status"] == 200
    await asyncio.wait_for(shutting, 5)
    assert stopped == [0]


async def test_open_sockets_are_closed_with_1012(settings, user, close_async_db):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.CONVO_SHUTDOWN_GRACE_SECONDS = 1
    await database_sync_to_async(engine.session_create)("closing", owner=user)
    drain = shutdown.Drain()
    app = drain.wrap(asgi.router)
    cookie = (await database_sync_to_async(cookie_for)(user)).encode()
    headers = [HOST, ORIGIN, (b"cookie", cookie)]
    comm = WebsocketCommunicator(app, "/ws/sessions/closing/", headers=headers)
    connected, _ = await comm.connect(timeout=5)
    assert connected
    await drain.shutdown(stop=None)
    closed = await comm.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": shutdown.CLOSE_SERVICE_RESTART}
    await comm.disconnect()
    late = WebsocketCommunicator(app, "/ws/sessions/closing/", headers=headers)
    connected, code = await late.connect(timeout=5)
    assert not connected and code == shutdown.CLOSE_SERVICE_RESTART


async def test_lifespan_shutdown_drains():
    """Under a server that speaks ASGI lifespan (uvicorn), its shutdown event runs the drain."""
    drain = shutdown.Drain()
    app = drain.wrap(asgi.router)
    inbox: asyncio.Queue = asyncio.Queue()
    sent = []

    async def send(message):
        sent.append(message["type"])

    task = asyncio.ensure_future(app({"type": "lifespan"}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 10)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert drain.shutting_down


@pytest.mark.django_db(transaction=True)
def test_the_drain_hands_the_running_replies_over(make_session, scripted, sent, settings):
    """SIGTERM's drain calls the replies' shutdown: a reply that does not finish within the grace
    period is stopped and marked for another process to resume, before the server stops."""
    from sessions_app import replies
    from sessions_app.models import Reply
    from sessions_app.replies import workers

    from .replies_faults_support import wait_for

    settings.CONVO_SHUTDOWN_GRACE_SECONDS = 0.2
    scripted.steps = ["one ", "until-cancelled"]
    make_session("s")
    _, reply = replies.append_and_reply("s", "hi")
    wait_for(lambda: len(sent.replies(reply.pk)) >= 2, what="some deltas")
    stopped = []
    asyncio.run(shutdown.Drain().shutdown(stop=lambda: stopped.append(dict(workers._local))))
    assert stopped == [{}]  # no reply thread left when the server stops
    row = Reply.objects.get(pk=reply.pk)
    assert (row.status, row.finish_reason) == ("interrupted", "interrupted")
    assert "shut down" in row.error
