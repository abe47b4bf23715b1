"""The sidebar follows the user's conversations live, in every tab of that user (issue 11): through
the user's channel-layer group, after the commit, on the in-memory layer and on Redis."""

import pytest
from channels.db import database_sync_to_async

from sessions_app import consumers, engine

from .test_consumers import (
    connect,
    hello,
    layer,  # noqa: F401 - a fixture, used by name
    settle,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("layer")]


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    monkeypatch.setattr(consumers, "PANEL_DELAY", 0.1)
    monkeypatch.setattr(consumers, "LIBRARY_DELAY", 0.05)


def sidebar_frames(frames):
    return [f for f in frames if 'id="sidebar-sections" hx-swap-oob="true"' in f]


async def test_every_tab_of_the_user_gets_the_new_sidebar_and_no_one_else(user, other_user):
    await database_sync_to_async(engine.session_create)("one", owner=user)
    await database_sync_to_async(engine.session_create)("two", owner=user)
    await database_sync_to_async(engine.session_create)("theirs", owner=other_user)
    tab1, _ = await connect("one", user)
    tab2, _ = await connect("two", user)
    stranger, _ = await connect("theirs", other_user)
    for comm in (tab1, tab2, stranger):
        await hello(comm, 0)
        await settle(comm)

    # New, in another tab (or the API): both tabs list it.
    await database_sync_to_async(engine.session_create)("three", owner=user)
    for comm in (tab1, tab2):
        [frame] = sidebar_frames(await settle(comm))
        assert 'data-session-id="three"' in frame and 'data-session-id="one"' in frame
    assert sidebar_frames(await settle(stranger)) == []

    # Renamed, pinned, archived, deleted.
    await database_sync_to_async(engine.session_set_library)("one", owner=user, title="Renamed one", pinned=True)
    [frame] = sidebar_frames(await settle(tab2))
    assert "Renamed one" in frame and frame.index("Pinned") < frame.index("Renamed one")
    await settle(tab1)
    await database_sync_to_async(engine.session_set_library)("three", owner=user, archived=True)
    [frame] = sidebar_frames(await settle(tab1))
    assert 'data-session-id="three"' not in frame
    await settle(tab2)
    await database_sync_to_async(engine.session_delete)("two", owner=user)
    frames = await settle(tab1)
    assert 'data-session-id="two"' not in sidebar_frames(frames)[-1]

    assert sidebar_frames(await settle(stranger)) == []  # the stranger heard nothing of any of it
    for comm in (tab1, tab2, stranger):
        await comm.disconnect()


async def test_activity_reorders_the_sidebar_in_the_other_tabs(user):
    await database_sync_to_async(engine.session_create)("x", owner=user)
    await database_sync_to_async(engine.session_create)("y", owner=user)
    tab, _ = await connect("y", user)
    await hello(tab, 0)
    await settle(tab)
    await database_sync_to_async(engine.message_append)("x", "user", "x moves up", owner=user)
    [frame] = sidebar_frames(await settle(tab))
    assert frame.index('data-session-id="x"') < frame.index('data-session-id="y"')
    assert "x moves up" in frame  # and has its title
    await tab.disconnect()


async def test_a_rolled_back_change_pushes_no_sidebar(user):
    from django.db import transaction

    await database_sync_to_async(engine.session_create)("one", owner=user)
    tab, _ = await connect("one", user)
    await hello(tab, 0)
    await settle(tab)

    def rolled_back():
        with pytest.raises(RuntimeError), transaction.atomic():
            engine.session_set_library("one", owner=user, title="never")
            raise RuntimeError("boom")

    await database_sync_to_async(rolled_back)()
    assert sidebar_frames(await settle(tab)) == []
    await tab.disconnect()
