"""Regenerate sends the context without the turn's earlier responses, and reports what it sends.

The earlier response is left out before the budget is counted, so it crowds nothing out; and while
the regenerated reply runs, ``replies.reply_context_window`` (behind the context panel and the API's
context endpoint) lists exactly the messages the responder received.
"""

import threading

import pytest

from sessions_app import engine, replies
from sessions_app.replies import responders
from sessions_app.replies.responders import Finish, TextDelta, wire_messages

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("replies_env")]


class RecordingResponder:
    """Records each request, then waits for ``release`` before answering (so a test can look while it runs)."""

    name = "recording"
    model = "recorder"
    requests: list = []
    asked = threading.Event()
    release = threading.Event()

    @classmethod
    def from_settings(cls):
        return cls()

    @classmethod
    def label(cls):
        return "recording responder"

    def stream(self, request, handle):
        self.requests.append(request)
        self.asked.set()
        while not self.release.wait(0.01) and not handle.is_cancelled:
            pass
        yield TextDelta("A new answer.")
        yield Finish("stop")


@pytest.fixture
def recorder(replies_env, monkeypatch):
    """A responder registered the way every responder is: one entry in RESPONDERS."""
    recorder = type("Recorder", (RecordingResponder,), {"requests": [], "asked": threading.Event()})
    recorder.release = threading.Event()
    monkeypatch.setitem(responders.RESPONDERS, "recording", recorder)
    replies_env.CONVO_RESPONDER = "recording"
    yield recorder
    recorder.release.set()


def test_regenerate_leaves_the_earlier_response_out_before_counting_the_budget(make_session, recorder):
    """A long earlier answer would crowd the older turn out of the budget; regenerating leaves it out
    first, so the older turn is sent, and the context window reported meanwhile is the one sent."""
    make_session("s", system_prompt="You are terse.", max_tokens=60)
    older = [
        engine.message_append("s", "user", "First question, about apples?"),
        engine.message_append("s", "assistant", "Apples are red."),
    ]
    question = engine.message_append("s", "user", "Second question, about pears?")
    long_answer = engine.message_append("s", "assistant", "Pears are green and sweet. " * 6)
    session = engine.session_get("s")
    system = engine.messages_all(session)[0]
    # The premise: counted with the earlier answer, the budget has no room for the older turn.
    crowded = [m.seq for m in engine.context_window(session).messages]
    assert long_answer.seq in crowded and older[0].seq not in crowded

    reply = replies.start_reply("s", regenerate=True)
    assert recorder.asked.wait(10)
    [request] = recorder.requests
    expected = [system, *older, question]
    assert request.messages == wire_messages(expected)
    assert all(m["content"] != long_answer.content for m in request.messages)

    window = replies.reply_context_window(engine.session_get("s"))  # what the panel and the API show
    assert [m.seq for m in window.messages] == [m.seq for m in expected]
    assert window.total_tokens == request.context.tokens

    recorder.release.set()
    done = replies.wait_reply(reply.pk, timeout=15)
    assert done.status == "done" and done.regenerate
    answer = engine.last_turn(engine.session_get("s")).assistant_response
    assert answer.content == "A new answer." and answer.metadata["estimated_prompt_tokens"] == str(window.total_tokens)
