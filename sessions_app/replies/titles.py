"""Titles from the model (CONVO_AUTO_TITLE=model, issue 11).

Every conversation gets a title from its first user message as it is appended (the engine's
bookkeeping). With ``CONVO_AUTO_TITLE=model`` and the ``openai`` responder, the reply thread then
asks the model, once the first turn's reply is stored, for a short title of that exchange, and puts
it in place of the one taken from the message, unless the conversation was renamed meanwhile. A
failure leaves the first title: it is logged, never shown as the reply's error.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from sessions_app import engine
from sessions_app.models import ConversationSession, Message, Reply

from .responders import CancelHandle, ContextInfo, ProviderError, ProviderRequest, Responder, TextDelta, redact

logger = logging.getLogger(__name__)

TITLE_PROMPT = (
    "Write a short title (at most six words) for the conversation below, in its language. "
    "Answer with the title only: no quotes, no final punctuation."
)
EXCERPT_CHARS = 2000  # of the question and of the answer: a title needs no more
TITLE_WORDS = 12


def wanted(reply: Reply, responder: Responder) -> bool:
    """Whether this reply is followed by a title request: the first turn's first answer, from a model."""
    return (
        settings.CONVO_AUTO_TITLE == "model"
        and responder.name == "openai"
        and reply.turn_number == 1
        and not reply.regenerate
    )


def clean_title(text: str) -> str:
    """The model's answer as a title: its first line, without quotes, a "Title:" label or final
    punctuation, at most TITLE_WORDS words, then as any title (``engine.title_from``)."""
    line = engine.title_from(text.replace("**", ""))
    if line.lower().startswith("title:"):
        line = line[len("title:") :].strip()
    line = line.strip().strip("\"'“”‘’«»`").strip().rstrip(".!?;:,").strip()
    return " ".join(line.split()[:TITLE_WORDS])


def title_from_model(reply: Reply, responder: Responder, answer: str) -> str | None:
    """Ask the model for the conversation's title and store it; return it (None: kept the first one)."""
    if not Reply.objects.filter(pk=reply.pk, status=Reply.Status.DONE).exists():
        return None  # the answer was not stored (stopped, failed, dropped)
    question = Message.objects.filter(session_id=reply.session_id, seq=reply.user_seq).values_list("content", flat=True)
    question = question.first()
    if not question or not answer:
        return None
    request = ProviderRequest(
        messages=[
            {"role": "system", "content": TITLE_PROMPT},
            {"role": "user", "content": f"User: {question[:EXCERPT_CHARS]}\n\nAssistant: {answer[:EXCERPT_CHARS]}"},
        ],
        tools=None,
        context=ContextInfo(message_count=2, tokens=0, turn_number=reply.turn_number, max_tokens=0),
        session_id=str(reply.session_id),
    )
    try:
        text = "".join(e.text for e in responder.stream(request, CancelHandle()) if isinstance(e, TextDelta))
    except ProviderError as exc:
        logger.warning("No title from the model for session %s: %s", reply.session_id, redact(str(exc)))
        return None
    title = clean_title(text)
    if not title:
        return None
    first = engine.title_from(question)
    try:
        with transaction.atomic():
            session = ConversationSession.objects.select_for_update().filter(pk=reply.session_id).first()
            if session is None or session.title != first:
                return None  # deleted, or renamed meanwhile: a person's title wins
            engine.session_set_library(session.pk, title=title)
    except engine.SessionError as exc:
        logger.warning("Could not store the model's title for session %s: %s", reply.session_id, exc)
        return None
    return title
