"""The API against real concurrency and the real channel layer: concurrent retries with one
Idempotency-Key add exactly one message (PostgreSQL, threads), and an API append reaches the
session's channel-layer group after the commit, as an open chat page would receive it."""

from __future__ import annotations

import threading

import pytest
from channels.db import database_sync_to_async
from django.db import connection, connections

from sessions_app import events
from sessions_app.models import ConversationSession, Message

from .channel_support import Listener
from .test_api_support import Api, api_for

THREADS = 8


def _in_threads(n: int, work) -> list:
    """Run ``work(i)`` in n threads released at the same moment; return the results in order."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except Exception as exc:  # reported by the caller's assertions
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return results


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_with_one_idempotency_key_create_exactly_one_message(user):
    api = api_for(user)
    api.put("/sessions/retry")
    body = {"role": "user", "content": "exactly once"}

    def send(i):
        r = Api(api.secret).post("/sessions/retry/messages", body, headers={"Idempotency-Key": "same-key"})
        return r.status_code, r.json(), r.get("Idempotent-Replayed")

    results = _in_threads(THREADS, send)
    assert all(isinstance(r, tuple) for r in results), results
    assert {status for status, _, _ in results} == {201}
    assert len({repr(sorted(body.items())) for _, body, _ in results}) == 1  # every caller got the first result
    assert sum(1 for _, _, replayed in results if replayed is None) == 1
    assert Message.objects.filter(session__sid="retry").count() == 1
    session = ConversationSession.objects.get(sid="retry")
    assert (session.last_seq, session.turn_count) == (1, 1)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_with_different_keys_all_land_gap_free(user):
    api = api_for(user)
    api.put("/sessions/busy")

    def send(i):
        r = Api(api.secret).post(
            "/sessions/busy/messages", {"role": "user", "content": f"m{i}"}, headers={"Idempotency-Key": f"k{i}"}
        )
        return r.status_code, r.json()["seq"]

    results = _in_threads(THREADS, send)
    assert sorted(seq for _, seq in results) == list(range(1, THREADS + 1))
    assert {status for status, _ in results} == {201}


def _call(func, *args, **kwargs):
    return database_sync_to_async(func)(*args, **kwargs)


@pytest.mark.django_db(transaction=True)
async def test_an_api_append_reaches_the_sessions_channel_group_after_commit(user):
    api = await _call(api_for, user)
    assert (await _call(api.put, "/sessions/live")).status_code == 201
    async with Listener("live") as listener:
        body = {"role": "user", "content": "hello page"}
        first = (await _call(api.post, "/sessions/live/messages", body, headers={"Idempotency-Key": "k1"})).json()
        replay = await _call(api.post, "/sessions/live/messages", body, headers={"Idempotency-Key": "k1"})
        assert replay["Idempotent-Replayed"] == "true"
        await _call(ConversationSession.objects.filter(sid="live").update, expires_at="2000-01-01T00:00:00Z")
        refused = await _call(api.post, "/sessions/live/messages", {"role": "user", "content": "refused"})
        assert refused.status_code == 410
        await _call(api.put, "/sessions/live")  # replaces the expired session: another session, another key

        event = await listener.until(events.MESSAGE)
        assert event == {
            "type": "session.event",
            "session": listener.key.hex,
            "kind": events.MESSAGE,
            "seq": first["seq"],
            "turn": 1,
        }
        # The replay and the refused append pushed nothing: the next event is the old session's end.
        assert (await listener.until(events.DELETED))["session"] == listener.key.hex
        old_key = listener.key
    async with Listener("live") as listener:
        assert listener.key != old_key
        second = (await _call(api.post, "/sessions/live/messages", {"role": "user", "content": "again"})).json()
        event = await listener.until(events.MESSAGE)
        assert (event["seq"], event["turn"]) == (second["seq"], 1)
    await _call(connections.close_all)


@pytest.mark.django_db(transaction=True)
async def test_api_state_and_clear_reach_the_channel_group(user):
    api = await _call(api_for, user)
    await _call(api.put, "/sessions/panel")
    async with Listener("panel") as listener:
        await _call(api.put, "/sessions/panel/state/variables/color", {"value": "blue"})
        assert (await listener.until(events.STATE))["session"] == listener.key.hex
        await _call(api.post, "/sessions/panel/clear")
        assert (await listener.until(events.CLEARED))["session"] == listener.key.hex
    await _call(connections.close_all)
