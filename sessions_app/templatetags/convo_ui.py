"""Template filters of the chat UI."""

import json

from django import template
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from sessions_app.engine import CHOICE_KEY
from sessions_app.rendering import (
    escape_text,
    fingerprint,
    markdown_deferred,
    markdown_html,
    markdown_live_html,
    panels_version,
    render_budget_spent,
)

register = template.Library()


@register.filter
def markdown(text: str):
    """Render Markdown to sanitized HTML (markdown-it-py, then nh3)."""
    return markdown_html(text or "")


# A data value is indented only while that stays small: up to PRETTY_MAX_CHARS of compact JSON and
# PRETTY_MAX_DEPTH levels. Beyond, it is shown compact, so the state panel grows linearly with the
# stored state (indentation grows with depth × lines: a 35 KB upload once made a 65 MB page).
PRETTY_MAX_CHARS = 2048
PRETTY_MAX_DEPTH = 8


@register.filter
def pretty_json(value):
    """JSON text for a ``<pre>`` or ``<textarea>`` (see display_json), escaped for element text."""
    return mark_safe(escape_text(display_json(value)))  # noqa: S308 - escaped for element text


def display_json(value) -> str:
    """A JSON value as text to show: indented while small and shallow, else compact."""
    compact = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    if len(compact) <= PRETTY_MAX_CHARS and json_depth(value) <= PRETTY_MAX_DEPTH:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    return compact


def json_depth(value) -> int:
    """How deeply lists and objects nest in a JSON value (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in item)
    return deepest


@register.filter
def version(session) -> str:
    """What a page sends back with its hello: the version of the panels it shows."""
    return panels_version(session)


# Bumped when the message partial's markup changes, so no cached fragment of the old markup is served.
MESSAGE_MARKUP_VERSION = 2


@register.filter
def markdown_live(text: str):
    """A reply's text while it streams, as Markdown (unclosed fences and tables included); not cached."""
    return markdown_live_html(text or "")


TOOL_ARGUMENTS_SHORT = 40


def _arguments_value(arguments):
    """A tool call's arguments (JSON text as the model sent it) as a value; the text itself when not JSON."""
    try:
        return json.loads(arguments)
    except (TypeError, ValueError):
        return arguments


@register.filter
def tool_arguments_short(arguments) -> str:
    """A tool call's arguments on one short line: ``12*7`` for ``{"expression": "12*7"}``."""
    value = _arguments_value(arguments)
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= TOOL_ARGUMENTS_SHORT else text[: TOOL_ARGUMENTS_SHORT - 1] + "…"


@register.filter
def tool_arguments_pretty(arguments):
    """A tool call's arguments for its expanded chip: indented JSON (escaped for a ``<pre>``)."""
    value = _arguments_value(arguments)
    return pretty_json(value) if not isinstance(value, str) else value


@register.filter
def message_key(message) -> str:
    """The fragment-cache key of a rendered message: everything its partial shows."""
    return fingerprint(
        MESSAGE_MARKUP_VERSION, sorted((message.metadata or {}).items()),
        message.session_id, message.pk, message.seq, message.role, message.content, message.name,
        message.tool_call_id, message.created_at, message.tokens, message.turn_number,
        markdown_deferred(message.content),
    )  # fmt: skip


FIELD_TEMPLATE = "sessions_app/_field.html"
FRAGMENT_SECONDS = 86400  # how long a cached form or message list is kept (the key changes with what it shows)


@register.simple_tag
def form_fields(form):
    """A form's fields, each as ``_field.html`` shows it. An unbound form renders the same for every
    page that shows it with the same values (the new-chat form on every page, a conversation's settings
    form), and widget rendering is the slowest part of a page: it is rendered once per process and
    values, then read from the fragment cache."""

    def render() -> str:
        return "".join(render_to_string(FIELD_TEMPLATE, {"field": field}) for field in form)

    if form.is_bound:
        return mark_safe(render())  # noqa: S308 - rendered by the template engine (autoescaped)
    key = "convo.form." + fingerprint(
        type(form).__module__, type(form).__qualname__, form.prefix, form.auto_id, sorted(form.initial.items()),
        [(name, field.initial, sorted(field.widget.attrs.items())) for name, field in form.fields.items()],
    )  # fmt: skip
    cache = caches["template_fragments"]
    html = cache.get(key)
    if html is None:
        html = render()
        cache.set(key, html, FRAGMENT_SECONDS)
    return mark_safe(html)  # noqa: S308 - rendered by the template engine (autoescaped)


class _MessageListCacheNode(template.Node):
    def __init__(self, nodelist) -> None:
        self.nodelist = nodelist

    def render(self, context) -> str:
        cache = caches["template_fragments"]
        key = f"convo.list.{message_list_key(context)}"
        html = cache.get(key)
        if html is None:
            html = self.nodelist.render(context)
            if not render_budget_spent():  # else some message may show as plain text for this request only
                cache.set(key, html, FRAGMENT_SECONDS)
        return html


@register.tag
def message_list_cache(parser, token):
    """``{% message_list_cache %}…{% endmessage_list_cache %}``: the message list of the chat page
    (its messages, versions, branch links and divider) rendered once for as long as nothing it shows
    changes (see message_list_key), so opening a conversation again is a cache read, not 50 renders.
    Not stored when the request's Markdown budget ran out while rendering it."""
    nodelist = parser.parse(("endmessage_list_cache",))
    parser.delete_first_token()
    return _MessageListCacheNode(nodelist)


def message_list_key(context) -> str:
    """The fragment-cache key of a rendered message list: each message's own key, the versions and
    branch links around it (not in the message's key: they change without it), the divider, the
    conversation's id and whether it is expired (its actions are disabled then)."""
    session = context["session"]
    messages = context.get("messages") or []
    return fingerprint(
        MESSAGE_MARKUP_VERSION, "list", session.pk, session.id, session.is_expired(),
        bool(context.get("msg_oob")), bool(context.get("has_later")),
        sorted((context.get("divider") or {}).items(), key=lambda item: item[0]),
        [(message_key(m), repr(getattr(m, "response_versions", None)), _edits_key(getattr(m, "edit_versions", None)),
          getattr(m, "version_hidden", None)) for m in messages],
    )  # fmt: skip


def _edits_key(versions) -> tuple | None:
    """What a message's edit versions show: which of them this is, and where the others are."""
    if versions is None:
        return None
    return versions.seq, versions.index, [s.sid for s in versions.sessions]


@register.filter
def turn_key(turn) -> str:
    """The fragment-cache key of a rendered turn (its messages, tool calls, times and metadata)."""
    return fingerprint(
        MESSAGE_MARKUP_VERSION, turn.session_id, turn.pk, turn.number, turn.user_message_id, turn.user_message.content,
        turn.assistant_response_id, turn.assistant_response.content if turn.assistant_response else None,
        turn.started_at, turn.completed_at, sorted(turn.metadata.items()),
        [(c.pk, c.content, c.name, c.tool_call_id) for c in getattr(turn, "tool_calls", [])],
    )  # fmt: skip


@register.simple_tag
def responder_label() -> str:
    """Who answers the conversation: the built-in responder, or "<model> on <host>" (never a key)."""
    from sessions_app.replies import responder_label as label

    try:
        return label()
    except ImproperlyConfigured as exc:
        return f"not configured ({exc})"


REPLY_ERROR_KEYS = ("reply_error", "reply_error_at")
# Keys the timeline does not list: the failed reply's (shown on their own line), the chosen answer's
# (shown by the answer's ‹ n / m › switcher).
UNLISTED_KEYS = (*REPLY_ERROR_KEYS, CHOICE_KEY)


@register.filter
def without_reply_error(metadata) -> dict:
    """A turn's metadata without the keys the timeline shows otherwise (a failed reply, the chosen answer)."""
    return {k: v for k, v in (metadata or {}).items() if k not in UNLISTED_KEYS}
