"""Change notifications reach the session's channel-layer group only after the commit."""

import asyncio
import uuid

import pytest
from channels.db import database_sync_to_async
from django.db import transaction

from sessions_app import engine, events

from .channel_support import Listener

pytestmark = pytest.mark.django_db(transaction=True)


def sync(func, *args, **kwargs):
    return database_sync_to_async(func)(*args, **kwargs)


async def test_append_notifies_with_sequence_and_turn():
    await sync(engine.session_create, "ev")
    async with Listener("ev") as listener:
        await sync(engine.message_append, "ev", "user", "hi")
        event = await listener.get()
    assert event == {"type": "session.event", "session": listener.key.hex, "kind": "message", "seq": 1, "turn": 1}


class Abort(Exception):
    pass


def rolled_back_writes():
    with pytest.raises(Abort), transaction.atomic():
        engine.message_append("ev", "user", "never committed")
        engine.state_set("ev", "k", "v")
        raise Abort


async def test_nothing_is_sent_after_rollback_and_only_after_commit():
    await sync(engine.session_create, "ev")
    async with Listener("ev") as listener:
        await sync(rolled_back_writes)
        assert await listener.get(timeout=0.5) is None
        await _commit_slowly(listener)


async def _commit_slowly(listener):

    opened, committed = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_commit():
        with transaction.atomic():
            engine.state_set("ev", "k", "v")
            loop.call_soon_threadsafe(opened.set)
            # Hold the transaction open while the test listens.
            asyncio.run_coroutine_threadsafe(committed.wait(), loop).result(5)

    writer = asyncio.ensure_future(sync(slow_commit))
    await opened.wait()
    assert await listener.get(timeout=0.3) is None  # written, not yet committed
    committed.set()
    await writer
    assert (await listener.get())["kind"] == "state"


async def test_each_kind_of_change_is_announced():
    await sync(engine.session_create, "ev")
    async with Listener("ev") as listener:
        await sync(engine.session_update, "ev", metadata={"a": "b"})
        await sync(engine.state_set_data, "ev", "k", [1])
        await sync(engine.session_clear_messages, "ev")
        await sync(engine.session_delete, "ev")
        kinds = [(await listener.get())["kind"] for _ in range(4)]
    assert kinds == ["config", "state", "cleared", "deleted"]


def test_group_names_are_valid_and_named_by_key():
    keys = [uuid.uuid4() for _ in range(3)]
    names = {events.group_name(key) for key in keys}
    assert len(names) == 3
    assert all(len(n) < 100 and n.replace(".", "").replace("-", "").replace("_", "").isalnum() for n in names)


def test_events_are_addressed_by_key_never_by_id():
    """A caller's id is not an address: another user may have the same id, or create it later."""
    with pytest.raises(TypeError):
        events.emit("support-42", events.MESSAGE)
