"""The session engine: every rule of the specification (conversation_session.rs), on the database.

The one home for the rules: views, the API, websocket consumers, the admin and management commands call
``engine.x`` and decide nothing themselves. Modules, each importing only those above it:

- ``errors``: the SessionError family and ``storage_errors`` (database failures become StorageError).
- ``values``: SessionConfig, ChatMessage, the token estimate, expiry times, and the input checks and
  limits every entry point shares (ids, text, names, metadata, JSON data, state size, websocket frames).
- ``bookkeeping``: an append's sequence and turn numbers, and the message limit (used by every writer).
- ``purge``: deleting expired sessions in batches, and the set-based row delete.
- ``stats``: ``analyze``, planner statistics after migrations, bulk imports and purges.
- ``sessions``: owner scoping (ids are per owner; a session's key names it inside Convo), ``lock_session``,
  create / get / get_or_create / update / delete / list, clear.
- ``pg_append``: PostgreSQL's append in one read and one write statement, applying ``bookkeeping``.
- ``messages``: ``message_append`` (under the row lock, or through ``pg_append``), turn metadata.
- ``context``: the message list and its pages, the context window, turns.
- ``state``: string variables and typed JSON data.
- ``lineage``: branch / edit / continue (a conversation copied into a new one), edit versions, and
  the versions of a regenerated turn's response (which one is shown and sent).
- ``library``: titles, pin and archive (what a person keeps; nothing the model sees), the sidebar's pages.

Writes run in a transaction holding the session's row lock (SELECT ... FOR UPDATE), or, for an append
on PostgreSQL, in one conditional statement; that is what keeps sequence and turn numbers gap-free and
unique when several processes append at once. Each write queues a change notification that is sent
only after the commit (``sessions_app.events``).

Times: functions that depend on the clock take ``now=`` (default: the current time), so callers and
tests can pass it explicitly.
"""

from .context import (
    ContextWindow,
    MessagesAround,
    TurnView,
    context_window,
    current_turn,
    get_context,
    get_turn,
    has_unlisted_history,
    history_count,
    in_list,
    last_turn,
    listed_messages,
    messages_all,
    messages_around,
    messages_by_role,
    messages_page,
    messages_recent,
    messages_with_seqs,
    total_tokens,
    turn_metadata,
    turn_user_messages,
    turn_user_seq,
    turns,
)
from .errors import (
    InputTooLarge,
    SerializationError,
    SessionAlreadyExists,
    SessionAmbiguous,
    SessionError,
    SessionExpired,
    SessionNotFound,
    SessionValidationError,
    StorageError,
    storage_errors,
)
from .library import session_set_library, sidebar_page
from .lineage import (
    CHOICE_KEY,
    LINEAGES,
    EditVersions,
    ResponseVersions,
    edit_versions,
    edit_versions_of,
    lineage_children,
    response_choose,
    response_versions,
    session_branch,
    session_continue,
    session_edit_branch,
    unchosen_responses,
)
from .messages import message_append, message_append_obj, turn_set_metadata
from .purge import PurgeResult, count_expired, expired_sessions, purge_expired, purge_sessions, sessions_deleted
from .sessions import (
    ANY_OWNER,
    AnyOwner,
    Owner,
    SessionRef,
    find_session,
    lock_session,
    session_clear_messages,
    session_count_for_user,
    session_create,
    session_delete,
    session_get,
    session_get_live,
    session_get_or_create,
    session_list,
    session_list_for_user,
    session_update,
    sessions_page_for_user,
)
from .state import (
    state_clear,
    state_get,
    state_get_data,
    state_has_data,
    state_remove,
    state_remove_data,
    state_set,
    state_set_data,
)
from .stats import analyze
from .values import (
    MAX_INT,
    SESSION_ID_RE,
    TITLE_MAX_CHARS,
    ChatMessage,
    SessionConfig,
    age,
    check_content,
    check_metadata,
    check_name,
    check_title,
    estimate_tokens,
    expiry_time,
    is_expired,
    lookup_session_id,
    new_session_id,
    parse_frame,
    parse_json,
    title_from,
    validate_session_id,
)

__all__ = [
    "ANY_OWNER",
    "CHOICE_KEY",
    "LINEAGES",
    "MAX_INT",
    "SESSION_ID_RE",
    "AnyOwner",
    "ChatMessage",
    "ContextWindow",
    "EditVersions",
    "InputTooLarge",
    "MessagesAround",
    "Owner",
    "PurgeResult",
    "ResponseVersions",
    "SerializationError",
    "SessionAlreadyExists",
    "SessionAmbiguous",
    "SessionConfig",
    "SessionError",
    "SessionExpired",
    "SessionNotFound",
    "SessionRef",
    "SessionValidationError",
    "StorageError",
    "TITLE_MAX_CHARS",
    "TurnView",
    "age",
    "check_content",
    "check_metadata",
    "check_name",
    "check_title",
    "context_window",
    "count_expired",
    "current_turn",
    "edit_versions",
    "edit_versions_of",
    "estimate_tokens",
    "expired_sessions",
    "expiry_time",
    "find_session",
    "get_context",
    "get_turn",
    "has_unlisted_history",
    "history_count",
    "in_list",
    "is_expired",
    "last_turn",
    "lineage_children",
    "listed_messages",
    "lock_session",
    "lookup_session_id",
    "message_append",
    "message_append_obj",
    "messages_all",
    "messages_around",
    "messages_by_role",
    "messages_page",
    "messages_recent",
    "messages_with_seqs",
    "new_session_id",
    "parse_frame",
    "parse_json",
    "purge_expired",
    "analyze",
    "purge_sessions",
    "response_choose",
    "response_versions",
    "session_branch",
    "session_clear_messages",
    "session_continue",
    "session_count_for_user",
    "session_create",
    "session_delete",
    "session_edit_branch",
    "session_get",
    "session_get_live",
    "session_get_or_create",
    "session_list",
    "session_list_for_user",
    "session_set_library",
    "session_update",
    "sessions_deleted",
    "sessions_page_for_user",
    "sidebar_page",
    "state_clear",
    "state_get",
    "state_get_data",
    "state_has_data",
    "state_remove",
    "state_remove_data",
    "state_set",
    "state_set_data",
    "storage_errors",
    "title_from",
    "total_tokens",
    "turn_metadata",
    "turn_set_metadata",
    "turn_user_messages",
    "turn_user_seq",
    "turns",
    "unchosen_responses",
    "validate_session_id",
]
