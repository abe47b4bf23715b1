"""Responders: who writes the assistant's replies, chosen by CONVO_RESPONDER.

``RESPONDERS`` maps each CONVO_RESPONDER value to its class. Adding a responder is one module in
this package (a class following ``base.Responder``: ``name``, ``model``, ``from_settings()``,
``label()``, ``stream()``) plus one entry here; nothing else names responders.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .base import (
    CancelHandle,
    ContextInfo,
    Event,
    Finish,
    ProviderError,
    ProviderRequest,
    Responder,
    TextDelta,
    ToolCall,
    Usage,
    redact,
    wire_messages,
)
from .builtin import BUILTIN_LABEL, BuiltinResponder
from .openai_compat import OpenAIResponder

RESPONDERS: dict[str, type[Responder]] = {
    "builtin": BuiltinResponder,
    "openai": OpenAIResponder,
}


def configured_name() -> str:
    """The CONVO_RESPONDER setting, checked against ``RESPONDERS``."""
    name = settings.CONVO_RESPONDER
    if name not in RESPONDERS:
        raise ImproperlyConfigured(f"CONVO_RESPONDER must be one of {', '.join(RESPONDERS)} (got {name!r}).")
    return name


def get_responder() -> Responder:
    """The configured responder (settings are read each time, so tests can override them)."""
    return RESPONDERS[configured_name()].from_settings()


def responder_label() -> str:
    """How the UI names the configured responder (its class's ``label()``)."""
    return RESPONDERS[configured_name()].label()


__all__ = [
    "BUILTIN_LABEL",
    "RESPONDERS",
    "BuiltinResponder",
    "CancelHandle",
    "ContextInfo",
    "Event",
    "Finish",
    "OpenAIResponder",
    "ProviderError",
    "ProviderRequest",
    "Responder",
    "TextDelta",
    "ToolCall",
    "Usage",
    "configured_name",
    "get_responder",
    "redact",
    "responder_label",
    "wire_messages",
]
