"""Assistant replies: pluggable responders, streaming, tool calls, Stop and retry (issue 5).

Modules: ``service`` (the API below and its errors, the sweep and resume), ``run`` (the reply loop:
the request, tool rounds, endings, the lease that fences them; ``reply_context_window``), ``workers``
(worker ids, liveness, recovery, threads, the watcher, ``shutdown``), ``dbconn`` (reconnecting
long-lived threads after a cut database connection), ``responders`` (``RESPONDERS``, the CONVO_RESPONDER registry; ``base`` with the
request/event types and the ``Responder`` protocol, ``builtin``, ``openai_compat``) and ``tools``.
Imports only go down: service → workers → run → responders, tools.

The service API (all synchronous; call from views, API handlers, or consumers via
``database_sync_to_async``). ``owner`` scopes to a user as everywhere in the engine (a foreign
session raises ``engine.SessionNotFound``); the default ``ANY_OWNER`` is for operators and tests.

``append_and_reply(session_id, content, *, owner=ANY_OWNER, name=None, metadata=None) -> (Message, Reply)``
    Append the user's message and start the reply to it, in one transaction. While a reply runs the
    message is refused and nothing is stored (``ReplyInProgress``). What the chat's Send and the API's
    ``"respond": true`` call. Raises the engine's errors for the append (SessionNotFound,
    SessionExpired, SessionValidationError).

``edit_and_reply(session_id, seq, content, *, owner=ANY_OWNER) -> (ConversationSession, Message, Reply)``
    Edit user message ``seq`` as chat tools do: a branch before it (``engine.session_edit_branch``),
    the edited text appended there and its reply started, in one transaction (a refusal leaves no branch).

``start_reply(session_id, *, owner=ANY_OWNER, regenerate=False) -> Reply``
    Reply to the last turn in a background thread; returns at once with the running ``Reply`` row.
    Without ``regenerate`` the last turn must be open (retry after an error, stop or interruption);
    with it (the Regenerate button) the last turn is answered again: the new response completes the
    turn as the spec's ``complete()`` does, the previous one stays in the message list, and the
    turn's earlier responses (assistant and reply tool messages) are left out of the context sent.
    Raises ``ReplyInProgress`` (→ UI message / HTTP 409), ``NothingToReply`` (no message yet, or the
    last one is answered and regenerate is off; → 409 too), SessionNotFound, SessionExpired,
    ImproperlyConfigured (bad CONVO_RESPONDER / CONVO_LLM_* settings).

``stop_reply(session_id, *, owner=ANY_OWNER) -> bool``
    Stop the running reply (from any process): cancels the provider call itself; the partial text is
    stored as the assistant message with finish_reason "stopped". False when none was running.

``running_reply(session_or_id) -> Reply | None``
    The running reply (``.text`` = the text so far, ``.turn_number``, ``.pk``), for a page that loads
    mid-reply: render the text and the Stop button, then follow the REPLY events. Marks a dead
    process's reply interrupted first, so this never reports a reply that will not finish.

``latest_reply(session_or_id) -> Reply | None``  the newest reply in any state (``status``, ``error``).
``reply_for_answer(session, seq) -> Reply | None``  the reply that stored assistant message ``seq`` (the inspector).
``wait_reply(reply_id, timeout=30.0) -> Reply``  wait until it is no longer running (tests, scripts, or a
    Stop endpoint that wants to answer with the stored result).
``reply_context_window(session, max_tokens=None, *, reply=None) -> engine.ContextWindow``  what the
    reply (``reply``'s, else the running one's) sends: the context window without the turn's earlier
    responses when regenerating. The context panel and the API's context endpoint show the same.
``responder_label() -> str``  "built-in responder — no language model configured", or
    "<model> on <host>" (never the key or the full URL).

``sweep() -> (marked, resumed)``  mark dead processes' replies interrupted (REPLY error event to the
    pages), then ``resume_interrupted()``: each reply interrupted by a process death or a shutdown is
    restarted once, by this process, as a new reply with ``resumed_from`` pointing at it (its partial
    text stays in its record; a resume is never resumed). Every serving process runs it every
    CONVO_REPLY_SWEEP_SECONDS (``sessions_app.sweeper``); CONVO_REPLY_AUTO_RETRY switches resuming off.
``workers.shutdown(grace_seconds)``  on SIGTERM: replies finishing within the grace finish; the others
    are stopped and marked interrupted (finish reason "interrupted") for another process to resume.

Fencing: a reply thread writes and sends only while it holds its row (``run.Lease``): every progress
write is conditional on the row still running, and one that touches no row (marked interrupted by
another process after a pause, the session deleted) ends the thread without another event. Each
REPLY event carries the reply's id (``reply``), so pages can drop events of a reply that is not the
session's running one. A cut database connection is retried on a new one (bounded by half of
CONVO_REPLY_STALE_SECONDS); a reply that still cannot reach the database ends with that reason.

Errors: ``ReplyError`` (base), ``ReplyInProgress`` (``.session_key``, ``.reply_id``), ``NothingToReply``,
``TooManyReplies`` (the owner has CONVO_MAX_CONCURRENT_REPLIES replies running in any of their
sessions; → UI message / HTTP 409).

Events (``sessions_app.events``, group ``events.group_name(session key)``): kind ``events.REPLY`` with
``state`` = started | delta | done | stopped | error, ``text`` = the whole text so far, ``reply`` (id),
``turn``; ``resumed_from`` (the interrupted reply's id) on the started event of a resume; ``seq`` of the stored message on done/stopped; ``error`` (a message for the chat) on error.
Deltas are sent at most every CONVO_REPLY_EVENT_INTERVAL seconds (default 0.05). The stored
assistant and tool messages arrive as ordinary MESSAGE events (before the final REPLY event).

Stored results: the assistant message's metadata has responder, model, finish_reason (stop, length,
stopped, max_tool_rounds, ...), latency_ms, first_text_ms, tool_rounds, reply, regenerated,
estimated_prompt_tokens (the engine's estimate of the context sent) and, when the provider reports
them, usage_prompt_tokens / usage_completion_tokens / usage_total_tokens. Each tool call is a tool
message of the turn (name, tool_call_id, content = result; metadata arguments, status ok|error,
tool_round, reply). A failed reply leaves the turn open with ``reply_error`` / ``reply_error_at`` in
the turn's metadata (cleared when a later reply succeeds) and the Reply row's ``error``.

Settings: CONVO_RESPONDER (a key of ``responders.RESPONDERS``: builtin | openai), CONVO_LLM_BASE_URL,
CONVO_LLM_API_KEY, CONVO_LLM_MODEL, CONVO_LLM_TIMEOUT, CONVO_REPLY_MAX_TOOL_ROUNDS,
CONVO_BUILTIN_WORD_DELAY, CONVO_REPLY_HEARTBEAT_SECONDS, CONVO_REPLY_STALE_SECONDS,
CONVO_REPLY_SWEEP_SECONDS, CONVO_REPLY_AUTO_RETRY; internal knobs:
CONVO_REPLY_EVENT_INTERVAL 0.05, CONVO_REPLY_SAVE_INTERVAL 1.0, CONVO_REPLY_POLL_SECONDS 0.2.

Tools: ``sessions_app.replies.tools`` (``register``/``@tool``): calculator, get_state_variable,
set_state_variable, current_time.
"""

from sessions_app.engine import ANY_OWNER

from .responders import BUILTIN_LABEL, ProviderError, responder_label
from .run import reply_context_window
from .service import (
    NothingToReply,
    ReplyError,
    ReplyInProgress,
    TooManyReplies,
    append_and_reply,
    edit_and_reply,
    latest_reply,
    reply_for_answer,
    resume_interrupted,
    running_reply,
    start_reply,
    stop_reply,
    sweep,
    wait_reply,
)
from .workers import recover_stale_replies, shutdown

__all__ = [
    "ANY_OWNER",
    "BUILTIN_LABEL",
    "NothingToReply",
    "ProviderError",
    "ReplyError",
    "ReplyInProgress",
    "TooManyReplies",
    "append_and_reply",
    "edit_and_reply",
    "latest_reply",
    "reply_for_answer",
    "recover_stale_replies",
    "reply_context_window",
    "responder_label",
    "resume_interrupted",
    "running_reply",
    "shutdown",
    "start_reply",
    "stop_reply",
    "sweep",
    "wait_reply",
]
