"""Engine and reply refusals as the chat UI answers them, in one place.

A view runs its engine call inside ``with engine_errors(form) as refusal:``. A missing session (or
someone else's) is a 404, whatever the view. The other refusals become an error on the form, next
to the field the engine names when the form has it; a view without a form asks for them as a
notice (``notice=True``) or lets them through. After the block, ``refusal`` is falsy when the call
went through, else it holds the message and the status to answer with.

| raised | answer | status |
| --- | --- | --- |
| SessionNotFound | Http404 | 404 |
| ReplyInProgress, NothingToReply, TooManyReplies | its message | 409 |
| ImproperlyConfigured (the responder settings) | ``unconfigured`` | 503 |
| SessionExpired | ``expired`` | ``status`` (422) |
| SessionAlreadyExists | "That id is taken" on ``session_id`` | ``status`` |
| any other SessionError (validation, storage) | its message, on its ``.field`` (form only) | ``status`` |
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django import forms
from django.core.exceptions import ImproperlyConfigured
from django.http import Http404

from . import engine, replies

UNPROCESSABLE = 422
CONFLICT = 409
UNAVAILABLE = 503

NOT_FOUND = "No such conversation."
EXPIRED = "This conversation has expired: start it fresh to write again."
EXPIRED_STATE = "This conversation has expired: its state can no longer change."
ID_TAKEN = "That id is taken: choose another, or leave it empty for a random one."
UNCONFIGURED = "The assistant is not configured: {exc}"
UNCONFIGURED_SEND = "The assistant is not configured, so the message was not sent: {exc}"


@dataclass
class Refusal:
    """What the engine refused (falsy while nothing was): the message shown and the status."""

    message: str = ""
    status: int = 200

    def __bool__(self) -> bool:
        return self.status != 200


@contextmanager
def engine_errors(
    form: forms.Form | None = None,
    *,
    notice: bool = False,
    status: int = UNPROCESSABLE,
    expired: str = EXPIRED,
    unconfigured: str = UNCONFIGURED,
    fallback_field: str | None = None,
) -> Iterator[Refusal]:
    """Turn the refusals raised inside the block into a 404, a form error or a notice (see above).

    ``status`` answers a refused input or an expired session; ``fallback_field`` takes an engine
    error whose field the form does not have (else it goes above the form). Without a form and
    without ``notice``, only SessionNotFound is handled: everything else propagates.
    """
    refusal = Refusal()
    try:
        yield refusal
    except engine.SessionNotFound:
        raise Http404(NOT_FOUND) from None
    except Exception as exc:
        answer = None
        if form is not None or notice:
            answer = _answer(exc, form, status, expired, unconfigured, fallback_field)
        if answer is None:
            raise
        refusal.message, refusal.status, field = answer
        if form is not None:
            form.add_error(field, refusal.message)


def _answer(
    exc: Exception, form: forms.Form | None, status: int, expired: str, unconfigured: str, fallback_field: str | None
) -> tuple[str, int, str | None] | None:
    """(message, status, form field or None) for a refusal; None for an error that is not one (or
    that only a form can show)."""
    if isinstance(exc, replies.ReplyInProgress | replies.NothingToReply | replies.TooManyReplies):
        return str(exc), CONFLICT, None
    if isinstance(exc, ImproperlyConfigured):
        return unconfigured.format(exc=exc), UNAVAILABLE, None
    if isinstance(exc, engine.SessionExpired):
        return expired, status, None
    if form is None or not isinstance(exc, engine.SessionError):
        return None  # input or storage errors are shown on the form that sent the input
    if isinstance(exc, engine.SessionAlreadyExists):
        return ID_TAKEN, status, "session_id"
    field = getattr(exc, "field", None)
    if field not in form.fields:
        field = fallback_field if fallback_field in form.fields else None
    return str(exc), status, field
