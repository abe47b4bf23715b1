"""Two processes sharing the database: Stop from another process, and no interruption of a live one."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from sessions_app import engine, replies
from sessions_app.models import Reply

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("replies_env")]

ROOT = Path(__file__).resolve().parent.parent
WORKER = """
import sys
import django
django.setup()
from django.conf import settings
settings.CONVO_BUILTIN_WORD_DELAY = 0.1
settings.CONVO_REPLY_SAVE_INTERVAL = 0
settings.CONVO_REPLY_POLL_SECONDS = 0.05
from sessions_app import replies
reply = replies.start_reply(sys.argv[1])
print(reply.pk, flush=True)
print(replies.wait_reply(reply.pk, 60).status, flush=True)
"""


def worker_env() -> dict[str, str]:
    """The environment of a second Convo process using this test run's database."""
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "convo_site.settings",
        "PYTHONPATH": str(ROOT),
        "CONVO_RESPONDER": "builtin",
        "CONVO_CHANNEL_PREFIX": settings.CONVO_CHANNEL_PREFIX,  # this process's channels, not the test database's
    }
    if db["ENGINE"] == "django.db.backends.postgresql":
        env["DATABASE_URL"] = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    else:
        env.pop("DATABASE_URL", None)
        env["CONVO_SQLITE_PATH"] = str(db["NAME"])
    return env


def test_stop_and_recovery_across_processes(make_session):
    """A reply runs in another process: a starting process's recovery leaves it alone (its heartbeat is
    fresh), and Stop from this process ends it there, with the partial text stored."""
    make_session("s")
    engine.message_append("s", "user", "tell me about yourself")
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, "s"],
        env=worker_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reply_id = int(worker.stdout.readline())
        reply = Reply.objects.get(pk=reply_id)
        assert reply.worker != replies.workers.worker_id()
        for _ in range(300):  # until some text has arrived over there (bounded: 15 s)
            reply.refresh_from_db()
            if len(reply.text.split()) >= 3:
                break
            time.sleep(0.05)
        assert reply.is_running
        assert replies.recover_stale_replies() == 0
        assert replies.running_reply("s").pk == reply_id

        assert replies.stop_reply("s") is True  # only the row's flag can reach the other process
        assert worker.stdout.readline().strip() == "stopped"
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    reply.refresh_from_db()
    assert (reply.status, reply.finish_reason) == ("stopped", "stopped")
    answer = engine.last_turn(engine.session_get("s")).assistant_response
    assert answer.content == reply.text and answer.content.startswith("I am the")
    assert answer.metadata["finish_reason"] == "stopped"
