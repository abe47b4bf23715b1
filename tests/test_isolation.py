"""A conversation belongs to its owner, id included; open pages follow the session and the login (issue 9).

The websocket tests go through the real consumer (the ASGI app with its auth and routing) on the
in-memory layer and, with REDIS_URL, on both Redis layers.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client

from convo_site.asgi import application
from sessions_app import engine, events, replies
from sessions_app.models import Reply
from sessions_app.replies import workers

from .replies_support import drain_replies
from .test_consumers import HOST, ORIGIN, _quick_panels, hello, layer  # noqa: F401 (fixtures)

SECRET = "hunter2"

create = database_sync_to_async(engine.session_create)
delete = database_sync_to_async(engine.session_delete)
append_and_reply = database_sync_to_async(replies.append_and_reply)
wait_reply = database_sync_to_async(replies.wait_reply)


def _login(user) -> Client:
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    return client


def _cookie(client: Client) -> bytes:
    name = django_settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}".encode()


async def open_socket(session_id: str, user=None, client: Client | None = None):
    """A socket on the chat page of ``session_id``, with ``client``'s login (or a new login of ``user``)."""
    if client is None:
        client = await database_sync_to_async(_login)(user)
    comm = WebsocketCommunicator(
        application, f"/ws/sessions/{session_id}/", headers=[HOST, ORIGIN, (b"cookie", _cookie(client))]
    )
    connected, _ = await comm.connect(timeout=5)
    return comm, connected


async def everything(comm, quiet: float = 0.5) -> tuple[list[str], int | None]:
    """Every frame a socket gets until it is quiet or closed: (texts, close code or None). A quiet
    socket's application is stopped (the communicator cancels it on the timeout)."""
    texts = []
    while True:
        try:
            out = await comm.receive_output(timeout=quiet)
        except TimeoutError:
            return texts, None
        if out["type"] == "websocket.close":
            return texts, out.get("code")
        texts.append(out.get("text") or "")


@pytest.fixture
def slow_replies(replies_env):
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.2
    return replies_env


pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("close_async_db")]


# ---------------------------------------------------------------------------------------------
# The leak: a socket of a deleted session, and the next owner of its id.


@pytest.mark.usefixtures("layer")
async def test_a_deleted_sessions_socket_gets_nothing_of_the_next_owner_of_its_id(user, other_user, replies_env):
    """A opens support-42's socket without hello and deletes the session; B creates support-42 and
    chats: A's socket receives nothing of B's (it is closed as gone), B's page gets the reply."""
    await create("support-42", owner=user)
    a_socket, connected = await open_socket("support-42", user)
    assert connected
    await delete("support-42", owner=user)

    await create("support-42", owner=other_user)
    b_socket, connected = await open_socket("support-42", other_user)
    assert connected
    await hello(b_socket, 0)
    _, reply = await append_and_reply("support-42", f"Remember that my password is {SECRET}", owner=other_user)
    assert (await wait_reply(reply.pk, 15)).status == Reply.Status.DONE

    b_frames, _ = await everything(b_socket)
    assert any(SECRET in frame for frame in b_frames)  # the reply was there to leak
    a_frames, code = await everything(a_socket)
    assert not any(SECRET in frame or "Got it" in frame for frame in a_frames)
    assert code == 4404  # closed as gone when its session was deleted


@pytest.mark.usefixtures("layer")
async def test_deleting_mid_reply_cancels_it_and_the_next_owner_stays_private(user, other_user, slow_replies):
    """A deletes support-42 while its reply streams: the reply stops at once (its thread ends, no row
    is left), A's socket is closed; B's support-42 then streams nothing to A's socket."""
    await create("support-42", owner=user)
    a_socket, _ = await open_socket("support-42", user)
    _, a_reply = await append_and_reply("support-42", "Tell me a long story please", owner=user)
    for _ in range(100):  # wait until it streams
        if await database_sync_to_async(Reply.objects.filter(pk=a_reply.pk).values_list("text", flat=True).first)():
            break
        await asyncio.sleep(0.05)
    started = time.monotonic()
    await delete("support-42", owner=user)
    thread = workers._local.get(a_reply.pk)
    if thread is not None:
        await asyncio.get_running_loop().run_in_executor(None, thread.thread.join, 5)
    assert time.monotonic() - started < 1.0  # cancelled, not run to its end (word delay 0.2 s)
    assert a_reply.pk not in workers._local
    assert not await database_sync_to_async(Reply.objects.filter(pk=a_reply.pk).exists)()

    await create("support-42", owner=other_user)
    slow_replies.CONVO_BUILTIN_WORD_DELAY = 0
    _, reply = await append_and_reply("support-42", f"Remember that my password is {SECRET}", owner=other_user)
    assert (await wait_reply(reply.pk, 15)).status == Reply.Status.DONE
    a_frames, code = await everything(a_socket)
    assert not any(SECRET in frame or "Got it" in frame for frame in a_frames)
    assert code == 4404


@pytest.mark.usefixtures("layer")
async def test_a_socket_forwards_only_its_own_sessions_events(user):
    """An event in the socket's group that names another session key is dropped."""
    session = await create("mine", owner=user)
    socket, _ = await open_socket("mine", user)
    await hello(socket, 0)
    await get_channel_layer().group_send(
        events.group_name(session.pk),
        {"type": "session.event", "session": "0" * 32, "kind": events.REPLY, "state": "delta", "text": SECRET},
    )
    assert await socket.receive_nothing(timeout=0.5)
    await socket.disconnect()


def test_the_reply_thread_of_a_deleted_session_is_cancelled_through_the_signal(replies_env, user, settings):
    """Deleting the session cancels its running reply in this process at once (sessions_deleted)."""
    settings.CONVO_BUILTIN_WORD_DELAY = 0.3
    engine.session_create("s", owner=user)
    _, reply = replies.append_and_reply("s", "Tell me a long story please", owner=user)
    local = workers._local.get(reply.pk)
    assert local is not None
    engine.session_delete("s", owner=user)
    assert local.handle.is_cancelled
    drain_replies()


# ---------------------------------------------------------------------------------------------
# Two users, one id: the API and the UI.


def test_two_users_each_have_their_own_support_42_through_the_api(user, other_user):
    from sessions_app import keys

    def api(u):
        _, secret = keys.create_api_key(u, "test")
        return Client(HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Bearer {secret}")

    alice, bob = api(user), api(other_user)
    assert alice.post("/api/v1/sessions", {"id": "support-42"}, content_type="application/json").status_code == 201
    r = bob.post("/api/v1/sessions", {"id": "support-42"}, content_type="application/json")
    assert r.status_code == 201 and r.json()["id"] == "support-42"  # no sign that alice has one
    for client, text in ((alice, "alice's"), (bob, f"bob's {SECRET}")):
        r = client.post(
            "/api/v1/sessions/support-42/messages", {"role": "user", "content": text}, content_type="application/json"
        )
        assert r.status_code == 201
    assert [m["content"] for m in alice.get("/api/v1/sessions/support-42/messages").json()["items"]] == ["alice's"]
    assert [m["content"] for m in bob.get("/api/v1/sessions/support-42/messages").json()["items"]] == [
        f"bob's {SECRET}"
    ]
    assert alice.delete("/api/v1/sessions/support-42").status_code == 204
    assert bob.get("/api/v1/sessions/support-42").status_code == 200
    r = bob.post("/api/v1/sessions", {"id": "support-42"}, content_type="application/json")
    assert r.status_code == 409  # bob's own id: taken


def test_two_users_each_have_their_own_support_42_through_the_ui(user, other_user):
    alice, bob = _login(user), _login(other_user)
    new = {"session_id": "support-42", "max_messages": 100, "max_tokens": 8192, "timeout_seconds": 3600}
    assert alice.post("/new/", new).status_code == 302
    r = bob.post("/new/", new)
    assert r.status_code == 302 and r["Location"] == "/c/support-42/"  # never "taken" for alice's id
    bob.post("/c/support-42/send/", {"content": f"bob's {SECRET}", "role": "user"})
    assert SECRET in bob.get("/c/support-42/").content.decode()
    assert SECRET not in alice.get("/c/support-42/").content.decode()
    r = bob.post("/new/", new)
    assert r.status_code == 422 and "That id is taken" in r.content.decode()  # bob's own id


# ---------------------------------------------------------------------------------------------
# Sockets follow the login.


@pytest.mark.usefixtures("layer")
async def test_logout_closes_that_logins_sockets_and_they_cannot_come_back(user):
    await create("mine", owner=user)
    login, other_login = await database_sync_to_async(_login)(user), await database_sync_to_async(_login)(user)
    socket, _ = await open_socket("mine", client=login)
    other, _ = await open_socket("mine", client=other_login)
    await hello(socket, 0)
    await hello(other, 0)
    await database_sync_to_async(login.post)("/accounts/logout/")
    assert (await socket.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4401}
    _, connected = await open_socket("mine", client=login)  # the same cookie: logged out
    assert not connected
    await database_sync_to_async(engine.state_set)("mine", "still", "live")
    frames, code = await everything(other)  # the other login's page stays open and gets the change
    assert code is None and any("still" in frame for frame in frames)


@pytest.mark.usefixtures("layer")
@pytest.mark.parametrize("change", ["password", "deactivated"])
async def test_a_new_password_or_deactivation_closes_every_socket(user, change):
    await create("mine", owner=user)
    sockets = [(await open_socket("mine", user))[0] for _ in range(2)]
    await hello(sockets[0], 0)  # one with hello, one without

    def apply():
        account = get_user_model().objects.get(pk=user.pk)
        if change == "password":
            account.set_password("a-new-password-123")
        else:
            account.is_active = False
        account.save()

    await database_sync_to_async(apply)()
    for socket in sockets:
        _, code = await everything(socket, quiet=5)
        assert code == 4401


@pytest.mark.usefixtures("layer")
async def test_hello_rechecks_the_login(user):
    """A change the signals cannot see (a bulk update) still ends the socket at its next hello."""
    await create("mine", owner=user)
    socket, _ = await open_socket("mine", user)
    await database_sync_to_async(get_user_model().objects.filter(pk=user.pk).update)(is_active=False)
    await socket.send_json_to({"type": "hello", "last_seq": 0})
    assert (await socket.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4401}


# ---------------------------------------------------------------------------------------------
# Namespaces, and operators who see every owner.


def test_ids_are_unique_per_owner_and_ownerless_sessions_have_their_own_namespace(user, other_user):
    mine = engine.session_create("dup", owner=user)
    theirs = engine.session_create("dup", owner=other_user)
    service = engine.session_create("dup")  # no owner
    assert len({mine.pk, theirs.pk, service.pk}) == 3
    for owner in (user, other_user, None):
        with pytest.raises(engine.SessionAlreadyExists):
            engine.session_create("dup", owner=owner)
        assert engine.session_get("dup", owner=owner).owner_id == getattr(owner, "pk", None)
    # The engine used by operators (ANY_OWNER): an id several owners have is refused clearly, on every
    # path (PostgreSQL's one-statement append included); the key always works.
    for call in (
        lambda: engine.session_get("dup"),
        lambda: engine.message_append("dup", "user", "hi"),
        lambda: engine.state_set("dup", "k", "v"),
        lambda: engine.session_delete("dup"),
    ):
        with pytest.raises(engine.SessionAmbiguous, match="Several owners have a session with the id dup"):
            call()
    assert engine.message_append(theirs.pk, "user", "by key").session_id == theirs.pk
    assert engine.messages_all(engine.session_get("dup", owner=user)) == []
    engine.session_delete(theirs.pk)
    engine.session_delete(service.pk)
    assert engine.session_get("dup") == mine  # one left: unambiguous again


def test_operators_see_owner_and_id(admin_client, user, other_user):
    import datetime as dt
    import io

    from django.core.management import call_command

    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    for owner in (user, other_user):
        engine.session_create("support-42", owner=owner, config=engine.SessionConfig(timeout_seconds=1), now=past)
    out = io.StringIO()
    call_command("purge_expired_sessions", "--dry-run", stdout=out)
    assert "alice / support-42" in out.getvalue() and "bob / support-42" in out.getvalue()
    assert str(engine.session_get("support-42", owner=user)) == "support-42 (alice)"
    changelist = admin_client.get("/admin/sessions_app/conversationsession/").content.decode()
    assert changelist.count(">support-42<") == 2 and ">alice<" in changelist and ">bob<" in changelist
    key = engine.session_get("support-42", owner=other_user).pk
    detail = admin_client.get(f"/admin/sessions_app/conversationsession/{key}/change/").content.decode()
    assert "support-42" in detail and "bob" in detail
    call_command("purge_expired_sessions", stdout=io.StringIO())
    assert not engine.session_list()
