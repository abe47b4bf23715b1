"""Several writers on one session (PostgreSQL): sequence and turn numbers stay unique and gap-free."""

import threading

import pytest
from django.db import connection

from sessions_app import engine
from sessions_app.models import Message

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_four_writers_append_400_messages_without_gaps_or_duplicates():
    engine.session_create("busy", config=engine.SessionConfig(max_messages=1000))
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(100):
                engine.message_append("busy", "user" if i % 2 == 0 else "assistant", f"w{n} m{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    seqs = list(Message.objects.filter(session__sid="busy").order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 401))
    numbers = [t.number for t in engine.turns(engine.session_get("busy"))]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) == Message.objects.filter(session__sid="busy", role="user").count() == 200
    session = engine.session_get("busy")
    assert session.message_count == 400
    assert session.total_tokens == sum(Message.objects.filter(session__sid="busy").values_list("tokens", flat=True))
