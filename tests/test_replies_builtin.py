"""The built-in responder end to end, and the reply service's rules (one at a time, Stop, regenerate)."""

import os
import threading

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from sessions_app import engine, replies
from sessions_app.api.schemas import reply_out
from sessions_app.models import Reply, Role
from sessions_app.replies import workers

from .replies_support import drain_replies, reply_to

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("replies_env")]


def test_arithmetic_calls_the_calculator_and_completes_the_turn(make_session):
    """'what is 12*7?' becomes a calculator tool message in the turn, then the answer completes it."""
    make_session("s", system_prompt="Be brief.")
    reply = reply_to("s", "what is 12*7?")
    assert (reply.status, reply.finish_reason, reply.tool_rounds) == ("done", "stop", 1)
    session = engine.session_get("s")
    turn = engine.last_turn(session)
    assert turn.is_complete
    [tool] = turn.tool_calls
    assert (tool.role, tool.name, tool.content, tool.turn_number) == (Role.TOOL, "calculator", "84", 1)
    assert tool.tool_call_id.startswith("call_")
    assert tool.metadata["arguments"] == '{"expression": "12*7"}'
    answer = turn.assistant_response
    assert "84" in answer.content
    assert answer.content == reply.text
    assert answer.metadata["responder"] == "builtin"
    assert answer.metadata["finish_reason"] == "stop"
    assert answer.metadata["latency_ms"].isdigit()
    assert reply.message_seq == answer.seq
    assert [m.role for m in engine.messages_all(session)] == ["system", "user", "tool", "assistant"]
    summary = reply_out(reply, "s")
    assert {k: summary[k] for k in ("status", "turn", "text", "finish_reason", "error", "message_seq")} == {
        "status": "done",
        "turn": 1,
        "text": "12*7 = 84.",
        "finish_reason": "stop",
        "error": None,
        "message_seq": 4,
    }
    assert replies.latest_reply("s").pk == reply.pk


def test_remember_and_recall_change_the_state(make_session):
    """'remember that my X is Y' sets a state variable through the tool; 'what is my X?' reads it back."""
    make_session("s")
    reply_to("s", "Remember that my favourite colour is Blue.")
    session = engine.session_get("s")
    assert session.variables == {"favourite colour": "Blue"}
    assert engine.last_turn(session).tool_calls[0].name == "set_state_variable"

    reply = reply_to("s", "What is my favourite colour?")
    assert reply.text == "Your favourite colour is Blue."
    assert engine.last_turn(engine.session_get("s")).tool_calls[0].name == "get_state_variable"

    reply = reply_to("s", "what is my name?")
    assert "do not know your name" in reply.text


def test_other_messages_get_a_description_of_the_context(make_session):
    """Anything else: the reply states how many messages and tokens it received, and the turn number."""
    make_session("s", system_prompt="You are helpful.")
    engine.message_append("s", "user", "an earlier question")
    engine.message_append("s", "assistant", "an earlier answer")
    engine.message_append("s", "user", "Tell me a story")
    session = engine.session_get("s")
    window = engine.context_window(session, session.max_tokens)
    reply = replies.wait_reply(replies.start_reply("s").pk)
    assert f"For turn 2 I received {len(window.messages)} messages" in reply.text
    assert f"about {window.total_tokens} tokens" in reply.text
    assert replies.BUILTIN_LABEL in reply.text


def test_the_context_sent_is_the_window(make_session):
    """With a small max_tokens the oldest messages are left out, exactly as the engine's window cuts."""
    make_session("s", max_tokens=40)
    for i in range(6):
        engine.message_append("s", "user", f"question number {i} " + "x" * 40)
        engine.message_append("s", "assistant", f"answer {i}")
    engine.message_append("s", "user", "hello")
    window = engine.context_window(engine.session_get("s"))
    reply = replies.wait_reply(replies.start_reply("s").pk)
    assert f"I received {len(window.messages)} message" in reply.text
    assert len(window.messages) < 13


def test_label():
    assert replies.responder_label() == "built-in responder — no language model configured"


def test_one_reply_per_session(make_session, replies_env):
    """A second send or start while a reply runs is refused, stores nothing, and names the problem."""
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.05
    make_session("s")
    _, running = replies.append_and_reply("s", "tell me something long")
    with pytest.raises(replies.ReplyInProgress) as info:
        replies.append_and_reply("s", "another message")
    assert "still replying" in str(info.value)
    assert info.value.reply_id == running.pk
    with pytest.raises(replies.ReplyInProgress):
        replies.start_reply("s", regenerate=True)
    session = engine.session_get("s")
    assert [m.content for m in engine.messages_all(session)] == ["tell me something long"]
    assert replies.running_reply(session).pk == running.pk
    assert replies.stop_reply("s") is True
    replies.wait_reply(running.pk)
    assert replies.running_reply("s") is None
    # Once it ended, the next message is welcome.
    assert reply_to("s", "what is 2+2?").text == "2+2 = 4."


def test_the_database_refuses_two_running_replies(make_session):
    """The guarantee holds below the service too: a partial unique constraint on running replies."""
    session = make_session("s")
    engine.message_append("s", "user", "hi")
    now = timezone.now()
    fields = {
        "session": session,
        "turn_number": 1,
        "user_seq": 1,
        "base_seq": 1,
        "responder": "builtin",
        "worker": "w",
        "heartbeat_at": now,
        "started_at": now,
    }
    Reply.objects.create(**fields)
    with pytest.raises(IntegrityError), transaction.atomic():
        Reply.objects.create(**fields)
    Reply.objects.create(**{**fields, "status": Reply.Status.DONE})  # finished ones do not count


def test_concurrent_starts_make_exactly_one_reply(make_session, replies_env):
    """Several threads starting a reply at once: one wins, the others get ReplyInProgress."""
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.05
    make_session("s")
    engine.message_append("s", "user", "tell me something")
    outcomes = []
    barrier = threading.Barrier(4)

    def start():
        barrier.wait()
        try:
            outcomes.append(replies.start_reply("s").pk)
        except replies.ReplyInProgress:
            outcomes.append("busy")
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert outcomes.count("busy") == 3
    assert Reply.objects.filter(session__sid="s").count() == 1


def test_nothing_to_reply(make_session):
    make_session("s")
    with pytest.raises(replies.NothingToReply, match="no message"):
        replies.start_reply("s")
    reply_to("s", "hello")
    with pytest.raises(replies.NothingToReply, match="regenerate"):
        replies.start_reply("s")


def test_owner_scoping(make_session, user, other_user):
    make_session("s", owner=user)
    with pytest.raises(engine.SessionNotFound):
        replies.append_and_reply("s", "hi", owner=other_user)
    with pytest.raises(engine.SessionNotFound):
        replies.stop_reply("s", owner=other_user)
    assert engine.messages_all(engine.session_get("s")) == []
    assert reply_to("s", "what is 1+1?", owner=user).status == "done"


def test_stop_stores_the_partial_text(make_session, replies_env):
    """Stop ends the stream between words; the text so far is stored with finish reason 'stopped'."""
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.05
    replies_env.CONVO_REPLY_SAVE_INTERVAL = 0
    make_session("s")
    _, reply = replies.append_and_reply("s", "tell me about yourself")
    for _ in range(400):  # until some text has arrived (bounded: 20 s)
        reply.refresh_from_db()
        if len(reply.text.split()) >= 3:
            break
        threading.Event().wait(0.05)
    assert replies.stop_reply("s") is True
    reply = replies.wait_reply(reply.pk)
    assert (reply.status, reply.finish_reason) == ("stopped", "stopped")
    turn = engine.last_turn(engine.session_get("s"))
    answer = turn.assistant_response
    assert answer.content == reply.text
    assert answer.metadata["finish_reason"] == "stopped"
    full = replies.BUILTIN_LABEL
    assert len(answer.content) < len(f"I am the {full}, so I do not really understand you. For turn 1 I received")
    assert answer.content.startswith("I am the")
    assert replies.stop_reply("s") is False  # nothing running any more


def test_stop_before_any_text_stores_nothing(make_session, replies_env):
    replies_env.CONVO_BUILTIN_WORD_DELAY = 5
    make_session("s")
    _, reply = replies.append_and_reply("s", "hello")
    replies.stop_reply("s")
    reply = replies.wait_reply(reply.pk)
    assert reply.status == "stopped" and reply.message_seq is None
    assert not engine.last_turn(engine.session_get("s")).is_complete  # open: it can be retried
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0
    assert replies.wait_reply(replies.start_reply("s").pk).status == "done"


def test_stop_from_another_process_uses_the_row(make_session, replies_env):
    """A Stop that only sets the row's flag (as another process does) is seen by the running process."""
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.05
    make_session("s")
    _, reply = replies.append_and_reply("s", "tell me about yourself")
    Reply.objects.filter(pk=reply.pk).update(stop_requested=True)  # no local cancel
    reply = replies.wait_reply(reply.pk)
    assert reply.status == "stopped"


def test_regenerate_keeps_the_previous_response(make_session):
    """Regenerate answers the last turn again; the earlier response stays listed, the new one completes
    the turn, and the earlier one was not part of the context sent."""
    make_session("s")
    first = reply_to("s", "hello")
    second = replies.wait_reply(replies.start_reply("s", regenerate=True).pk)
    assert second.status == "done" and second.regenerate
    session = engine.session_get("s")
    turn = engine.last_turn(session)
    assert turn.assistant_response.seq == second.message_seq != first.message_seq
    assert turn.assistant_response.metadata["regenerated"] == "true"
    assert [m.role for m in engine.messages_all(session)] == ["user", "assistant", "assistant"]
    assert "I received 1 message of context" in second.text  # not the earlier answer
    assert engine.current_turn(session) == 1


def test_regenerate_after_a_tool_call_redoes_the_tool(make_session):
    make_session("s")
    reply_to("s", "what is 6*7?")
    again = replies.wait_reply(replies.start_reply("s", regenerate=True).pk)
    assert again.text == "6*7 = 42."
    turn = engine.last_turn(engine.session_get("s"))
    assert [t.content for t in turn.tool_calls] == ["42", "42"]


def test_two_sessions_reply_at_the_same_time(make_session, replies_env):
    """A reply runs in its own thread: another session's reply starts and ends meanwhile."""
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.02
    make_session("slow")
    make_session("fast")
    _, slow = replies.append_and_reply("slow", "tell me everything")
    fast = reply_to("fast", "what is 3*3?")
    assert fast.status == "done"
    assert replies.wait_reply(slow.pk).status == "done"


def test_interrupted_replies_are_recovered(make_session, replies_env):
    """A running row whose process stopped heartbeating is marked interrupted; a live one is left alone."""
    make_session("dead")
    make_session("alive")
    now = timezone.now()
    stale = now - timezone.timedelta(seconds=replies_env.CONVO_REPLY_STALE_SECONDS + 5)
    rows = {}
    for sid, beat in (("dead", stale), ("alive", now)):
        message = engine.message_append(sid, "user", "hi")
        rows[sid] = Reply.objects.create(
            session=engine.session_get(sid),
            turn_number=1,
            user_seq=message.seq,
            base_seq=message.seq,
            responder="builtin",
            worker="otherhost:123:abcd",
            heartbeat_at=beat,
            started_at=stale,
            text="partial",
        )
    # Asking whether a reply runs recovers lazily; a starting process does the same for all sessions.
    assert replies.running_reply("dead") is None
    assert replies.recover_stale_replies() == 0
    dead = Reply.objects.get(pk=rows["dead"].pk)
    assert (dead.status, dead.finish_reason) == ("interrupted", "interrupted")
    assert "interrupted" in dead.error
    turn = engine.last_turn(engine.session_get("dead"))
    assert not turn.is_complete
    assert "interrupted" in turn.metadata["reply_error"]
    assert replies.running_reply("alive").pk == rows["alive"].pk  # another live process's reply
    # The interrupted turn can be answered again.
    assert replies.wait_reply(replies.start_reply("dead").pk).status == "done"
    assert "reply_error" not in engine.last_turn(engine.session_get("dead")).metadata


def test_a_running_process_keeps_its_reply_alive(make_session, replies_env):
    """The watcher refreshes the heartbeat, so recovery never interrupts this process's own reply."""
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.05
    replies_env.CONVO_REPLY_HEARTBEAT_SECONDS = 0
    make_session("s")
    _, reply = replies.append_and_reply("s", "tell me something")
    started = reply.heartbeat_at
    for _ in range(200):
        reply.refresh_from_db()
        if reply.heartbeat_at > started or not reply.is_running:
            break
        threading.Event().wait(0.02)
    assert reply.heartbeat_at > started
    replies.stop_reply("s")
    assert replies.wait_reply(reply.pk).status == "stopped"


def test_a_new_message_meanwhile_drops_the_reply(make_session, replies_env):
    """If the conversation moves on (a message appended by another client), the reply does not land
    on the new turn: it ends with an error and leaves both turns as they are."""
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.01
    make_session("s")
    _, reply = replies.append_and_reply("s", "tell me something")
    engine.message_append("s", "user", "a message from another client")
    reply = replies.wait_reply(reply.pk)
    assert reply.status == "error" and "changed" in reply.error
    session = engine.session_get("s")
    assert [t.is_complete for t in engine.turns(session)] == [False, False]


def test_session_deleted_mid_reply(make_session, replies_env):
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.05
    make_session("s")
    _, reply = replies.append_and_reply("s", "tell me something")
    engine.session_delete("s")
    drain_replies()
    assert not Reply.objects.filter(session__sid="s").exists()  # deleted with the session
    assert not workers._local


def test_clear_messages_mid_reply(make_session, replies_env):
    replies_env.CONVO_BUILTIN_WORD_DELAY = 0.01
    make_session("s")
    _, reply = replies.append_and_reply("s", "tell me something")
    engine.session_clear_messages("s")
    reply = replies.wait_reply(reply.pk)
    assert reply.status == "error"
    assert engine.messages_all(engine.session_get("s")) == []


def test_admin_lists_replies(admin_client, make_session):
    make_session("s")
    reply = reply_to("s", "what is 12*7?")
    page = admin_client.get("/admin/sessions_app/reply/")
    assert page.status_code == 200
    assert b"builtin" in page.content
    detail = admin_client.get(f"/admin/sessions_app/reply/{reply.pk}/change/")
    assert detail.status_code == 200
    assert b"12*7 = 84." in detail.content


def test_a_dead_process_on_this_host_is_recovered_sooner(make_session, replies_env):
    """On this host a gone pid (or a reboot) proves the process dead: two missed heartbeats suffice.
    A live pid, or another host, still gets the full CONVO_REPLY_STALE_SECONDS."""
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    host, boot = workers._machine()
    worker_ids = {
        "gone": f"{host}:{boot}:{gone.pid}:abcd1234",
        "rebooted": f"{host}:00000000:{os.getpid()}:abcd1234",
        "alive": f"{host}:{boot}:{os.getppid()}:abcd1234",
        "elsewhere": f"otherhost:{boot}:{gone.pid}:abcd1234",
    }
    old = timezone.now() - timezone.timedelta(seconds=replies_env.CONVO_REPLY_HEARTBEAT_SECONDS * 2 + 1)
    for sid, worker in worker_ids.items():
        make_session(sid)
        message = engine.message_append(sid, "user", "hi")
        Reply.objects.create(
            session=engine.session_get(sid),
            turn_number=1,
            user_seq=message.seq,
            base_seq=message.seq,
            responder="builtin",
            worker=worker,
            heartbeat_at=old,
            started_at=old,
        )
    assert replies.recover_stale_replies() == 2
    status = dict(Reply.objects.values_list("session__sid", "status"))
    assert status == {"gone": "interrupted", "rebooted": "interrupted", "alive": "running", "elsewhere": "running"}
    # Stop on a dead reply reports nothing to stop: recovery ended it first.
    assert replies.stop_reply("gone") is False


def test_a_starting_process_recovers_on_its_first_request(make_session, replies_env, client):
    """The first request of a process checks for interrupted replies, in the background."""
    from django.core.signals import request_started

    make_session("s")
    message = engine.message_append("s", "user", "hi")
    old = timezone.now() - timezone.timedelta(seconds=replies_env.CONVO_REPLY_STALE_SECONDS + 1)
    reply = Reply.objects.create(
        session=engine.session_get("s"),
        turn_number=1,
        user_seq=message.seq,
        base_seq=message.seq,
        responder="builtin",
        worker="gone:host:1:x",
        heartbeat_at=old,
        started_at=old,
    )
    request_started.connect(workers.recover_on_startup, dispatch_uid="convo-replies-recover")
    client.get("/admin/login/")
    for thread in threading.enumerate():
        if thread.name == "convo-reply-recovery":
            thread.join(10)
    reply.refresh_from_db()
    assert reply.status == "interrupted"
    # Once per process: the receiver removed itself.
    assert request_started.disconnect(workers.recover_on_startup, dispatch_uid="convo-replies-recover") is False
