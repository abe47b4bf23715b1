"""The stored form of the specification's ConversationSession, ChatMessage and Turn.

The models are thin: every rule that changes them (turn bookkeeping, limits, expiry, the context
window) lives in ``sessions_app.engine``, which views, the API, consumers, the admin and the purge
command all call.

How the spec's in-memory ``messages`` list maps onto rows: nothing is deleted when a message leaves
the list because of ``max_messages`` (its turn still shows it, as in the spec where a turn keeps its
own copy). The list is instead described by two numbers on the session: ``low_seq`` (every message
with ``seq >= low_seq`` is in the list) and ``head_seq`` (the pinned system message at the front of
the list, which eviction skips, as the spec's ``enforce_limits`` does). Eviction only ever removes
the oldest message after the head, so these two numbers describe the list exactly.
"""

from __future__ import annotations

import datetime as dt
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Role(models.TextChoices):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class ConversationSession(models.Model):
    """A conversation. Its id (``sid``) is the caller's name for it, unique per owner: two users may
    each have ``support-42``, and sessions without an owner share a namespace of their own. Everything
    inside Convo (messages, turns, replies, idempotency records, the channel-layer group) refers to
    the ``key`` instead, which is never reused: a deleted id created again is another session."""

    key = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sid = models.CharField("id", max_length=128, help_text="The caller's id for the session, unique per owner.")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="conversation_sessions",
        help_text="The spec's user_id: who the session belongs to (none for service sessions).",
    )
    system_prompt = models.TextField(null=True, blank=True)
    variables = models.JSONField(default=dict, blank=True, help_text="State: string variables.")
    data = models.JSONField(default=dict, blank=True, help_text="State: typed data (any JSON value per key).")
    metadata = models.JSONField(default=dict, blank=True)

    # Config (the spec's SessionConfig).
    max_messages = models.PositiveIntegerField()
    max_tokens = models.PositiveIntegerField()
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: never expires.")
    persist_system_prompt = models.BooleanField()

    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    # Derived from updated_at and the timeout on every write (engine.values.touch); stored and indexed so that
    # finding expired sessions is one index range scan. NULL = never expires.
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)

    # Bookkeeping of the message list and turns, changed only under the session's row lock.
    last_seq = models.PositiveBigIntegerField(default=0, help_text="Sequence number of the newest message.")
    low_seq = models.PositiveBigIntegerField(default=1, help_text="Messages from this sequence on are in the list.")
    head_seq = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Sequence number of the pinned system message at the front of the list."
    )
    turn_count = models.PositiveIntegerField(default=0, help_text="The spec's current_turn().")
    total_tokens = models.PositiveBigIntegerField(default=0, help_text="Sum of the estimates of the listed messages.")

    # The conversation a person keeps (the library): none of these change what the model sees.
    title = models.CharField(max_length=200, blank=True, default="", help_text="Shown in the sidebar and header.")
    pinned = models.BooleanField(default=False)
    archived = models.BooleanField(default=False)
    # Lineage: the conversation this one was branched, edited or continued from, and the seq it starts after.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children", editable=False
    )
    parent_seq = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="The parent's sequence number this conversation was taken at."
    )
    lineage = models.CharField(
        max_length=16,
        blank=True,
        default="",
        choices=[("branch", "branch"), ("edit", "edit"), ("continue", "continue")],
        help_text="How this conversation came from its parent.",
    )

    class Meta:
        # No index holds updated_at: every write changes it, and an indexed column would make each
        # update of the session row a non-HOT one (new entries in every index, bloat on busy sessions).
        # A user's sessions are few enough to sort by activity after the owner index finds them.
        verbose_name = "conversation session"
        constraints = [
            # Also the index of lookups by id alone (operators); the owner's own index serves their lists.
            models.UniqueConstraint(fields=["sid", "owner"], name="session_id_owner_unique"),
            # NULLs are distinct in the one above: the sessions without an owner need their own.
            models.UniqueConstraint(
                fields=["sid"], condition=Q(owner__isnull=True), name="session_id_ownerless_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.sid} ({self.owner_label})"

    @property
    def id(self) -> str:
        """The caller's id (``sid``), as the URLs, the API and the templates name the session."""
        return self.sid

    @property
    def owner_label(self) -> str:
        """Who owns the session, for operators' screens: the owner's username, or "no owner"."""
        if self.owner_id is None:
            return "no owner"
        owner = self.owner
        return owner.get_username() if owner is not None else f"user {self.owner_id}"

    @property
    def message_count(self) -> int:
        """How many messages are in the session's list (what the spec's ``messages.len()`` returns)."""
        suffix = max(0, self.last_seq - self.low_seq + 1)
        return suffix + (1 if self.head_seq is not None else 0)

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        if self.expires_at is None:
            return False
        return (now or _now()) >= self.expires_at

    def in_list_q(self) -> Q:
        """The filter selecting this session's listed messages."""
        q = Q(seq__gte=self.low_seq)
        if self.head_seq is not None:
            q |= Q(seq=self.head_seq)
        return q


class Message(models.Model):
    # The (session, seq) unique constraint's index serves every lookup by session, so no extra one.
    session = models.ForeignKey(ConversationSession, on_delete=models.CASCADE, related_name="messages", db_index=False)
    seq = models.PositiveBigIntegerField(help_text="Position in the session, in append order, from 1.")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField()
    name = models.CharField(max_length=256, null=True, blank=True)
    tool_call_id = models.CharField(max_length=256, null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()
    tokens = models.PositiveIntegerField(help_text="The spec's estimated_tokens(), computed once when written.")
    turn_number = models.PositiveIntegerField(
        null=True, blank=True, help_text="The turn the message opened, attached to or completed; empty for none."
    )

    class Meta:
        ordering = ["session", "seq"]
        constraints = [models.UniqueConstraint(fields=["session", "seq"], name="message_session_seq_unique")]
        indexes = [
            # A turn's tool calls (only tool messages pay for this index).
            models.Index(fields=["session", "turn_number"], name="message_tool_turn", condition=Q(role="tool")),
            # A turn's user message, where its messages start (turns are derived from the messages; only
            # user messages pay for this index).
            models.Index(fields=["session", "turn_number"], name="message_user_turn", condition=Q(role="user")),
        ]

    def __str__(self) -> str:
        return f"{self.session}#{self.seq} {self.role}"


class Turn(models.Model):
    """A turn's metadata (e.g. the error of a failed reply), the only part of a turn not derived.

    A turn itself is read from its messages (``engine.turns``): its user message is the user message
    with its number, its tool calls the tool messages with it, its response the newest assistant
    message with it, its times those messages' times. A row exists only once a turn gets metadata,
    so an append writes no turn row.
    """

    session = models.ForeignKey(ConversationSession, on_delete=models.CASCADE, related_name="turns", db_index=False)
    number = models.PositiveIntegerField()
    metadata = models.JSONField(default=dict, blank=True, help_text="E.g. the error of a failed reply.")

    class Meta:
        ordering = ["session", "number"]
        constraints = [models.UniqueConstraint(fields=["session", "number"], name="turn_session_number_unique")]
        verbose_name = "turn metadata"
        verbose_name_plural = "turn metadata"

    def __str__(self) -> str:
        return f"{self.session} turn {self.number}"


class TurnEntry(Message):
    """A turn as the admin lists it: the user message that opened it (turns are read from messages)."""

    class Meta:
        proxy = True
        verbose_name = "turn"
        verbose_name_plural = "turns"


def _now() -> dt.datetime:
    from django.utils import timezone

    return timezone.now()


class ApiKey(models.Model):
    """A personal API key for the JSON API. Only a SHA-256 hash of the secret is stored; the secret
    is shown once, when the key is created (sessions_app.keys.create_api_key)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The first characters of the key, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        indexes = [models.Index(fields=["user", "-created_at"], name="apikey_user_recent")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class ApiIdempotencyKey(models.Model):
    """The first result of an append sent with an Idempotency-Key header. The unique constraint is
    what makes concurrent retries of one request add exactly one message."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    # The session the request was for (its key: the caller's id may name another session later).
    session_key = models.UUIDField(null=True, blank=True)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the session id and the request body.")
    response = models.JSONField(default=dict)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "API idempotency key"
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="api_idempotency_user_key_unique")]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.key}"


class Reply(models.Model):
    """One run of the assistant answering a turn (issue 5); the rules live in ``sessions_app.replies``.

    While a reply runs, its row is the session's one running reply: a partial unique constraint makes
    a second one impossible whatever the number of processes. ``worker`` and ``heartbeat_at`` say which
    process runs it and that it is still alive, so a reply whose process died is found and marked
    interrupted instead of staying "running" forever. Message positions are kept as sequence numbers,
    not foreign keys, because clearing a session deletes its messages set-wise.
    """

    class Status(models.TextChoices):
        RUNNING = "running"
        DONE = "done"
        STOPPED = "stopped"
        ERROR = "error"
        INTERRUPTED = "interrupted"

    session = models.ForeignKey(ConversationSession, on_delete=models.CASCADE, related_name="replies", db_index=False)
    turn_number = models.PositiveIntegerField()
    user_seq = models.PositiveBigIntegerField(help_text="Sequence number of the user message that opened the turn.")
    base_seq = models.PositiveBigIntegerField(
        help_text="The session's newest sequence number when the reply started: the turn's earlier responses "
        "are at or below it and are left out of the context."
    )
    regenerate = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    responder = models.CharField(max_length=32)
    model = models.CharField(max_length=200, blank=True)
    text = models.TextField(blank=True, default="", help_text="The text so far (saved every second while running).")
    finish_reason = models.CharField(max_length=32, blank=True)
    error = models.TextField(blank=True)
    tool_rounds = models.PositiveIntegerField(default=0)
    message_seq = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Sequence number of the stored assistant message."
    )
    stop_requested = models.BooleanField(default=False)
    # What the model saw (the reply inspector): the sequence numbers sent on the first round, the budget,
    # the provider's reported usage and timings.
    sent_seqs = models.JSONField(null=True, blank=True, help_text="Sequence numbers of the messages sent.")
    usage = models.JSONField(default=dict, blank=True, help_text="Budget, estimate and the provider's usage.")
    first_token_at = models.DateTimeField(null=True, blank=True)
    # A reply restarted after its process died points at the interrupted one (whose text is kept).
    resumed_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    worker = models.CharField(max_length=200, help_text="The process running the reply (host:pid:random).")
    heartbeat_at = models.DateTimeField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["session", "started_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["session"], condition=Q(status="running"), name="reply_one_running_per_session"
            )
        ]
        indexes = [
            models.Index(fields=["session", "-started_at"], name="reply_session_recent"),
            models.Index(fields=["heartbeat_at"], condition=Q(status="running"), name="reply_running_heartbeat"),
            # The periodic sweep's look for recently interrupted replies to resume (every few seconds).
            models.Index(fields=["finished_at"], condition=Q(status="interrupted"), name="reply_interrupted_finished"),
        ]
        verbose_name_plural = "replies"

    def __str__(self) -> str:
        return f"{self.session} turn {self.turn_number} reply {self.pk} ({self.status})"

    @property
    def is_running(self) -> bool:
        return self.status == self.Status.RUNNING
