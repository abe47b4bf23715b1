"""Branches, edits and continuations (engine.lineage): a conversation copied into a new one, its
bookkeeping replayed by the append rules, and the versions a chat browses (edits, regenerated responses)."""

import dataclasses
import datetime as dt
import random

import pytest

from sessions_app import engine, replies
from sessions_app.models import ConversationSession, Message, Turn

from .conftest import add

pytestmark = pytest.mark.django_db

BOOKKEEPING = ("last_seq", "low_seq", "head_seq", "turn_count", "total_tokens")
COPIED = ("seq", "role", "content", "name", "tool_call_id", "metadata", "created_at", "tokens", "turn_number")


def rows(session, through=None):
    qs = Message.objects.filter(session=session).order_by("seq")
    if through is not None:
        qs = qs.filter(seq__lte=through)
    return list(qs.values_list(*COPIED))


def bookkeeping(session):
    session.refresh_from_db()
    return {f: getattr(session, f) for f in BOOKKEEPING}


@pytest.fixture
def talk(make_session, user):
    """alice's conversation: system prompt, a turn with a tool call, a second turn, state and turn metadata."""
    make_session("talk", owner=user, system_prompt="Be brief.", max_messages=50, max_tokens=500)
    add("talk", "user", "What is 2+2?", name="alice", metadata={"lang": "en"})  # 2
    add("talk", "tool", "4", tool_call_id="call_1", name="calculator")  # 3
    add("talk", "assistant", "It is 4.")  # 4
    add("talk", "user", "Thanks")  # 5
    add("talk", "assistant", "You're welcome.")  # 6
    engine.state_set("talk", "color", "blue", owner=user)
    engine.state_set_data("talk", "prefs", {"a": [1, 2]}, owner=user)
    engine.turn_set_metadata("talk", 1, {"rating": "good"}, owner=user)
    ConversationSession.objects.filter(sid="talk").update(title="Arithmetic")
    return engine.session_get("talk", owner=user)


def test_branch_copies_the_messages_up_to_and_including_at_seq(talk, user):
    branch = engine.session_branch("talk", 4, owner=user)
    assert branch.sid != "talk" and branch.owner_id == user.pk
    assert (branch.parent_id, branch.parent_seq, branch.lineage) == (talk.pk, 4, "branch")
    assert rows(branch) == rows(talk, through=4)
    assert bookkeeping(branch) == {
        "last_seq": 4,
        "low_seq": 2,
        "head_seq": 1,
        "turn_count": 1,
        "total_tokens": sum(r[7] for r in rows(talk, through=4)),
    }
    assert (branch.variables, branch.data, branch.title) == ({"color": "blue"}, {"prefs": {"a": [1, 2]}}, "Arithmetic")
    assert engine.SessionConfig.of(branch) == engine.SessionConfig.of(talk)
    assert branch.system_prompt == "Be brief." and not branch.is_expired()
    assert list(Turn.objects.filter(session=branch).values_list("number", "metadata")) == [(1, {"rating": "good"})]
    # The branch goes on by itself: the next message is seq 5 and opens turn 2 there.
    nxt = add(branch.pk, "user", "And 3+3?")
    assert (nxt.seq, nxt.turn_number) == (5, 2)
    assert [m.seq for m in engine.context_window(engine.session_get(branch.pk)).messages] == [1, 2, 3, 4, 5]
    # The parent is unchanged.
    assert bookkeeping(talk)["last_seq"] == 6


def test_branch_at_a_user_message_leaves_its_turn_open(talk, user):
    branch = engine.session_branch("talk", 5, owner=user)
    turn = engine.last_turn(branch)
    assert (turn.number, turn.user_message.content, turn.is_complete) == (2, "Thanks", False)


@pytest.mark.parametrize("at_seq", [0, -1, 7, 10**6, True, "3", None, 2.0])
def test_branch_at_a_seq_the_conversation_does_not_have_is_refused(talk, user, at_seq):
    before = ConversationSession.objects.count()
    with pytest.raises(engine.SessionValidationError) as err:
        engine.session_branch("talk", at_seq, owner=user)
    assert err.value.field == "at_seq"
    assert ConversationSession.objects.count() == before


def test_branch_at_a_cleared_seq_is_refused(make_session):
    make_session("s", system_prompt="sys")
    add("s", "user", "gone")  # 2
    engine.session_clear_messages("s")
    add("s", "user", "kept")  # 3
    with pytest.raises(engine.SessionValidationError):
        engine.session_branch("s", 2)
    assert rows(engine.session_branch("s", 3))[-1][2] == "kept"


def test_branches_are_the_owners_and_others_cannot_branch(talk, user, other_user):
    with pytest.raises(engine.SessionNotFound):
        engine.session_branch("talk", 4, owner=other_user)
    a = engine.session_branch("talk", 4, owner=user)
    b = engine.session_branch("talk", 4, owner=user)
    assert a.sid != b.sid and {a.owner_id, b.owner_id} == {user.pk}
    assert [c.sid for c in engine.lineage_children(talk)] == [a.sid, b.sid]


def test_an_expired_conversation_continues_with_everything(talk, user):
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    ConversationSession.objects.filter(pk=talk.pk).update(updated_at=past, expires_at=past)
    with pytest.raises(engine.SessionExpired):
        add("talk", "user", "hello?", owner=user)
    new = engine.session_continue("talk", owner=user)
    assert (new.parent_id, new.parent_seq, new.lineage) == (talk.pk, 6, "continue")
    assert not new.is_expired()
    assert rows(new) == rows(talk)
    assert bookkeeping(new) == bookkeeping(talk)
    assert list(Turn.objects.filter(session=new).values_list("number", "metadata")) == [(1, {"rating": "good"})]
    assert add(new.pk, "user", "hello again").seq == 7


def _random_history(session_id, seed):
    """Appends of every role, clears and lowered limits, in a random order."""
    rng = random.Random(seed)
    for _ in range(120):
        op = rng.random()
        if op < 0.02:
            engine.session_clear_messages(session_id)
        elif op < 0.04:
            config = engine.SessionConfig.of(engine.session_get(session_id))
            lower = max(2, config.max_messages - rng.randint(0, 3))
            engine.session_update(session_id, config=dataclasses.replace(config, max_messages=lower))
        else:
            role = rng.choice(["user", "user", "assistant", "tool", "system"])
            add(session_id, role, "x" * rng.randint(0, 40))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("persist", [True, False])
def test_a_continuation_replays_to_the_same_bookkeeping_and_turns(make_session, seed, persist):
    """The copy's list, turns and totals come from replaying its messages as appends (clears where
    sequence numbers jump): for a whole conversation they are the parent's own (limits that only
    went down, as here; a raised limit would not bring evicted messages back in the parent)."""
    make_session("p", system_prompt="sys" if seed % 2 else None, max_messages=8, persist_system_prompt=persist)
    _random_history("p", seed)
    parent = engine.session_get("p")
    new = engine.session_continue("p")
    assert rows(new) == rows(parent)
    assert bookkeeping(new) == bookkeeping(parent)
    assert [m.seq for m in engine.messages_all(new)] == [m.seq for m in engine.messages_all(parent)]
    assert engine.context_window(new).messages == engine.context_window(parent).messages or [
        m.seq for m in engine.context_window(new).messages
    ] == [m.seq for m in engine.context_window(parent).messages]


@pytest.mark.parametrize("seed", range(4))
def test_a_branch_has_what_appending_its_messages_gives(make_session, seed):
    """A branch at seq n has the list a conversation gets from appending the parent's first n messages."""
    make_session("p", system_prompt="sys", max_messages=6)
    make_session("q", system_prompt="sys", max_messages=6)
    rng = random.Random(seed)
    for _ in range(30):
        role, content = rng.choice(["user", "assistant", "tool", "system"]), "y" * rng.randint(0, 30)
        add("p", role, content)
    at = rng.randint(2, 30)
    for message in Message.objects.filter(session__sid="p", seq__gt=1, seq__lte=at).order_by("seq"):
        add("q", message.role, message.content)
    branch = engine.session_branch("p", at)
    assert bookkeeping(branch) == bookkeeping(engine.session_get("q"))
    assert [m[8] for m in rows(branch)] == [m[8] for m in rows(engine.session_get("q"))]


def test_copying_a_long_conversation_goes_in_batches(make_session, django_assert_max_num_queries):
    make_session("long", max_messages=100)
    session = engine.session_get("long")
    Message.objects.bulk_create(
        Message(
            session=session,
            seq=i,
            role="user" if i % 2 else "assistant",
            content=f"m{i}",
            created_at=session.created_at,
            tokens=1,
            turn_number=(i + 1) // 2,
        )
        for i in range(1, 2501)
    )
    ConversationSession.objects.filter(pk=session.pk).update(
        last_seq=2500, low_seq=2401, turn_count=1250, total_tokens=100
    )
    with django_assert_max_num_queries(60):  # not one per message (SQLite inserts ~100 rows a statement)
        new = engine.session_continue("long")
    assert bookkeeping(new) == bookkeeping(engine.session_get("long"))
    assert Message.objects.filter(session=new).count() == 2500


def test_a_copy_numbers_turns_by_the_engine_rules_even_where_the_parent_was_hand_edited(talk, user):
    Message.objects.filter(session=talk, seq=4).update(turn_number=7)  # an operator's edit
    new = engine.session_continue("talk", owner=user)
    assert [m[8] for m in rows(new)] == [None, 1, 1, 1, 2, 2]
    assert [m[:8] for m in rows(new)] == [m[:8] for m in rows(talk)]


def test_deleting_the_parent_keeps_its_branches(talk, user):
    branch = engine.session_branch("talk", 4, owner=user)
    engine.session_delete("talk", owner=user)
    branch.refresh_from_db()
    assert branch.parent_id is None and branch.parent_seq == 4 and branch.lineage == "branch"
    assert Message.objects.filter(session=branch).count() == 4


def test_purging_an_expired_parent_keeps_its_branches(talk, user):
    branch = engine.session_branch("talk", 4, owner=user)
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    ConversationSession.objects.filter(pk=talk.pk).update(updated_at=past, expires_at=past)
    engine.purge_expired()
    branch.refresh_from_db()
    assert branch.parent_id is None and not ConversationSession.objects.filter(pk=talk.pk).exists()


# ---------------------------------------------------------------------------------------------
# Edits


def test_an_edit_branches_before_the_user_message(talk, user):
    edit = engine.session_edit_branch("talk", 5, owner=user)
    assert (edit.parent_seq, edit.lineage, edit.last_seq, edit.turn_count) == (4, "edit", 4, 1)
    message = add(edit.pk, "user", "Thanks a lot")
    assert message.seq == 5
    with pytest.raises(engine.SessionValidationError):
        engine.session_edit_branch("talk", 4, owner=user)  # an assistant message


def test_editing_the_first_message_starts_from_nothing(make_session):
    make_session("s")
    add("s", "user", "hi")
    edit = engine.session_edit_branch("s", 1)
    assert (edit.parent_seq, edit.last_seq, edit.low_seq, edit.turn_count, edit.total_tokens) == (0, 0, 1, 0, 0)
    assert add(edit.pk, "user", "hello").seq == 1


def test_edit_versions_are_the_original_and_every_edit_of_that_message(talk, user):
    assert engine.edit_versions(talk, 5) is None
    first = engine.session_edit_branch("talk", 5, owner=user)
    add(first.pk, "user", "Thanks!")
    second = engine.session_edit_branch("talk", 5, owner=user)
    add(second.pk, "user", "Cheers")
    nested = engine.session_edit_branch(first.pk, 5, owner=user)  # an edit of the edit
    add(nested.pk, "user", "Ta")
    other_point = engine.session_edit_branch("talk", 2, owner=user)
    expected = [talk.pk, first.pk, second.pk, nested.pk]
    for i, session in enumerate([talk, first, second, nested]):
        versions = engine.edit_versions(session, 5)
        assert [s.pk for s in versions.sessions] == expected
        assert (versions.number, versions.count) == (i + 1, 4)
    # Several messages at once, in a few queries, agree with one at a time.
    for session in (talk, first, second, nested, other_point):
        many = engine.edit_versions_of(session, [2, 4, 5])
        for seq in (2, 4, 5):
            one = engine.edit_versions(session, seq)
            assert (many[seq].sessions, many[seq].index) == (one.sessions, one.index) if one else seq not in many
    assert set(engine.edit_versions_of(talk, [2, 3, 4, 5])) == {5, 2}
    assert set(engine.edit_versions_of(first, [2, 5])) == {5} and set(engine.edit_versions_of(other_point, [2, 5])) == {
        2
    }
    assert engine.edit_versions(talk, 2).count == 2


# ---------------------------------------------------------------------------------------------
# Response versions and the chosen one


@pytest.fixture
def regenerated(make_session):
    """Turn 1 answered twice (by replies, with a tool call each), then turn 2."""
    make_session("r", system_prompt="sys", max_tokens=10_000)
    add("r", "user", "what is 6*7?")  # 2
    add("r", "tool", "42", tool_call_id="a", metadata={"reply": "11"})  # 3
    add("r", "assistant", "It is 42.", metadata={"reply": "11"})  # 4
    add("r", "tool", "42", tool_call_id="b", metadata={"reply": "12"})  # 5
    add("r", "assistant", "6*7 = 42.", metadata={"reply": "12"})  # 6
    add("r", "user", "thanks")  # 7
    return engine.session_get("r")


def seqs(window):
    return [m.seq for m in window.messages]


def test_without_a_choice_the_newest_is_shown_and_the_spec_window_sent(regenerated):
    versions = engine.response_versions(regenerated, [1, 2])
    assert list(versions) == [1]
    v = versions[1]
    assert (v.seqs, v.chosen, v.stored, v.number, v.count) == ([4, 6], 6, False, 2, 2)
    assert v.others == {3, 4} and (v.previous, v.next) == (4, None)
    assert engine.unchosen_responses(regenerated) == set()
    window = replies.reply_context_window(regenerated)
    assert seqs(window) == [1, 2, 3, 4, 5, 6, 7] == seqs(engine.context_window(regenerated))


def test_a_chosen_response_is_the_only_one_sent(regenerated):
    engine.response_choose("r", 1, 4)
    session = engine.session_get("r")
    v = engine.response_versions(session, [1])[1]
    assert (v.chosen, v.stored, v.number, v.others) == (4, True, 1, {5, 6})
    assert engine.unchosen_responses(session) == {5, 6}
    assert seqs(replies.reply_context_window(session)) == [1, 2, 3, 4, 7]
    assert seqs(engine.context_window(session)) == [1, 2, 3, 4, 5, 6, 7]  # the spec's get_context is unchanged
    assert engine.get_turn(session, 1).assistant_response.seq == 6  # and so is the spec's turn

    engine.response_choose("r", 1, None)  # "the newest", as a chat's Regenerate stores it
    session = engine.session_get("r")
    assert engine.unchosen_responses(session) == {3, 4}
    assert seqs(replies.reply_context_window(session)) == [1, 2, 5, 6, 7]


@pytest.mark.parametrize("turn, seq", [(1, 2), (1, 3), (1, 7), (2, 4), (1, 99), (1, "4")])
def test_only_a_response_of_the_turn_can_be_chosen(regenerated, turn, seq):
    with pytest.raises(engine.SessionValidationError):
        engine.response_choose("r", turn, seq)
    assert not Turn.objects.filter(session=regenerated).exists()


def test_a_branch_keeps_a_choice_it_has_the_message_of(regenerated):
    engine.response_choose("r", 1, 4)
    keeps = engine.session_branch("r", 6)
    assert Turn.objects.get(session=keeps, number=1).metadata == {engine.CHOICE_KEY: "4"}
    engine.response_choose("r", 1, 6)
    drops = engine.session_branch("r", 4)
    assert not Turn.objects.filter(session=drops).exists()


# ---------------------------------------------------------------------------------------------
# With export and import


@pytest.mark.parametrize("make", ["edit-first", "branch", "continue"])
def test_branches_export_and_import_with_their_lineage(make_session, user, make):
    """An exported branch (an edit of the first message too: parent_seq 0) imports into the account
    that has its parent with its lineage, pointing at that parent."""
    from sessions_app import transfer

    make_session("orig", owner=user)
    add("orig", "user", "hi")
    add("orig", "assistant", "hello")
    if make == "edit-first":
        child = engine.session_edit_branch("orig", 1, owner=user)
        add(child.pk, "user", "hey")
    elif make == "branch":
        child = engine.session_branch("orig", 1, owner=user)
    else:
        child = engine.session_continue("orig", owner=user)
    child = engine.session_get(child.pk)
    raw = "".join(transfer.iter_json(child)).encode()
    [imported] = transfer.import_bytes(raw, owner=user).imported
    copy = imported.session
    assert (copy.lineage, copy.parent_seq, copy.parent_id) == (child.lineage, child.parent_seq, child.parent_id)
    assert rows(copy) == rows(child) and bookkeeping(copy) == bookkeeping(child)


def test_a_branch_is_searchable_like_its_parent(talk, user):
    """The copy's rows go in with one INSERT ... SELECT: the search index (FTS5 triggers on SQLite, the
    generated tsvector on PostgreSQL) has them."""
    from sessions_app.engine.search import search

    branch = engine.session_branch("talk", 4, owner=user)
    found = {(hit.session_id, hit.seq) for hit in search(user, "welcome OR thanks OR 2").hits if hit.kind == "message"}
    assert {("talk", 2), ("talk", 5), ("talk", 6), (branch.sid, 2)} <= found
    assert not {(branch.sid, 5), (branch.sid, 6)} & found
