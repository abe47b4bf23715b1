"""Helpers shared by the reply tests (their fixtures, replies_env and fake_llm, are in conftest.py)."""

from __future__ import annotations

from sessions_app import replies
from sessions_app.replies import workers

API_KEY = "sk-test-" + "Zq7xW" * 8  # what a real key looks like: long, unique


def drain_replies(timeout: float = 10.0) -> None:
    """Stop and join every reply thread of this process, then the watcher (it holds a connection)."""
    for local in list(workers._local.values()):
        local.handle.cancel()
        local.thread.join(timeout)
    watcher = workers._watcher._thread
    if watcher is not None:
        watcher.join(timeout)


def reply_to(session_id: str, content: str, **kwargs):
    """Send a message, let the assistant answer it, and return the finished Reply row."""
    _, reply = replies.append_and_reply(session_id, content, **kwargs)
    return replies.wait_reply(reply.pk, timeout=15)
