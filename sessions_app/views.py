"""The chat UI's views: parse input, call the engine, render partials. They decide nothing.

Each screen is a page template with named partials (``sessions_app/chat.html``); an htmx request
gets the partial it swaps, a plain request (no JavaScript) gets the page or a redirect back to it.
Engine refusals become a 404, a form error or a notice in one place: ``web_errors.engine_errors``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from . import engine, keys, rendering, replies, throttle, transfer
from .engine import search as search_engine
from .forms import (
    BudgetForm,
    DataForm,
    EditSessionForm,
    ImportForm,
    KeyForm,
    MessageForm,
    NewSessionForm,
    SignUpForm,
    VariableForm,
)
from .models import ApiKey, ConversationSession, Role
from .web_errors import CONFLICT, EXPIRED_STATE, UNCONFIGURED_SEND, UNPROCESSABLE, Refusal, engine_errors

# ---------------------------------------------------------------------------------------------
# Helpers.


def _owned(request: HttpRequest, session_id: str) -> ConversationSession:
    """The request user's session, expired or not; anyone else's (or none) is a 404."""
    with engine_errors():
        return engine.session_get(session_id, owner=request.user)


def _chat_url(session_id: str) -> str:
    return reverse("chat", args=[session_id])


def chat_config() -> engine.SessionConfig:
    """The config of a conversation created in the chat UI: the project's defaults, with the chat's own
    timeout (CONVO_CHAT_TIMEOUT_SECONDS; the engine's and the API's default stays CONVO_TIMEOUT_SECONDS)."""
    return dataclasses.replace(engine.SessionConfig.default(), timeout_seconds=settings.CONVO_CHAT_TIMEOUT_SECONDS)


def _new_form(**kwargs: Any) -> NewSessionForm:
    return NewSessionForm(initial=NewSessionForm.initial_from(chat_config()), **kwargs)


def _sidebar(request: HttpRequest, *, now=None, **extra: Any) -> dict[str, Any]:
    """What the sidebar partial needs: the cached first page of the user's library, the new-chat form."""
    tz = rendering.viewer_timezone(request.COOKIES)
    ctx = {"sidebar_html": rendering.sidebar_html(request.user, tz=tz, now=now), "new_form": _new_form()}
    ctx.update(extra)
    return ctx


def _composer_form() -> MessageForm:
    """A fresh composer: after a message posted as another role it is back to User (most people chat)."""
    return MessageForm(initial={"role": Role.USER})


def _page_context(request: HttpRequest, session: ConversationSession, **extra: Any) -> dict[str, Any]:
    """Everything the chat page renders."""
    now = timezone.now()
    ctx = rendering.panels_context(session, now=now, with_context=False)
    ctx.update(rendering.history_context(session))
    ctx.update(rendering.reply_state(session, ctx["last_turn"]))
    ctx.update(_sidebar(request, now=now))
    ctx.update(
        session=session,
        bounds=rendering.list_bounds(session),
        current_id=session.id,
        composer=_composer_form(),
        edit_form=EditSessionForm.for_session(session),
        var_form=VariableForm(),
        data_form=DataForm(),
        budget_form=BudgetForm(initial={"budget": session.max_tokens}),
        max_content_chars=settings.CONVO_MAX_CONTENT_CHARS,
        resync_seconds=f"{settings.CONVO_RESYNC_SECONDS:g}",  # the page's periodic sync (app.js)
    )
    ctx.update(extra)
    return ctx


def _chat_page(request: HttpRequest, session: ConversationSession, *, status: int = 200, **extra: Any) -> HttpResponse:
    return render(request, rendering.CHAT_PAGE, _page_context(request, session, **extra), status=status)


def _partial(request: HttpRequest, name: str, context: dict[str, Any], *, status: int = 200) -> HttpResponse:
    return render(request, rendering.PARTIALS[name], context, status=status)


def _after_write(request: HttpRequest, session_id: str) -> HttpResponse:
    """A plain (non-htmx) form went through: back to the page (post/redirect/get)."""
    return redirect(_chat_url(session_id))


# ---------------------------------------------------------------------------------------------
# Accounts and home.

TOO_MANY_REQUESTS = 429
SIGNUP_THROTTLED = "Too many sign-up attempts from your address ({limit} an hour): try again in {minutes} minute(s)."


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return render(request, "sessions_app/welcome.html", {"signup_enabled": settings.CONVO_SIGNUP_ENABLED})
    ctx = _sidebar(request, entries=engine.session_count_for_user(request.user))
    # A chat page whose conversation was deleted (in another tab) comes here with ?gone=<its id>.
    gone = request.GET.get("gone", "")
    if gone and len(gone) <= settings.CONVO_MAX_NAME_CHARS:
        ctx["gone"] = gone
    return render(request, "sessions_app/home.html", ctx)


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if not settings.CONVO_SIGNUP_ENABLED:
        return render(request, "registration/signup_closed.html", status=404)
    if request.user.is_authenticated:
        return redirect("home")
    form = SignUpForm(request.POST or None)
    if request.method == "POST":
        # Every attempt counts, whatever its outcome: account creation costs a password hash, and
        # the form's "already exists" error must not become a fast way to list user names.
        limit = settings.CONVO_SIGNUP_PER_HOUR
        retry_after = throttle.hit("signup", request.META.get("REMOTE_ADDR", ""), limit=limit, window=3600)
        if retry_after is not None:
            minutes = -(-retry_after // 60)
            ctx = {"form": SignUpForm(), "throttled": SIGNUP_THROTTLED.format(limit=limit, minutes=minutes)}
            response = render(request, "registration/signup.html", ctx, status=TOO_MANY_REQUESTS)
            response["Retry-After"] = str(retry_after)
            return response
        if form.is_valid():
            user = form.save()
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("home")
        return render(request, "registration/signup.html", {"form": form}, status=UNPROCESSABLE)
    return render(request, "registration/signup.html", {"form": form})


# ---------------------------------------------------------------------------------------------
# Sessions: create, open, edit, clear, delete, start fresh.


@login_required
@require_POST
def session_new(request: HttpRequest) -> HttpResponse:
    """Create a conversation: one click ("quick": the chat's defaults, a random id), or from the
    settings form."""
    if request.POST.get("quick"):
        with engine_errors():
            session = engine.session_create(owner=request.user, config=chat_config())
        return redirect(_chat_url(session.id))
    form = NewSessionForm(request.POST)
    if form.is_valid():
        with engine_errors(form) as refusal:
            session = engine.session_create(
                form.cleaned_data["session_id"],
                owner=request.user,
                system_prompt=form.cleaned_data["system_prompt"] or None,
                config=form.config(),
            )
        if not refusal:
            url = _chat_url(session.id)
            return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    if request.htmx:
        return _partial(request, "sidebar-new-form", {"new_form": form, "new_open": True}, status=UNPROCESSABLE)
    ctx = _sidebar(request, new_form=form, new_open=True)
    return render(request, "sessions_app/home.html", ctx, status=UNPROCESSABLE)


@login_required
@require_GET
def chat(request: HttpRequest, session_id: str) -> HttpResponse:
    """The conversation; with ``?at=<seq>`` (a search result), the messages around that one, from the
    whole history, which the page scrolls to and highlights."""
    session = _owned(request, session_id)
    if "at" not in request.GET:
        return _chat_page(request, session)
    try:
        at = int(request.GET["at"])
    except ValueError:
        return HttpResponse("at must be a sequence number", status=400, content_type="text/plain")
    if not 1 <= at < 2**63:  # sequence numbers are 64-bit
        return HttpResponse("at must be a sequence number", status=400, content_type="text/plain")
    half = rendering.page_size() // 2
    window = engine.messages_around(session, at, before=half, after=half)
    messages = rendering.with_versions(session, window.messages)
    for message in messages:
        if message.seq == at:
            message.version_hidden = False  # an earlier answer a search found shows, beside the chosen one
    return _chat_page(
        request,
        session,
        messages=messages,
        has_earlier=window.has_earlier,
        has_later=window.has_later,
        divider=rendering.divider(session, window.messages, newest=not window.has_later),
        at_seq=at,
    )


@login_required
@require_GET
def messages_earlier(request: HttpRequest, session_id: str) -> HttpResponse:
    """The page of messages before ``?before=<seq>``, with a button for the next older page."""
    session = _owned(request, session_id)
    try:
        before = int(request.GET.get("before", ""))
    except ValueError:
        return HttpResponse("before must be a sequence number", status=400, content_type="text/plain")
    history = rendering.history_context(session, before)
    if not request.htmx:
        return _chat_page(request, session, **history)
    return _partial(request, "earlier-page", {"session": session, **history})


@login_required
@require_GET
def turns_earlier(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _owned(request, session_id)
    try:
        before = int(request.GET.get("before", ""))
    except ValueError:
        return HttpResponse("before must be a turn number", status=400, content_type="text/plain")
    ctx = {"session": session, **rendering.timeline(session, before)}
    if not request.htmx:
        return _chat_page(request, session, **rendering.timeline(session, before), earlier_turns_shown=True)
    return _partial(request, "earlier-turns-page", ctx)


@login_required
@require_POST
def message_send(request: HttpRequest, session_id: str) -> HttpResponse:
    """Append a message written in the composer (the one place the UI appends).

    A user message starts the assistant's reply (in the background: this returns at once); while a
    reply runs it is refused with a message and nothing is stored. Other roles are an operator
    writing a transcript by hand and start nothing. Success returns a fresh composer plus the stored
    message (out of band); every open page of the conversation, this one included, also receives it
    over its websocket (and the reply as it streams), and the page keeps one copy.
    """
    session = _owned(request, session_id)
    form = MessageForm(request.POST)
    message = None
    status = UNPROCESSABLE
    if form.is_valid():
        data = form.cleaned_data
        with engine_errors(form, unconfigured=UNCONFIGURED_SEND) as refusal:
            if data["role"] == Role.USER:
                message, _ = replies.append_and_reply(
                    session.id, data["content"], owner=request.user, name=data["name"] or None
                )
            else:
                message = engine.message_append(
                    session.id,
                    data["role"],
                    data["content"],
                    name=data["name"] or None,
                    tool_call_id=(data["tool_call_id"] or None) if data["role"] == Role.TOOL else None,
                    owner=request.user,
                )
        if refusal:
            status = refusal.status
    if message is None:
        if not request.htmx:
            return _chat_page(request, session, composer=form, status=status)
        return _partial(request, "composer", {"session": session, "composer": form}, status=status)
    if not request.htmx:
        return _after_write(request, session.id)
    ctx = {"session": session, "composer": _composer_form(), "sent": [message], "focus": True}
    return _partial(request, "composer", ctx)


def _reply_actions(request: HttpRequest, session_id: str, *, notice: str = "", status: int = 200) -> HttpResponse:
    """The Regenerate / Retry buttons as they now stand (htmx), or back to the page (plain form)."""
    session = _owned(request, session_id)  # re-read: the action may have changed it
    if not request.htmx:
        if not notice:
            return _after_write(request, session.id)
        return _chat_page(request, session, reply_notice=notice, status=status)
    ctx = {"session": session, "last_turn": rendering.last_turn(session), "reply_notice": notice}
    ctx.update(rendering.status(session))
    return _partial(request, "reply-actions", ctx, status=status)


def _start_reply(request: HttpRequest, session_id: str, *, regenerate: bool) -> HttpResponse:
    session = _owned(request, session_id)
    with engine_errors(notice=True, status=CONFLICT) as refusal:
        reply = replies.start_reply(session.id, owner=request.user, regenerate=regenerate)
        if regenerate:
            # The chat shows one answer per turn: the one it is about to get, and only it is sent later.
            engine.response_choose(session.pk, reply.turn_number, None, owner=request.user)
    return _reply_actions(request, session.id, notice=refusal.message, status=refusal.status)


@login_required
@require_POST
def reply_regenerate(request: HttpRequest, session_id: str) -> HttpResponse:
    """Answer the last turn again; the new response completes it and the previous one stays listed."""
    return _start_reply(request, session_id, regenerate=True)


@login_required
@require_POST
def reply_retry(request: HttpRequest, session_id: str) -> HttpResponse:
    """Reply to the last turn while it is open (after a failed, stopped or interrupted reply)."""
    return _start_reply(request, session_id, regenerate=False)


@login_required
@require_POST
def reply_stop(request: HttpRequest, session_id: str) -> HttpResponse:
    """Stop the running reply: the provider call is cancelled and the partial text is stored (finish
    reason "stopped"); every page learns of it from the REPLY event that follows."""
    session = _owned(request, session_id)
    with engine_errors():
        stopped = replies.stop_reply(session.id, owner=request.user)
    if stopped:
        if not request.htmx:
            return _after_write(request, session.id)
        return HttpResponse(status=204)  # the stream stays until the stored partial reply replaces it
    return _reply_actions(request, session.id, notice="There is no reply to stop: it had already finished.")


@login_required
@require_GET
def message_raw(request: HttpRequest, session_id: str, seq: int) -> HttpResponse:
    """A message's stored text, as plain text (the chat's "Copy" copies it as Markdown)."""
    session = _owned(request, session_id)
    with engine_errors():
        message = engine.messages_with_seqs(session, [seq]).get(seq)
    if message is None:
        raise Http404("No such message.")
    return HttpResponse(message.content, content_type="text/plain; charset=utf-8")


@login_required
@require_GET
def reply_inspect(request: HttpRequest, session_id: str, seq: int) -> HttpResponse:
    """The reply inspector for the assistant message ``seq``: exactly what its reply sent the model
    (the stored seqs), the budget, the estimate against the provider's usage, tool rounds and timings."""
    session = _owned(request, session_id)
    with engine_errors():
        inspection = rendering.reply_inspection(session, seq)
    if inspection is None:
        raise Http404("No such answer.")
    ctx = {"session": session, "inspection": inspection}
    if not request.htmx:
        return render(request, "sessions_app/inspector_page.html", ctx)
    return render(request, "sessions_app/inspector.html", ctx)


@login_required
@require_GET
def context_panel(request: HttpRequest, session_id: str) -> HttpResponse:
    """The context window for ``?budget=<tokens>`` (default: the session's max_tokens)."""
    session = _owned(request, session_id)
    form = BudgetForm(request.GET)
    budget = None
    status = 200
    if form.is_valid():
        budget = form.cleaned_data["budget"]
    else:
        status = UNPROCESSABLE
    show_all = request.GET.get("all") == "1"
    ctx = {
        "context": rendering.context_view(session, budget, show_all=show_all),
        "budget_form": form if status != 200 else BudgetForm(initial={"budget": budget or session.max_tokens}),
    }
    if not request.htmx:
        return _chat_page(request, session, status=status, **ctx)
    return _partial(request, "context-panel", {"session": session, **ctx}, status=status)


def _state_response(
    request: HttpRequest, session: ConversationSession, *, status: int = 200, **forms: Any
) -> HttpResponse:
    if status == 200 and not request.htmx:
        return _after_write(request, session.id)
    session = _owned(request, session.id)  # re-read: the write changed it
    ctx = {"var_form": VariableForm(), "data_form": DataForm(), **forms}
    if not request.htmx:
        return _chat_page(request, session, status=status, **ctx)
    return _partial(request, "state-panel", {"session": session, **ctx}, status=status)


def _state_write(request: HttpRequest, session: ConversationSession, form_name: str, form: Any, write) -> HttpResponse:
    """Run an engine state write for a valid form; engine refusals become the form's errors."""
    if form.is_valid():
        with engine_errors(form, expired=EXPIRED_STATE, fallback_field="value") as refusal:
            write(form.cleaned_data)
        if not refusal:
            return _state_response(request, session)
    return _state_response(request, session, status=UNPROCESSABLE, **{form_name: form})


@login_required
@require_POST
def variable_set(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _owned(request, session_id)
    form = VariableForm(request.POST)

    def write(data):
        engine.state_set(session.id, data["key"], data["value"], owner=request.user)

    return _state_write(request, session, "var_form", form, write)


@login_required
@require_POST
def variable_delete(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _owned(request, session_id)
    form = KeyForm(request.POST)
    return _state_write(
        request, session, "var_form", form, lambda d: engine.state_remove(session.id, d["key"], owner=request.user)
    )


@login_required
@require_POST
def data_set(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _owned(request, session_id)
    form = DataForm(request.POST)
    response = _state_write(
        request,
        session,
        "data_form",
        form,
        lambda d: engine.state_set_data(session.id, d["key"], d["value"], owner=request.user),
    )
    return response


@login_required
@require_POST
def data_delete(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _owned(request, session_id)
    form = KeyForm(request.POST)
    return _state_write(
        request,
        session,
        "data_form",
        form,
        lambda d: engine.state_remove_data(session.id, d["key"], owner=request.user),
    )


@login_required
@require_POST
def session_edit(request: HttpRequest, session_id: str) -> HttpResponse:
    """Edit the system prompt and config (allowed on an expired session, which stays expired)."""
    session = _owned(request, session_id)
    form = EditSessionForm(request.POST)
    if form.is_valid():
        with engine_errors(form) as refusal:
            session = engine.session_update(
                session.id,
                owner=request.user,
                system_prompt=form.cleaned_data["system_prompt"] or None,
                config=form.config(),
                allow_expired=True,
            )
        if not refusal:
            if not request.htmx:
                return _after_write(request, session.id)
            return _partial(
                request,
                "settings-panel",
                {"session": session, "edit_form": EditSessionForm.for_session(session), "saved": True},
            )
    if not request.htmx:
        return _chat_page(request, session, edit_form=form, status=UNPROCESSABLE)
    return _partial(request, "settings-panel", {"session": session, "edit_form": form}, status=UNPROCESSABLE)


def _confirmed(request: HttpRequest) -> bool:
    return request.POST.get("confirm") == "yes"


@login_required
@require_POST
def session_clear(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _owned(request, session_id)
    if not _confirmed(request):
        return HttpResponse("Confirm first: send confirm=yes.", status=400, content_type="text/plain")
    with engine_errors():  # deleted since the read: a 404, as for delete
        engine.session_clear_messages(session.id, owner=request.user, allow_expired=True)
    url = _chat_url(session.id)
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@login_required
@require_POST
def session_delete(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _owned(request, session_id)
    if not _confirmed(request):
        return HttpResponse("Confirm first: send confirm=yes.", status=400, content_type="text/plain")
    with engine_errors():  # deleted since the read: a 404
        engine.session_delete(session.id, owner=request.user)
    url = reverse("home")
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _library_response(request: HttpRequest, session: ConversationSession) -> HttpResponse:
    """After a library change: the sidebar's first page (htmx), or back where the form was (plain)."""
    if not request.htmx:
        return redirect(request.POST.get("next") or _chat_url(session.id))
    tz = rendering.viewer_timezone(request.COOKIES)
    return HttpResponse(rendering.sidebar_html(request.user, tz=tz))


@login_required
@require_POST
def session_title(request: HttpRequest, session_id: str) -> HttpResponse:
    """Rename a conversation (from the sidebar, or the header: ``where=header`` answers with the header's title)."""
    session = _owned(request, session_id)
    title = request.POST.get("title", "")
    error = ""
    try:
        session = engine.session_set_library(session.id, owner=request.user, title=title)
    except engine.SessionValidationError as exc:
        error = str(exc)
    except engine.SessionNotFound:
        raise Http404("No such conversation.") from None
    if request.POST.get("where") == "header" or (error and not request.htmx):
        if not request.htmx:
            if error:
                return _chat_page(request, session, title_error=error, status=UNPROCESSABLE)
            return _after_write(request, session.id)
        ctx = {"session": session, "title_error": error, "title_value": title if error else session.title}
        return _partial(request, "session-title", ctx, status=UNPROCESSABLE if error else 200)
    if error:  # (the sidebar's field has the limits: only a crafted request gets here) nothing is swapped
        response = HttpResponse(error, status=UNPROCESSABLE, content_type="text/plain")
        response["HX-Reswap"] = "none"
        return response
    return _library_response(request, session)


def _flag(request: HttpRequest, name: str) -> bool | None:
    value = request.POST.get(name, "")
    return {"1": True, "true": True, "0": False, "false": False}.get(value.lower())


@login_required
@require_POST
def session_pin(request: HttpRequest, session_id: str) -> HttpResponse:
    """Pin (``pinned=1``) or unpin (``pinned=0``) a conversation: pinned ones head the sidebar."""
    session = _owned(request, session_id)
    pinned = _flag(request, "pinned")
    if pinned is None:
        return HttpResponse("pinned must be 1 or 0", status=400, content_type="text/plain")
    with engine_errors():
        session = engine.session_set_library(session.id, owner=request.user, pinned=pinned)
    return _library_response(request, session)


@login_required
@require_POST
def session_archive(request: HttpRequest, session_id: str) -> HttpResponse:
    """Archive (``archived=1``) or unarchive (``archived=0``): archived ones leave the sidebar's list for
    its Archived section, and stay whole."""
    session = _owned(request, session_id)
    archived = _flag(request, "archived")
    if archived is None:
        return HttpResponse("archived must be 1 or 0", status=400, content_type="text/plain")
    with engine_errors():
        session = engine.session_set_library(session.id, owner=request.user, archived=archived)
    return _library_response(request, session)


@login_required
@require_GET
def sidebar_page(request: HttpRequest) -> HttpResponse:
    """A further page of the sidebar (``?offset=``, loaded as it scrolls into view), or the archive
    (``?archived=1``)."""
    try:
        offset = int(request.GET.get("offset", "0"))
    except ValueError:
        offset = -1
    if not 0 <= offset <= engine.MAX_INT:
        return HttpResponse("offset must be a number of conversations", status=400, content_type="text/plain")
    archived = request.GET.get("archived") == "1"
    after = request.GET.get("after", "")[:32]
    ctx = rendering.sidebar_sections(
        request.user, archived=archived, offset=offset, after_section=after,
        tz=rendering.viewer_timezone(request.COOKIES),
    )  # fmt: skip
    if request.htmx:
        return _partial(request, "sidebar-page", ctx)
    html = rendering.render_partial("sidebar-sections", ctx)
    return render(request, "sessions_app/home.html", _sidebar(request, sidebar_html=mark_safe(html)))  # noqa: S308


@login_required
@require_POST
def session_fresh(request: HttpRequest, session_id: str) -> HttpResponse:
    """Start an expired conversation fresh under the same id, with the same prompt and config
    (the spec's get_or_create: a live session is returned as it is)."""
    session = _owned(request, session_id)
    with engine_errors():
        engine.session_get_or_create(
            session.id,
            owner=request.user,
            system_prompt=session.system_prompt,
            metadata=session.metadata,
            config=engine.SessionConfig.of(session),
        )
    url = _chat_url(session.id)
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


# ---------------------------------------------------------------------------------------------
# Lineage: continue, branch, edit, and the versions of a regenerated answer.


def _go_to(request: HttpRequest, url: str) -> HttpResponse:
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _seq_param(value: str | None) -> int | None:
    try:
        return int(value or "")
    except ValueError:
        return None


@login_required
@require_POST
def session_continue(request: HttpRequest, session_id: str) -> HttpResponse:
    """Go on with a conversation (an expired one, usually) in a new one that carries its whole
    history and state over, linked to it."""
    session = _owned(request, session_id)
    with engine_errors():
        new = engine.session_continue(session.pk, owner=request.user)
    return _go_to(request, _chat_url(new.id))


@login_required
@require_POST
def session_branch(request: HttpRequest, session_id: str) -> HttpResponse:
    """A new conversation with this one's messages up to and including ``at_seq``."""
    session = _owned(request, session_id)
    at_seq = _seq_param(request.POST.get("at_seq"))
    if at_seq is None:
        return HttpResponse("at_seq must be a message's sequence number.", status=400, content_type="text/plain")
    try:
        with engine_errors():
            new = engine.session_branch(session.pk, at_seq, owner=request.user)
    except engine.SessionValidationError as exc:
        return HttpResponse(str(exc), status=UNPROCESSABLE, content_type="text/plain")
    return _go_to(request, _chat_url(new.id))


@login_required
@require_http_methods(["GET", "POST"])
def message_edit(request: HttpRequest, session_id: str, seq: int) -> HttpResponse:
    """GET: the edit form of user message ``seq`` (its slot on the chat page, or a page of its own).
    POST ``content``: a branch before that message gets the edited text and the assistant's reply."""
    session = _owned(request, session_id)
    message = session.messages.filter(seq=seq, role=Role.USER).first() if seq <= session.last_seq else None
    if message is None:
        raise Http404("No such user message.")
    ctx = {
        "session": session,
        "seq": seq,
        "content": message.content,
        "errors": [],
        "max_content_chars": settings.CONVO_MAX_CONTENT_CHARS,
    }
    if request.method == "GET":
        if request.htmx:
            return render(request, "sessions_app/_message_edit.html", ctx)
        return render(request, "sessions_app/message_edit.html", ctx)
    content = request.POST.get("content", "")
    if not content.strip():
        ctx.update(content=content, errors=["Write the edited message first."])
        return render(request, "sessions_app/message_edit.html", ctx, status=UNPROCESSABLE)
    try:
        with engine_errors(notice=True, unconfigured=UNCONFIGURED_SEND) as refusal:
            new, _, _ = replies.edit_and_reply(session.pk, seq, content, owner=request.user)
    except engine.SessionValidationError as exc:  # the text (too long, NUL...): shown on the form
        refusal = Refusal(str(exc), UNPROCESSABLE)
    if refusal:
        ctx.update(content=content, errors=[refusal.message])
        return render(request, "sessions_app/message_edit.html", ctx, status=refusal.status)
    return _go_to(request, _chat_url(new.id))


@login_required
@require_POST
def response_choose(request: HttpRequest, session_id: str, turn: int) -> HttpResponse:
    """Show (and from now on send) answer ``seq`` of ``turn``; the page gets the turn's answers again."""
    session = _owned(request, session_id)
    seq = _seq_param(request.POST.get("seq"))
    if seq is None:
        return HttpResponse("seq must be an answer's sequence number.", status=400, content_type="text/plain")
    try:
        with engine_errors(notice=True) as refusal:
            engine.response_choose(session.pk, turn, seq, owner=request.user)
    except engine.SessionValidationError as exc:
        refusal = Refusal(str(exc), UNPROCESSABLE)
    if refusal:
        return HttpResponse(refusal.message, status=refusal.status, content_type="text/plain")
    if not request.htmx:
        return redirect(f"{_chat_url(session.id)}#msg-{seq}")
    return HttpResponse(rendering.render_versions_oob(session, {turn}))


# Search: the sidebar's box asks as the user types (htmx), a plain form submit gets the page.

SEARCH_PAGE_SIZE = 20


@login_required
@require_GET
def search(request: HttpRequest) -> HttpResponse:
    """Results for ``?q=`` (``&cursor=`` for the next page) in the user's own conversations: the results
    partial for the box, the next page's items for "More results", or the whole page without htmx."""
    q = request.GET.get("q", "").strip()
    cursor = request.GET.get("cursor") or None
    ctx: dict[str, Any] = {"search_q": q, "hits": [], "next_cursor": None, "search_error": ""}
    status = 200
    if q:
        try:
            page = search_engine.search(request.user, q, limit=SEARCH_PAGE_SIZE, cursor=cursor)
        except engine.SessionValidationError as exc:
            ctx["search_error"], status = str(exc), UNPROCESSABLE
        else:
            ctx.update(hits=page.hits, next_cursor=page.next_cursor)
    if request.htmx:
        partial = "search-hits" if cursor and not ctx["search_error"] else "search-results"
        return render(request, f"sessions_app/_search_results.html#{partial}", ctx, status=status)
    ctx.update(_sidebar(request))
    return render(request, "sessions_app/search.html", ctx, status=status)


# ---------------------------------------------------------------------------------------------
# Settings: personal API keys (a new key's secret is shown once), list and revoke.


NEW_KEY_SESSION_KEY = "convo_new_api_key"


@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request: HttpRequest) -> HttpResponse:
    """GET: the user's keys. POST (field ``name``): create a key, then redirect (post/redirect/get: a
    reload creates nothing); the GET after it shows the new key's secret this once."""
    context: dict = {"name_max_length": keys.NAME_MAX_LENGTH}
    status = 200
    if request.method == "POST":
        name = request.POST.get("name", "").strip()
        if len(name) > keys.NAME_MAX_LENGTH or "\x00" in name:
            context["error"] = f"A key's name is at most {keys.NAME_MAX_LENGTH} characters."
            context["name"] = name[: keys.NAME_MAX_LENGTH].replace("\x00", "")
            status = 400
        else:
            key, secret = keys.create_api_key(request.user, name)
            # Handed to the next page view through the server-side session and removed by it: the
            # secret is never put in a URL or a cookie, and is shown once.
            request.session[NEW_KEY_SESSION_KEY] = {"id": key.pk, "secret": secret}
            return redirect("api_keys", permanent=False)
    else:
        shown = request.session.pop(NEW_KEY_SESSION_KEY, None)
        if shown:
            context["new_key"] = ApiKey.objects.filter(pk=shown.get("id"), user=request.user).first()
            context["secret"] = shown.get("secret") if context["new_key"] else None
    context["keys"] = ApiKey.objects.filter(user=request.user).order_by("-created_at")
    response = render(request, "sessions_app/api_keys.html", context, status=status)
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    key = get_object_or_404(ApiKey, pk=key_id, user=request.user)
    keys.revoke_api_key(key)
    return redirect("api_keys")


# ---------------------------------------------------------------------------------------------
# Import and export (sessions_app.transfer). Exports are the API's GET endpoints, which a signed-in
# browser may call: the page links to them.

REQUEST_TOO_LARGE = 413
MULTIPART_SLACK = 64 * 1024  # a form's own bytes around the file


@login_required
@require_http_methods(["GET", "POST"])
def import_page(request: HttpRequest) -> HttpResponse:
    """GET: the upload form and the export links. POST: import the file; the new conversations are
    listed, or the form says what is wrong (the file named by conversation and field) and nothing is stored."""
    context: dict[str, Any] = {"max_bytes": settings.CONVO_IMPORT_MAX_BYTES}
    status = 200
    if request.method == "POST":
        form, status, result = _import_upload(request)
        context["result"] = result
    else:
        form = ImportForm()
    context["form"] = form
    return render(request, "sessions_app/import.html", context, status=status)


def _import_upload(request: HttpRequest) -> tuple[ImportForm, int, transfer.ImportResult | None]:
    try:
        # Refused before the upload is read when its declared size is already too large.
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
        transfer.check_size(max(0, declared - MULTIPART_SLACK))
        form = ImportForm(request.POST, request.FILES)
    except transfer.ImportTooLarge as exc:
        return ImportForm.refused(str(exc)), REQUEST_TOO_LARGE, None
    except ValueError:
        form = ImportForm(request.POST, request.FILES)
    if not form.is_valid():
        return form, UNPROCESSABLE, None
    upload = form.cleaned_data["file"]
    try:
        transfer.check_size(upload.size)
        result = transfer.import_bytes(upload.read(), owner=request.user)
    except transfer.ImportTooLarge as exc:
        form.add_error("file", str(exc))
        return form, REQUEST_TOO_LARGE, None
    except engine.SessionError as exc:  # ImportInvalid (the file), or the database's StorageError
        form.add_error("file", f"Nothing was imported. {exc}")
        return form, UNPROCESSABLE, None
    return ImportForm(), 201, result
