"""Open pages follow the account: a logout, a new password or a deactivation closes the user's sockets.

A logout closes the sockets of the browser that logged out (its other logins stay). A password change
or a deactivation closes every socket of the user: those logins are over (Django refuses their
session hash, or the inactive user). Receivers of Django's ``user_logged_out`` and the user model's
``post_init`` / ``post_save`` signals, connected in ``SessionsAppConfig.ready``; the sockets get the
news through the user's channel-layer group (``events.user_revoked``). Changes that bypass ``save()``
(``QuerySet.update``) send nothing, but each socket re-checks the login on its next ``hello``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from . import events

_SEEN = "_convo_login_fields"


def logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """user_logged_out: close the sockets of this browser's login."""
    if user is None or request is None:
        return
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    events.user_revoked(user.pk, "logout", login=login_digest(session_key))


def login_digest(session_key: str | None) -> str:
    """How a logout names the browser login it ended (a digest, not the session key itself)."""
    return hashlib.sha256(f"convo-login:{session_key}".encode()).hexdigest()[:32]


def remember(sender: Any, instance: Any, **kwargs: Any) -> None:
    """post_init: note the password and the active flag as loaded, to see them change on save."""
    instance.__dict__[_SEEN] = (instance.__dict__.get("password"), instance.__dict__.get("is_active"))


def saved(sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any) -> None:
    """post_save: a new password or a deactivation closes every socket of the user."""
    password, active = instance.__dict__.get("password"), instance.__dict__.get("is_active")
    before = instance.__dict__.get(_SEEN)
    instance.__dict__[_SEEN] = (password, active)
    if created or before is None:
        return
    if before[0] is not None and password != before[0]:
        events.user_revoked(instance.pk, "password")
    elif active is False and before[1] is True:
        events.user_revoked(instance.pk, "deactivated")
