"""Reply machinery timings, one JSON line per measure (not a test: numbers for the report).

Usage: python bench/replies.py   (SQLite in a temporary file, or DATABASE_URL / REDIS_URL if set)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "convo_site.settings")
if not os.environ.get("DATABASE_URL"):
    os.environ["CONVO_SQLITE_PATH"] = str(Path(tempfile.mkdtemp()) / "bench.sqlite3")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402

from sessions_app import engine, replies  # noqa: E402
from tests.fake_openai import FakeOpenAI, text_chunks, usage_chunk  # noqa: E402


def emit(name: str, samples_ms: list[float], **extra) -> None:
    samples = sorted(samples_ms)
    print(
        json.dumps(
            {
                "bench": name,
                "n": len(samples),
                "median_ms": round(statistics.median(samples), 2),
                "p95_ms": round(samples[max(0, int(len(samples) * 0.95) - 1)], 2),
                "max_ms": round(samples[-1], 2),
                "db": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
                **extra,
            }
        ),
        flush=True,
    )


def timed_reply(session_id: str, text: str) -> float:
    start = time.perf_counter()
    _, reply = replies.append_and_reply(session_id, text)
    reply = replies.wait_reply(reply.pk, 30)
    assert reply.status == "done", (reply.status, reply.error)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    call_command("migrate", verbosity=0)
    run = f"bench-{os.getpid()}"
    settings.CONVO_BUILTIN_WORD_DELAY = 0
    settings.CONVO_REPLY_EVENT_INTERVAL = 0

    engine.session_create(f"{run}-calc")
    emit(
        "builtin_tool_reply",
        [timed_reply(f"{run}-calc", "what is 12*7?") for _ in range(30)],
        note="send → turn complete, one calculator round",
    )

    fake = FakeOpenAI()
    settings.CONVO_RESPONDER, settings.CONVO_LLM_BASE_URL, settings.CONVO_LLM_MODEL = "openai", fake.url, "fake-model"
    engine.session_create(f"{run}-llm")
    samples = []
    for _ in range(30):
        fake.stream(*text_chunks(*(["word "] * 100)), usage_chunk(10, 100))
        samples.append(timed_reply(f"{run}-llm", "talk"))
    emit("openai_100_chunk_reply", samples, note="local fake server, 100 content chunks + usage")

    samples, server_saw = [], []
    engine.session_create(f"{run}-stop")
    for i in range(15):
        fake.holding.clear()
        fake.client_left.clear()
        fake.stream(*text_chunks("partial ", "text")[:-1], mode="hold")
        _, reply = replies.append_and_reply(f"{run}-stop", f"story {i}")
        fake.holding.wait(10)
        time.sleep(0.05)
        start = time.perf_counter()
        replies.stop_reply(f"{run}-stop")
        reply = replies.wait_reply(reply.pk, 30)
        samples.append((time.perf_counter() - start) * 1000)
        assert reply.status == "stopped"
        fake.client_left.wait(10)
        server_saw.append((time.perf_counter() - start) * 1000)
    emit("stop_to_partial_stored", samples, note="Stop → partial stored, provider call held open")
    emit(
        "stop_to_server_sees_disconnect",
        server_saw,
        note="upper bound: the fake notices on its next keep-alive write (50 ms)",
    )

    settings.CONVO_RESPONDER = "builtin"
    settings.CONVO_BUILTIN_WORD_DELAY = 0.01
    sessions = [f"{run}-par-{i}" for i in range(10)]
    for sid in sessions:
        engine.session_create(sid)
    single = timed_reply(sessions[0], "tell me something")
    start = time.perf_counter()
    threads = [threading.Thread(target=timed_reply, args=(sid, "tell me something")) for sid in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    total = (time.perf_counter() - start) * 1000
    emit(
        "ten_sessions_at_once",
        [total],
        single_reply_ms=round(single, 1),
        note="10 streamed replies (10 ms/word) started together",
    )
    fake.close()


if __name__ == "__main__":
    main()
