"""What the chat UI shows, computed once for the page, the htmx responses and the websocket pushes.

Every piece of the page is a named partial of ``sessions_app/chat.html`` (or ``sidebar.html``); the
functions here gather what a partial needs (through the engine) and render it, so a pushed update is
byte for byte what a reload would show.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import threading
import time
import zoneinfo
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import nh3
from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.cache import caches
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.decorators import sync_and_async_middleware
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from pygments import highlight as pygments_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

from . import engine, events, replies
from .forms import EditSessionForm
from .models import ConversationSession, Message, Role

# ---------------------------------------------------------------------------------------------
# Markdown: CommonMark with tables and strikethrough; raw HTML is not passed through by the parser,
# and nh3 cleans the result anyway (allow-listed tags and attributes, http(s)/mailto links only), so
# neither a model nor a user can get a script, an event handler or a javascript: link to run.


def _highlight(code: str, lang: str, _attrs: str) -> str:
    """markdown-it's highlight hook: a fenced block in a language Pygments knows becomes spans with
    Pygments' short class names (coloured by static/convo/pygments.css, light and dark); any other
    block is left to markdown-it (escaped text). Spans only: the CSP allows no inline style."""
    name = (lang or "").strip().lower()
    if not name:
        return ""
    try:
        lexer = get_lexer_by_name(name, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return ""
    return pygments_highlight(code, lexer, _HIGHLIGHT_FORMATTER)


_HIGHLIGHT_FORMATTER = HtmlFormatter(nowrap=True)
# Pygments' short class names (``k``, ``s2``, ...): the only classes a highlighted span may carry.
PYGMENTS_CLASSES = frozenset(name for name in STANDARD_TYPES.values() if name)

_markdown = MarkdownIt(
    "commonmark", {"html": False, "linkify": False, "typographer": False, "highlight": _highlight}
).enable(["table", "strikethrough"])


def code_language(info: str) -> str:
    """The language a fence names (its info string's first word), for the code block's label."""
    words = (info or "").split()
    return words[0][:40] if words else "text"


def _fence(self, tokens, idx, options, env) -> str:
    """A fenced or indented code block with a header holding its language (the page adds a copy button)."""
    token = tokens[idx]
    language = code_language(token.info if token.type == "fence" else "")
    body = (
        self.fence(tokens, idx, options, env) if token.type == "fence" else self.code_block(tokens, idx, options, env)
    )
    return (
        f'<div class="code-block"><div class="code-head"><span class="code-lang">{escape(language)}</span></div>'
        f"{body}</div>"
    )


_markdown.add_render_rule("fence", _fence)
_markdown.add_render_rule("code_block", _fence)


def _image_or_link(self, tokens, idx, options, env) -> str:
    """Markdown never loads a remote resource (issue 9): an image whose source has a scheme or a host
    becomes a link to it, labelled with its alt text; a path on this site stays an image."""
    token = tokens[idx]
    src = token.attrGet("src") or ""
    if not re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|//|\\)", src.strip()):
        return self.image(tokens, idx, options, env)
    label = self.renderInlineAsText(token.children or [], options, env) or src
    return f'<a href="{escape(src)}">{escape("Image: " + label)}</a>'


_markdown.add_render_rule("image", _image_or_link)
_ALLOWED_TAGS = {
    "p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "img",
    "div", "span",
}  # fmt: skip
# Classes come only from the renderer (raw HTML is off): code blocks' frame and Pygments' token spans.
_ALLOWED_CLASSES = {
    "div": {"code-block", "code-head"},
    "span": {"code-lang", *PYGMENTS_CLASSES},
}
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "ol": {"start"},
    "th": {"style"},
    "td": {"style"},
}


# The cost of Markdown is bounded three ways (issue 9): a message whose tables would have more
# than MAX_TABLE_CELLS cells (markdown-it's costly case: ~0.1 ms a cell, and a 32,000-character
# table took 3 s and gave 690 KB) or whose HTML would exceed CONVO_MARKDOWN_MAX_HTML_BYTES is shown
# as plain preformatted text; each text is rendered once per process (a cache bounded in bytes);
# and a request that has spent CONVO_MARKDOWN_BUDGET_MS rendering shows the rest as plain text.
MAX_TABLE_CELLS = 2000
CACHE_BYTES = 32 * 1024 * 1024
_TABLE_DELIMITER = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$", re.MULTILINE)
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def escape_text(text: str) -> str:
    """Escape for an element's text (``<pre>``, ``<textarea>``): quotes need no escaping there."""
    return text.translate(_TEXT_ESCAPES)


def markdown_html(text: str) -> SafeString:
    """Render Markdown to sanitized HTML, or plain preformatted text when that would cost too much."""
    html = _markdown_cache.get(text)
    if html is None:
        budget = _budget.get()
        if budget is not None and budget.spent:
            return mark_safe(plain_html(text))  # noqa: S308 - escaped; not cached: a later request renders it
        started = time.perf_counter()
        html = _markdown_or_plain(text)
        if budget is not None:
            budget.charge(time.perf_counter() - started)
        _markdown_cache.put(text, html)
    return mark_safe(html)  # noqa: S308 - sanitized by nh3, or escaped


def markdown_live_html(text: str) -> SafeString:
    """A reply's text so far as Markdown, rendered on every update while it streams (an unclosed fence
    or a half table renders as far as it goes). Not cached: each prefix is seen once; within the
    request's render budget, else plain text."""
    budget = _budget.get()
    if budget is not None and budget.spent:
        return mark_safe(plain_html(text))  # noqa: S308 - escaped
    started = time.perf_counter()
    html = _markdown_or_plain(text)
    if budget is not None:
        budget.charge(time.perf_counter() - started)
    return mark_safe(html)  # noqa: S308 - sanitized by nh3, or escaped


def markdown_deferred(text: str) -> bool:
    """Whether ``markdown_html(text)`` would now give plain text only because this request's render
    budget is spent (a cached fragment of it must not outlive the request)."""
    return render_budget_spent() and _markdown_cache.get(text) is None


def render_budget_spent() -> bool:
    """Whether this request (or push) has spent its Markdown budget: what it rendered since may show
    some messages as plain text, for it alone (such output must not be cached)."""
    budget = _budget.get()
    return budget is not None and budget.spent


def plain_html(text: str) -> str:
    return f'<pre class="plain">{escape_text(text)}</pre>'


def table_cells(text: str) -> int:
    """An upper bound of the cells markdown-it would make of the text's tables (0: none)."""
    if "|" not in text or "-" not in text:
        return 0
    columns = 0
    for match in _TABLE_DELIMITER.finditer(text):
        if "|" in match.group(0):
            columns = max(columns, match.group(0).count("|") + 1)
    if not columns:
        return 0
    return columns * (text.count("\n") + 1)


def _markdown_or_plain(text: str) -> str:
    """Markdown → HTML → nh3, or the plain text when its tables or its HTML are too large."""
    if table_cells(text) > MAX_TABLE_CELLS:
        return plain_html(text)
    html = _markdown.render(text)
    if len(html) > settings.CONVO_MARKDOWN_MAX_HTML_BYTES:
        return plain_html(text)
    clean = nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        filter_style_properties={"text-align"},
        allowed_classes=_ALLOWED_CLASSES,
    )
    return clean


class _ByteBoundedCache:
    """Rendered Markdown by its text's digest, newest kept, at most ``limit`` bytes of HTML."""

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[bytes, str] = OrderedDict()
        self._size = 0
        self._limit = limit
        self._lock = threading.Lock()

    @staticmethod
    def _key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def get(self, text: str) -> str | None:
        key = self._key(text)
        with self._lock:
            html = self._items.get(key)
            if html is not None:
                self._items.move_to_end(key)
            return html

    def put(self, text: str, html: str) -> None:
        key = self._key(text)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._items[key] = html
            self._size += len(html)
            while self._size > self._limit and self._items:
                self._size -= len(self._items.popitem(last=False)[1])

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0


_markdown_cache = _ByteBoundedCache(CACHE_BYTES)


class RenderBudget:
    """Seconds of Markdown rendering left to one request (or one websocket push)."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds

    @property
    def spent(self) -> bool:
        return self.left <= 0

    def charge(self, seconds: float) -> None:
        self.left -= seconds


_budget: ContextVar[RenderBudget | None] = ContextVar("convo_render_budget", default=None)


@contextmanager
def render_budget(milliseconds: int | None = None) -> Iterator[RenderBudget]:
    """Give the rendering inside the block a budget (default CONVO_MARKDOWN_BUDGET_MS)."""
    ms = settings.CONVO_MARKDOWN_BUDGET_MS if milliseconds is None else milliseconds
    budget = RenderBudget(ms / 1000)
    token = _budget.set(budget)
    try:
        yield budget
    finally:
        _budget.reset(token)


@sync_and_async_middleware
def render_budget_middleware(get_response):
    """Every request renders its Markdown within one budget (see render_budget). Under ASGI it runs
    on the event loop (the budget reaches the view's thread with the context)."""
    if iscoroutinefunction(get_response):

        async def amiddleware(request):
            with render_budget():
                return await get_response(request)

        return amiddleware

    def middleware(request):
        with render_budget():
            return get_response(request)

    return middleware


def fingerprint(*parts: Any) -> str:
    """A short digest of what a cached fragment depends on (its cache key)."""
    return hashlib.blake2b(repr(parts).encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def dom_id(session_id: str) -> str:
    """A DOM id for a session (session ids may hold ':' and '.', which CSS selectors dislike)."""
    return "s-" + hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:16]


def page_size() -> int:
    return settings.CONVO_CHAT_PAGE_SIZE


CHAT_PAGE = "sessions_app/chat.html"
SIDEBAR = "sessions_app/sidebar.html"
# Every named partial of the two templates, by name: the one map from a partial's name to what
# views render, live pushes send and templates include.
PARTIALS: dict[str, str] = {
    **{
        name: f"{CHAT_PAGE}#{name}"
        for name in (
            "session-header", "expired-banner", "list-bounds", "messages", "load-earlier", "message",
            "reply-stream", "reply-actions", "composer", "timeline", "earlier-turns", "turn", "state-panel",
            "settings-panel", "context-panel", "messages-oob", "earlier-page", "earlier-turns-page",
            "session-gone", "session-title", "list-divider",
        )
    },
    **{name: f"{SIDEBAR}#{name}" for name in ("sidebar", "sidebar-new-form", "sidebar-sections", "sidebar-page")},
}  # fmt: skip

TIMELINE_TURNS = 20  # the timeline shows the newest turns; earlier ones load on demand
CONTEXT_ROWS = 50  # the context panel lists the newest rows of the window; the rest on demand


# ---------------------------------------------------------------------------------------------
# Sidebar (the library, issue 11; its cost, issue 13).
#
# The first page of a user's sidebar is one query (engine.sidebar_page: only the columns it shows)
# and a template loop; the rest loads as it scrolls into view. Chat pages take the rendered first
# page from the "library" cache, under the user's library version (events.library_version, bumped
# after every change of that user's conversations), the viewer's time zone and the day, so a cached
# sidebar is never stale, and an entry's expiry (its badge) bounds how long it is kept.

SIDEBAR_CACHE_SECONDS = 3600
TZ_COOKIE = "convo_tz"


@dataclass
class SidebarEntry:
    session: ConversationSession
    title: str
    dom_id: str
    expired: bool
    section: str

    @property
    def id(self) -> str:
        return self.session.id


def viewer_timezone(cookies: Any) -> zoneinfo.ZoneInfo | dt.tzinfo:
    """The viewer's time zone (the page's script stores it in a cookie), else the server's."""
    name = (cookies or {}).get(TZ_COOKIE, "")
    if name and len(name) <= 64:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return timezone.get_default_timezone()


def _section(session: ConversationSession, today: dt.date, tz: Any) -> str:
    if session.pinned:
        return "Pinned"
    day = session.updated_at.astimezone(tz).date()
    if day >= today:
        return "Today"
    if day == today - dt.timedelta(days=1):
        return "Yesterday"
    if day >= today - dt.timedelta(days=7):
        return "Previous 7 days"
    return "Older"


def sidebar_sections(
    user: Any, *, archived: bool = False, offset: int = 0, after_section: str = "", tz: Any = None, now=None
) -> dict[str, Any]:
    """One page of the sidebar, grouped: Pinned, Today, Yesterday, Previous 7 days, Older (in ``tz``).

    ``after_section``: the section the previous page ended in (its heading is not repeated).
    """
    now = now or timezone.now()
    tz = tz or timezone.get_default_timezone()
    size = settings.CONVO_SIDEBAR_PAGE_SIZE
    rows, more = engine.sidebar_page(user, archived=archived, offset=offset, limit=size)
    today = now.astimezone(tz).date()
    sections: list[dict[str, Any]] = []
    for session in rows:
        label = "Archived" if archived else _section(session, today, tz)
        entry = SidebarEntry(session, session.title or session.sid, dom_id(session.sid), session.is_expired(now), label)
        if not sections or sections[-1]["label"] != label:
            sections.append({"label": label, "heading": bool(sections) or label != after_section, "entries": []})
        sections[-1]["entries"].append(entry)
    return {
        "sections": sections,
        "archived": archived,
        "more": more,
        "next_offset": offset + size,
        "last_section": sections[-1]["label"] if sections else after_section,
        "first_page": offset == 0,
        "soonest_expiry": min((s.expires_at for s in rows if s.expires_at and s.expires_at > now), default=None),
    }


def sidebar_html(user: Any, *, tz: Any = None, now=None, oob: bool = False) -> SafeString:
    """The first page of the user's sidebar (#sidebar-sections), from the library cache when the
    user's conversations did not change since it was rendered."""
    now = now or timezone.now()
    tz = tz or timezone.get_default_timezone()
    cache = caches[events.LIBRARY_CACHE]
    try:
        version = events.library_version(user.pk)
        key = f"convo:library:html:{user.pk}:{version}:{tz}:{now.astimezone(tz).date()}"
        html = cache.get(key)
    except Exception as exc:  # the cache (Redis) is away: render it, uncached
        events.layer_health.failed(exc, "reading the sidebar cache")
        version, key, html = 0, None, None
    if html is None:
        ctx = sidebar_sections(user, tz=tz, now=now)
        html = render_partial("sidebar-sections", {**ctx, "version": version})
        seconds = SIDEBAR_CACHE_SECONDS
        if ctx["soonest_expiry"] is not None:  # an "expired" badge appears then: keep it no longer
            seconds = max(1, min(seconds, int((ctx["soonest_expiry"] - now).total_seconds()) + 1))
        if key is not None:
            with contextlib.suppress(Exception):  # (the read above just worked; a failure here costs nothing)
                cache.set(key, html, seconds)
    if oob:
        html = html.replace('id="sidebar-sections"', 'id="sidebar-sections" hx-swap-oob="true"', 1)
    return mark_safe(html)  # noqa: S308 - rendered by the template engine (autoescaped)


# ---------------------------------------------------------------------------------------------
# The chat page's pieces.


def earlier_messages(session: ConversationSession, before: int | None) -> tuple[list[Message], bool]:
    """The newest page of the conversation's history before ``before`` (all: None), the messages that
    left the session's list included, and whether older ones exist."""
    size = page_size()
    page = engine.messages_page(session, before=before, limit=size + 1, newest=True, history=True)
    has_more = len(page) > size
    page = page[-size:] if has_more else page
    return with_versions(session, page), has_more


# ---------------------------------------------------------------------------------------------
# Lineage: versions on messages, the lineage line in the header (partials in _lineage_*.html).


def with_versions(session: ConversationSession, messages: list[Message]) -> list[Message]:
    """Mark each message with the versions its partial shows: a user message's edits
    (``edit_versions``), the shown response of a turn answered more than once (``response_versions``),
    and ``version_hidden`` on the other responses and their replies' tool messages."""
    turns = {m.turn_number for m in messages if m.role in (Role.ASSISTANT, Role.TOOL) and m.turn_number}
    versions = engine.response_versions(session, turns) if turns else {}
    users = [m.seq for m in messages if m.role == Role.USER]
    edits = engine.edit_versions_of(session, users) if users else {}
    for m in messages:
        shown = versions.get(m.turn_number) if m.role in (Role.ASSISTANT, Role.TOOL) else None
        m.version_hidden = shown is not None and m.seq in shown.others
        m.response_versions = shown if shown is not None and m.seq == shown.chosen else None
        m.edit_versions = edits.get(m.seq) if m.role == Role.USER else None
    return messages


def render_versions_oob(session: ConversationSession, turns: set[int], *, skip: set[int] = frozenset()) -> str:
    """The messages of the given turns' versions again (shown or hidden as now chosen), each
    replacing its element on the page by id; ``skip``: seqs the caller renders itself."""
    versions = engine.response_versions(session, turns)
    seqs = set().union(*([*v.seqs, *v.others] for v in versions.values())) - skip if versions else set()
    if not seqs:
        return ""
    messages = with_versions(session, list(Message.objects.filter(session=session, seq__in=seqs).order_by("seq")))
    return "".join(render_partial("message", {"message": m, "session": session, "msg_oob": True}) for m in messages)


@dataclass
class LineageView:
    """What the header says about where a conversation came from and what was made from it."""

    lineage: str
    parent: ConversationSession | None
    parent_seq: int | None
    children: list[ConversationSession]


def lineage_view(session: ConversationSession) -> LineageView:
    parent = None
    if session.parent_id is not None:
        parent = ConversationSession.objects.filter(pk=session.parent_id).first()
    return LineageView(session.lineage, parent, session.parent_seq, engine.lineage_children(session))


def history_context(session: ConversationSession, before: int | None = None) -> dict[str, Any]:
    """A page of the history (the newest before ``before``) and its divider (``divider``)."""
    messages, has_earlier = earlier_messages(session, before)
    return {
        "messages": messages,
        "has_earlier": has_earlier,
        "divider": divider(session, messages, newest=before is None),
    }


def divider(session: ConversationSession, messages: list[Message], *, newest: bool) -> dict[str, Any]:
    """Where the page's divider goes: before the first listed message (``low_seq``) when the page has it
    and older messages left the list; at the end of the newest page when every message after the
    pinned one left it, or of a page that holds only older ones; else hidden (its place is on another
    page). The page's script moves it as the list changes (``#list-bounds``)."""
    unlisted = engine.has_unlisted_history(session)
    at = None
    if unlisted and messages:
        if any(m.seq == session.low_seq for m in messages):
            at = session.low_seq
        elif (newest and session.low_seq > session.last_seq) or messages[-1].seq < session.low_seq:
            at = "end"
    return {"unlisted": unlisted, "at": at, "low_seq": session.low_seq, "max": session.max_messages}


def continue_url(session: ConversationSession) -> str | None:
    """Where Continue posts (a live copy of an expired conversation), when this build has it."""
    try:
        return reverse("session-continue", args=[session.id])
    except NoReverseMatch:
        return None


def timeline(session: ConversationSession, before: int | None = None) -> dict[str, Any]:
    """The newest turns before turn number ``before`` (all: None)."""
    if before is None:
        turns = engine.turns(session, newest=TIMELINE_TURNS)
    else:
        first = max(1, before - TIMELINE_TURNS)
        turns = engine.turns(session, numbers=range(first, before)) if before > 1 else []
    return {"turns": turns, "earlier_turns": bool(turns) and turns[0].number > 1}


@dataclass
class ContextView:
    window: engine.ContextWindow
    rows: list[Message]
    hidden: int  # included messages not listed (older than the rows shown)
    hidden_first_seq: int | None
    hidden_last_seq: int | None
    show_all: bool

    @property
    def budget(self) -> int:
        return self.window.max_tokens

    @property
    def over_budget(self) -> bool:
        return self.window.total_tokens > self.window.max_tokens


def context_view(session: ConversationSession, budget: int | None = None, *, show_all: bool = False) -> ContextView:
    window = replies.reply_context_window(session, budget)
    messages = window.messages
    rows, hidden, first, last = messages, 0, None, None
    if not show_all and len(messages) > CONTEXT_ROWS + 1:
        head = [messages[0]] if messages[0].role == Role.SYSTEM and messages[0].seq == session.head_seq else []
        tail = messages[-CONTEXT_ROWS:]
        middle = messages[len(head) : len(messages) - CONTEXT_ROWS]
        rows, hidden = head + tail, len(middle)
        first, last = middle[0].seq, middle[-1].seq
    return ContextView(window, rows, hidden, first, last, show_all)


def status(session: ConversationSession, now=None) -> dict[str, Any]:
    now = now or timezone.now()
    return {"expired": session.is_expired(now), "now": now}


def panels_context(
    session: ConversationSession, *, budget: int | None = None, now=None, with_context: bool = True
) -> dict[str, Any]:
    """What the session header, timeline, state and context panels need.

    The chat page itself leaves the context panel out (``with_context=False``): it costs as much as
    the window is long, so the page loads it with a second request right after it opens.
    """
    ctx: dict[str, Any] = {
        "session": session,
        "sdom": dom_id(session.id),
        "history_count": engine.history_count(session),
        "lineage": lineage_view(session),
    }
    if with_context:
        ctx["context"] = context_view(session, budget)
    ctx.update(timeline(session))
    ctx.update(status(session, now))
    ctx["continue_url"] = continue_url(session)
    ctx["last_turn"] = last_turn(session, ctx["turns"])
    return ctx


def last_turn(session: ConversationSession, turns: list[engine.TurnView] | None = None) -> engine.TurnView | None:
    """The session's last turn (from the newest turns when at hand), which Regenerate and Retry answer."""
    if not session.turn_count:
        return None
    if turns and turns[-1].number == session.turn_count:
        return turns[-1]
    return engine.last_turn(session)


def panels_version(session: ConversationSession, now=None) -> str:
    """A digest of everything the panels show from the session's row. A page sends the version of
    the panels it has with its hello; when it matches and the page has the newest message, the
    catch-up sends nothing (a reconnect costs no rendering)."""
    return fingerprint(
        session.pk, session.last_seq, session.low_seq, session.head_seq, session.turn_count,
        session.total_tokens, session.updated_at, session.expires_at, session.is_expired(now),
        session.max_messages, session.max_tokens, session.timeout_seconds, session.persist_system_prompt,
        session.system_prompt, session.metadata, session.variables, session.data, session.title,
    )  # fmt: skip


def list_bounds(session: ConversationSession) -> dict[str, Any]:
    return {"low_seq": session.low_seq, "head_seq": session.head_seq or 0, "last_seq": session.last_seq}


def render_partial(name: str, context: dict[str, Any], request=None) -> str:
    return render_to_string(PARTIALS[name], context, request=request)


# ---------------------------------------------------------------------------------------------
# Live updates: out-of-band fragments for the page, swapped by the htmx ws extension.


def render_messages_oob(messages: list[Message], session: ConversationSession) -> str:
    """New messages, to be placed into #message-list by sequence number (the page skips any it has)."""
    if not messages:
        return ""
    if not all(hasattr(m, "version_hidden") for m in messages):  # not marked by the caller yet
        messages = with_versions(session, messages)
    html = render_partial("messages-oob", {"messages": messages, "session": session})
    # A new response of a turn answered before: its earlier versions on the page hide behind it.
    again = {m.response_versions.turn for m in messages if m.response_versions is not None}
    return html + render_versions_oob(session, again, skip={m.seq for m in messages}) if again else html


def render_panels_oob(session: ConversationSession, user: Any, *, budget: int | None = None, now=None) -> str:
    """Fresh header, expiry banner, timeline, state, context and reply actions, each replacing its element
    by id (the sidebar follows the user's library events: consumers.library_changed)."""
    return "".join(render_panels_oob_parts(session, user, budget=budget, now=now))


def render_panels_oob_parts(
    session: ConversationSession, user: Any, *, budget: int | None = None, now=None
) -> list[str]:
    """The panels of render_panels_oob, one fragment each (live pushes split them into frames)."""
    ctx = panels_context(session, budget=budget, now=now)
    ctx.update(oob=True)
    parts = [
        render_partial("session-header", ctx),
        render_partial("expired-banner", ctx),
        render_partial("timeline", ctx),
        render_partial("state-panel", ctx),
        render_partial("context-panel", ctx),
        render_partial("reply-actions", ctx),
    ]
    return parts


def render_bounds_oob(session: ConversationSession) -> str:
    """The page's record of the list: which sequence numbers are in it and the newest one sent."""
    return render_partial("list-bounds", {"bounds": list_bounds(session), "oob": True})


def render_messages_pane_oob(
    session: ConversationSession, messages: list[Message] | None = None, has_earlier: bool = False
) -> str:
    """The whole message list again (after a clear, or when a page is too far behind to catch up):
    its newest page, or the oldest ``messages`` of that page (live pushes send the rest after it)."""
    if messages is None:
        return render_partial("messages", {"session": session, **history_context(session), "oob": True})
    ctx = {"messages": messages, "has_earlier": has_earlier, "divider": divider(session, messages, newest=False)}
    return render_partial("messages", {"session": session, **ctx, "oob": True})


def render_settings_oob(session: ConversationSession) -> str:
    """The settings panel with the stored values (after an edit elsewhere, so no page saves stale ones)."""
    ctx = {"session": session, "edit_form": EditSessionForm.for_session(session), "oob": True}
    return render_partial("settings-panel", ctx)


def reply_context(
    session_id: str,
    state: str,
    text: str = "",
    *,
    error: str = "",
    reply_id: Any = None,
    turn: Any = None,
    announce: bool = True,
) -> dict[str, Any]:
    """What the reply-stream partial shows: the running reply's text and Stop, or a failed reply's error."""
    return {
        "session_id": session_id,
        "reply_state": state,
        "reply_text": text,
        "reply_error": error,
        "reply_id": reply_id,
        "reply_turn": turn,
        "announce": announce,
    }


def reply_state(session: ConversationSession, turn: engine.TurnView | None = None) -> dict[str, Any]:
    """The reply area as the database has it: the running reply (its text so far and a Stop button),
    or the last turn's failed reply, or nothing. For a page that opens or reconnects mid-reply."""
    running = replies.running_reply(session)
    if running is not None:
        return reply_context(session.id, "delta", running.text, reply_id=running.pk, turn=running.turn_number)
    turn = turn if turn is not None else last_turn(session)
    if turn is not None and not turn.is_complete and turn.metadata.get("reply_error"):
        return reply_context(session.id, "error", error=turn.metadata["reply_error"], turn=turn.number, announce=False)
    return reply_context(session.id, "")


def render_reply_oob(
    session_id: str, state: str, text: str, *, error: str = "", reply_id: Any = None, turn: Any = None
) -> str:
    """The reply stream for a REPLY event: text and Stop while it runs, an alert when it failed, else empty."""
    ctx = reply_context(session_id, state, text, error=error, reply_id=reply_id, turn=turn)
    return render_partial("reply-stream", {**ctx, "oob": True})


def render_reply_state_oob(session: ConversationSession, state: dict[str, Any] | None = None) -> str:
    """The reply stream as the database has it (see reply_state; or ``state``), after a (re)connect."""
    state = state if state is not None else reply_state(session)
    return render_partial("reply-stream", {**state, "announce": False, "oob": True})


def render_reply_if_any_oob(session: ConversationSession, state: dict[str, Any] | None = None) -> str:
    """The reply stream and actions when a reply runs or the last one failed; else nothing (a page
    that reconnects with everything else current)."""
    state = state if state is not None else reply_state(session)
    if not state["reply_state"]:
        return ""
    stream = render_partial("reply-stream", {**state, "announce": False, "oob": True})
    return stream + render_reply_actions_oob(session)


def render_reply_actions_oob(session: ConversationSession) -> str:
    """Regenerate (last turn complete) or Retry (last turn open), from the database."""
    ctx = {"session": session, "last_turn": last_turn(session), "oob": True, **status(session)}
    return render_partial("reply-actions", ctx)


def render_gone_oob(session_id: str) -> str:
    return render_partial("session-gone", {"session_id": session_id, "oob": True})


# ---------------------------------------------------------------------------------------------
# The reply inspector: what the model saw for one answer.


@dataclass
class ReplyInspection:
    answer: Message
    reply: Any  # the Reply row, or None for an answer written by hand (or before replies were kept)
    sent: list[tuple[int, Message | None, str | None]]  # seq, message (None: since cleared), text as sent if changed
    recorded: bool  # whether the reply kept its sent seqs (replies from before the inspector did not)
    usage: dict[str, Any]
    latency_ms: int | None
    first_token_ms: int | None

    @property
    def sent_tokens(self) -> int:
        return sum(m.tokens for _, m, _ in self.sent if m is not None)

    @property
    def provider(self) -> dict[str, Any]:
        return self.usage.get("provider") or {}

    @property
    def round_count(self) -> int:
        return len(self.usage.get("round_seqs") or [])


def _ms(start, end) -> int | None:
    if start is None or end is None:
        return None
    return int((end - start).total_seconds() * 1000)


def reply_inspection(session: ConversationSession, seq: int) -> ReplyInspection | None:
    """Everything the inspector shows for the assistant message ``seq`` (None: no such answer)."""
    answer = engine.messages_with_seqs(session, [seq]).get(seq)
    if answer is None or answer.role != Role.ASSISTANT:
        return None
    reply = replies.reply_for_answer(session, seq)
    seqs = list(reply.sent_seqs) if reply is not None and reply.sent_seqs is not None else []
    stored = engine.messages_with_seqs(session, seqs)
    usage = dict(reply.usage or {}) if reply is not None else {}
    prompt = usage.get("system_prompt") or {}

    def as_sent(seq: int, message: Message | None) -> str | None:
        """The system prompt's text as the reply sent it, when it was edited since (else None)."""
        if message is not None and prompt.get("seq") == seq and prompt.get("content") != message.content:
            return str(prompt.get("content"))
        return None

    return ReplyInspection(
        answer=answer,
        reply=reply,
        sent=[(s, stored.get(s), as_sent(s, stored.get(s))) for s in seqs],
        recorded=reply is not None and reply.sent_seqs is not None,
        usage=usage,
        latency_ms=_ms(reply.started_at, reply.finished_at) if reply is not None else None,
        first_token_ms=_ms(reply.started_at, reply.first_token_at) if reply is not None else None,
    )
