"""The admin: operators inspect any session, its messages and turns, and purge or clear them.

Everything here is read-only except the two actions, which go through the engine.
"""

from __future__ import annotations

import contextlib
import json
import uuid

from django.contrib import admin, messages
from django.db.models import Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from . import engine, keys
from .forms import AdminLoginForm
from .models import ApiKey, ConversationSession, Message, Reply, Turn, TurnEntry
from .templatetags.convo_ui import display_json

# The admin's login form, with the username's length checked (see forms.AdminLoginForm).
admin.site.login_form = AdminLoginForm

# How many of the newest messages and turns a session page shows inline (the rest: the linked lists).
ADMIN_INLINE_ROWS = 200


class ExpiredFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "expired"

    def lookups(self, request, model_admin):
        return [("yes", "Expired"), ("no", "Live")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "yes":
            return queryset.filter(expires_at__lte=now)
        if self.value() == "no":
            return queryset.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        return queryset


class SessionIdFilter(admin.SimpleListFilter):
    """Filter messages or turns by session: its key (the session page's links, the sidebar's latest),
    or an id typed in the URL, which matches that id's sessions of every owner."""

    title = "session"
    parameter_name = "session"

    def lookups(self, request, model_admin):
        recent = list(ConversationSession.objects.select_related("owner").order_by("-updated_at")[:15])
        choices = [(session.pk.hex, str(session)) for session in recent]
        if self.value() and self.value() not in {key for key, _ in choices}:
            choices.insert(0, (self.value(), self.value()))
        return choices

    def queryset(self, request, queryset):
        if self.value():
            try:
                return queryset.filter(session_id=uuid.UUID(self.value()))
            except ValueError:
                pass
            try:
                sid = engine.lookup_session_id(self.value())
            except engine.SessionNotFound:
                return queryset.none()  # an id no session can have (PostgreSQL refuses NUL in text)
            return queryset.filter(session__sid=sid)
        return queryset


def _pretty_json(value) -> str:
    # Indented only while small and shallow, as in the chat's state panel (linear in the stored size).
    return format_html("<pre style='margin:0;white-space:pre-wrap'>{}</pre>", display_json(value))


@admin.register(ConversationSession)
class ConversationSessionAdmin(admin.ModelAdmin):
    list_display = [
        "sid",
        "title",
        "owner",
        "pinned",
        "archived",
        "messages_in_list",
        "turn_count",
        "total_tokens",
        "created_at",
        "updated_at",
        "expires_at",
        "expired",
    ]
    list_filter = [ExpiredFilter, "pinned", "archived", "owner", "created_at"]
    search_fields = ["sid", "title", "owner__username", "messages__content"]
    list_select_related = ["owner"]
    date_hierarchy = "created_at"
    ordering = ["-updated_at"]
    actions = ["purge_expired_sessions", "clear_messages"]
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ["sid", "title", "owner", "key", "created_at", "updated_at", "expires_at", "expired"]}),
        ("Library", {"fields": ["pinned", "archived"]}),
        ("Config", {"fields": ["max_messages", "max_tokens", "timeout_seconds", "persist_system_prompt"]}),
        ("Content", {"fields": ["system_prompt", "state_json", "metadata_json"]}),
        ("Lineage", {"fields": ["lineage", "parent", "parent_seq"]}),
        (
            "Messages and turns",
            {"fields": ["messages_in_list", "turn_count", "total_tokens", "message_list", "turn_timeline"]},
        ),
    ]

    def get_readonly_fields(self, request, obj=None):
        # Sessions change only through the engine (the actions here, the UI, the API).
        return [f for fs in self.fieldsets for f in fs[1]["fields"]]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_object(self, request, object_id, from_field=None):
        # An id no session can have is "does not exist" before any query (PostgreSQL refuses NUL).
        try:
            engine.lookup_session_id(object_id)
        except engine.SessionNotFound:
            return None
        return super().get_object(request, object_id, from_field)

    @admin.display(description="messages")
    def messages_in_list(self, obj: ConversationSession) -> int:
        return obj.message_count  # derived from the stored sequence bookkeeping: no query

    @admin.display(boolean=True, description="expired")
    def expired(self, obj: ConversationSession) -> bool:
        return obj.is_expired(timezone.now())

    @admin.display(description="state")
    def state_json(self, obj: ConversationSession) -> str:
        return _pretty_json({"variables": obj.variables, "data": obj.data})

    @admin.display(description="metadata")
    def metadata_json(self, obj: ConversationSession) -> str:
        return _pretty_json(obj.metadata)

    @admin.display(description="message list")
    def message_list(self, obj: ConversationSession) -> str:
        rows = engine.messages_page(obj, limit=ADMIN_INLINE_ROWS, newest=True)
        link = reverse("admin:sessions_app_message_changelist") + f"?session={obj.pk.hex}"
        return render_to_string(
            "admin/sessions_app/message_table.html",
            {"rows": rows, "total": obj.message_count, "link": link},
        )

    @admin.display(description="turn timeline")
    def turn_timeline(self, obj: ConversationSession) -> str:
        rows = engine.turns(obj, newest=ADMIN_INLINE_ROWS)
        link = reverse("admin:sessions_app_turnentry_changelist") + f"?session={obj.pk.hex}"
        return render_to_string(
            "admin/sessions_app/turn_table.html", {"rows": rows, "total": obj.turn_count, "link": link}
        )

    def get_deleted_objects(self, objs, request):
        # Summarise instead of listing every message (a session may hold 100,000), and do not ask
        # for delete permission on messages and turns: they go with their session, via the engine.
        objs = list(objs)
        to_delete = [f"{obj}: {obj.message_count} listed message(s), {obj.turn_count} turn(s)" for obj in objs]
        counts = {"conversation sessions": len(objs)}
        return to_delete, counts, set(), []

    def delete_model(self, request, obj):
        engine.session_delete(obj.pk)

    def delete_queryset(self, request, queryset):
        # The engine deletes messages and turns set-wise; the default collector would load them all.
        # Operators work by key: an id may be several owners'.
        for key in queryset.values_list("pk", flat=True):
            with contextlib.suppress(engine.SessionNotFound):  # deleted meanwhile
                engine.session_delete(key)

    @admin.action(description="Purge the selected expired sessions")
    def purge_expired_sessions(self, request, queryset):
        selected = list(queryset.values_list("pk", flat=True))
        try:
            result = engine.purge_sessions(selected)
        except engine.SessionError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(
            request, f"Purged {result.sessions} expired session(s) with {result.messages} message(s).", messages.SUCCESS
        )
        if len(selected) > result.sessions:
            self.message_user(
                request, f"Kept {len(selected) - result.sessions} session(s) that are not expired.", messages.WARNING
            )

    @admin.action(description="Clear messages of the selected sessions")
    def clear_messages(self, request, queryset):
        cleared = 0
        for key in queryset.values_list("pk", flat=True):
            try:
                engine.session_clear_messages(key, allow_expired=True)
                cleared += 1
            except engine.SessionError as exc:
                self.message_user(request, str(exc), messages.ERROR)
        self.message_user(request, f"Cleared the messages of {cleared} session(s).", messages.SUCCESS)


class _ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # deleting single rows would break a session's bookkeeping


@admin.register(Message)
class MessageAdmin(_ReadOnlyAdmin):
    list_display = [
        "session",
        "seq",
        "role",
        "name",
        "tool_call_id",
        "short_content",
        "tokens",
        "turn_number",
        "created_at",
    ]
    list_filter = ["role", SessionIdFilter]
    list_select_related = ["session__owner"]
    search_fields = ["content", "=session__sid"]
    ordering = ["-created_at", "-id"]
    show_full_result_count = False
    list_per_page = 100

    @admin.display(description="content")
    def short_content(self, obj: Message) -> str:
        return obj.content if len(obj.content) <= 120 else obj.content[:119] + "…"


@admin.register(TurnEntry)
class TurnEntryAdmin(_ReadOnlyAdmin):
    """Turns, derived as the engine derives them: one row per user message, with the turn's tool calls
    and newest response found in its sequence range (up to the next turn's user message)."""

    list_display = [
        "session",
        "turn_number",
        "user_content",
        "tool_call_count",
        "response_content",
        "started_at",
        "completed_at",
        "duration",
        "is_complete",
        "metadata_json",
    ]
    list_filter = [SessionIdFilter]
    search_fields = ["=session__sid"]
    ordering = ["-created_at", "-id"]
    list_select_related = ["session__owner"]
    show_full_result_count = False

    def get_queryset(self, request):
        # Each turn's tool-call count and newest response in the same query (no N+1 on the list page),
        # each an index range scan over the turn's messages.
        from django.db.models import Count, OuterRef, Subquery, Value
        from django.db.models.functions import Coalesce

        next_user = engine.turn_user_messages(OuterRef("session"), OuterRef("turn_number") + 1).values("seq")[:1]
        own = Message.objects.filter(session=OuterRef("session"), turn_number=OuterRef("turn_number"))
        tools = own.filter(role="tool").order_by().values("session").annotate(n=Count("id")).values("n")
        response = own.filter(
            role="assistant", seq__gt=OuterRef("seq"), seq__lt=Coalesce(Subquery(next_user), Value(2**63 - 1))
        ).order_by("-seq")[:1]
        return (
            super()
            .get_queryset(request)
            .filter(role="user")
            .select_related("session__owner")
            .annotate(
                tool_calls_n=Subquery(tools),
                response=Subquery(response.values("content")),
                response_at=Subquery(response.values("created_at")),
                turn_metadata=Subquery(
                    Turn.objects.filter(session=OuterRef("session"), number=OuterRef("turn_number")).values("metadata")[
                        :1
                    ]
                ),
            )
        )

    @admin.display(description="turn", ordering="turn_number")
    def turn_number(self, obj: TurnEntry) -> int:
        return obj.turn_number

    @admin.display(description="user message")
    def user_content(self, obj: TurnEntry) -> str:
        return obj.content[:120]

    @admin.display(description="tool calls")
    def tool_call_count(self, obj: TurnEntry) -> int:
        return obj.tool_calls_n or 0

    @admin.display(description="response")
    def response_content(self, obj: TurnEntry) -> str:
        return obj.response[:120] if obj.response is not None else "—"

    @admin.display(description="started", ordering="created_at")
    def started_at(self, obj: TurnEntry):
        return obj.created_at

    @admin.display(description="completed")
    def completed_at(self, obj: TurnEntry):
        return obj.response_at

    @admin.display(description="duration")
    def duration(self, obj: TurnEntry):
        return obj.response_at - obj.created_at if obj.response_at is not None else None

    @admin.display(boolean=True, description="complete")
    def is_complete(self, obj: TurnEntry) -> bool:
        return obj.response is not None

    @admin.display(description="metadata")
    def metadata_json(self, obj: TurnEntry) -> str:
        return json.dumps(obj.turn_metadata, ensure_ascii=False) if obj.turn_metadata else "—"


class ApiKeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """List and revoke API keys. The hash is never shown; keys are created on the settings page
    or with ``manage.py create_api_key``, where the secret can be shown once."""

    list_display = ["name", "user", "prefix_shown", "created_at", "last_used_at", "revoked_at", "active"]
    list_filter = [ApiKeyStatusFilter, "created_at"]
    search_fields = ["name", "prefix", "user__username"]
    list_select_related = ["user"]
    ordering = ["-created_at"]
    fields = ["name", "user", "prefix_shown", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["user", "prefix_shown", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke_keys"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="key")
    def prefix_shown(self, obj: ApiKey) -> str:
        return f"{obj.prefix}…"

    @admin.display(boolean=True, description="active")
    def active(self, obj: ApiKey) -> bool:
        return obj.is_active

    @admin.action(description="Revoke the selected API keys")
    def revoke_keys(self, request, queryset):
        revoked = sum(keys.revoke_api_key(key) for key in queryset)
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)


@admin.register(Reply)
class ReplyAdmin(_ReadOnlyAdmin):
    """Assistant replies, read-only. Nothing here can show the API key: it is never stored."""

    list_display = [
        "session",
        "turn_number",
        "status",
        "responder",
        "model",
        "finish_reason",
        "tool_rounds",
        "started_at",
        "finished_at",
        "worker",
    ]
    list_filter = ["status", "responder", SessionIdFilter]
    list_select_related = ["session__owner"]
    search_fields = ["=session__sid", "error"]
    ordering = ["-started_at", "-id"]
    show_full_result_count = False
    readonly_fields = [
        "session",
        "turn_number",
        "user_seq",
        "base_seq",
        "regenerate",
        "status",
        "responder",
        "model",
        "text",
        "finish_reason",
        "error",
        "tool_rounds",
        "message_seq",
        "stop_requested",
        "worker",
        "heartbeat_at",
        "started_at",
        "finished_at",
    ]
