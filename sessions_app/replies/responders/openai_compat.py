"""The ``openai`` responder: any OpenAI-compatible Chat Completions server, streamed, through httpx.

Wire protocol: ``POST {base_url}/chat/completions`` with ``stream: true`` and
``stream_options.include_usage``; the answer is server-sent events, one JSON chunk per ``data:``
line, ending with ``data: [DONE]``. Content arrives as ``choices[0].delta.content``; tool calls as
``choices[0].delta.tool_calls`` pieces keyed by ``index`` (the id and name first, the argument text
split over any number of chunks); usage in a last chunk whose ``choices`` is empty. Errors come as
an HTTP status with a JSON body (``{"error": {"message": ...}}``) or as an ``error`` object inside the
stream. A server that ignores ``stream`` and answers one JSON completion is understood too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .base import (
    CancelHandle,
    Finish,
    ProviderError,
    ProviderRequest,
    TextDelta,
    ToolCall,
    Usage,
    redact,
    shutdown_socket,
)

MAX_ERROR_BODY = 64 * 1024


class RedactingFilter(logging.Filter):
    """Keep the API key out of the HTTP libraries' own log lines (e.g. a key put in the base URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_REDACTING = RedactingFilter()
for _name in ("httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.proxy"):
    logging.getLogger(_name).addFilter(_REDACTING)


def public_server_name(base_url: str) -> str:
    """The server's host and port only: a base URL may carry credentials or a query."""
    parts = urlsplit(base_url)
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "the configured server"


class OpenAIResponder:
    name = "openai"

    def __init__(self, *, base_url: str, api_key: str, model: str, timeout: float) -> None:
        if not model:
            raise ImproperlyConfigured("CONVO_LLM_MODEL must be set when CONVO_RESPONDER is 'openai'.")
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ImproperlyConfigured("CONVO_LLM_BASE_URL must be an http:// or https:// URL.")
        if timeout <= 0:
            raise ImproperlyConfigured("CONVO_LLM_TIMEOUT must be a positive number of seconds.")
        parts = urlsplit(base_url)
        self.url = urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/chat/completions"))
        self._api_key = api_key
        self.model = model
        self.timeout = timeout
        self.server = public_server_name(base_url)

    def __repr__(self) -> str:  # never show the key
        return f"<OpenAIResponder model={self.model!r} server={self.server!r}>"

    @classmethod
    def from_settings(cls) -> OpenAIResponder:
        return cls(
            base_url=settings.CONVO_LLM_BASE_URL,
            api_key=settings.CONVO_LLM_API_KEY,
            model=settings.CONVO_LLM_MODEL,
            timeout=float(settings.CONVO_LLM_TIMEOUT),
        )

    @classmethod
    def label(cls) -> str:
        return f"{settings.CONVO_LLM_MODEL} on {public_server_name(settings.CONVO_LLM_BASE_URL)}"

    def stream(self, request: ProviderRequest, handle: CancelHandle) -> Iterator[Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            body["tools"] = request.tools
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))

        def trace(event: str, info: dict[str, Any]) -> None:
            # As soon as the connection exists, Stop can shut its socket, even while the server
            # has not sent its response headers yet.
            if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
                stream = info.get("return_value")
                sock = stream.get_extra_info("socket") if stream is not None else None
                handle.on_cancel(lambda: shutdown_socket(sock))

        try:
            with (
                httpx.Client(timeout=timeout, follow_redirects=False) as client,
                client.stream("POST", self.url, json=body, headers=headers, extensions={"trace": trace}) as response,
            ):
                try:
                    if response.status_code >= 400:
                        raise ProviderError(self._http_error(response))
                    content_type = response.headers.get("content-type", "")
                    if "json" in content_type and "event-stream" not in content_type:
                        yield from self._parse_completion(response.read())
                    else:
                        yield from self._parse_stream(response)
                finally:
                    handle.on_cancel(None)
        except httpx.TimeoutException:
            raise ProviderError(
                f"The language model server ({self.server}) did not answer within {self.timeout:g} seconds."
            ) from None
        except httpx.ConnectError:
            raise ProviderError(f"Could not connect to the language model server ({self.server}).") from None
        except httpx.HTTPError as exc:
            raise ProviderError(
                f"The connection to the language model server ({self.server}) failed: {exc.__class__.__name__}."
            ) from None

    # Errors.

    def _http_error(self, response: httpx.Response) -> str:
        raw = b""
        for chunk in response.iter_bytes():
            raw += chunk
            if len(raw) >= MAX_ERROR_BODY:
                break
        detail = _error_detail(raw)
        return f"The language model server returned HTTP {response.status_code}" + (f": {detail}" if detail else ".")

    # Streaming.

    def _parse_stream(self, response: httpx.Response) -> Iterator[Any]:
        calls: dict[Any, dict[str, str]] = {}  # by the chunks' index, in arrival order
        finish: str | None = None
        done = False
        data: list[str] = []
        for line in response.iter_lines():
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
                continue
            if line or not data:
                continue  # comments (":"), "event:"/"id:"/"retry:" fields, blank keep-alives
            payload, data = "\n".join(data), []
            if payload.strip() == "[DONE]":
                done = True
                break
            chunk_finish = yield from self._chunk(payload, calls)
            finish = chunk_finish or finish
        else:
            if data:  # a last event not followed by a blank line
                payload = "\n".join(data)
                if payload.strip() == "[DONE]":
                    done = True
                else:
                    finish = (yield from self._chunk(payload, calls)) or finish
        if not done and finish is None:
            raise ProviderError("The language model's stream ended before the reply was complete.")
        yield from _tool_calls(calls)
        yield Finish(finish or "stop")

    def _chunk(self, payload: str, calls: dict[Any, dict[str, str]]) -> Iterator[Any]:
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise ProviderError("The language model sent a malformed stream (a data line is not JSON).") from None
        if not isinstance(chunk, dict):
            raise ProviderError("The language model sent a malformed stream (a chunk is not a JSON object).")
        if chunk.get("error"):
            detail = _error_detail(json.dumps(chunk).encode())
            raise ProviderError(f"The language model reported an error: {detail}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            yield _usage(usage)
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise ProviderError("The language model sent a malformed stream (choices is not a list).")
        finish = None
        for choice in choices[:1]:
            delta = choice.get("delta") or {} if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                raise ProviderError("The language model sent a malformed stream (a choice has no delta).")
            content = delta.get("content")
            if isinstance(content, str) and content:
                yield TextDelta(content)
            for position, piece in enumerate(delta.get("tool_calls") or []):
                if not isinstance(piece, dict):
                    raise ProviderError("The language model sent a malformed tool call.")
                index = piece.get("index", position)
                acc = calls.get(index)
                if acc is not None and piece.get("id") and acc["id"] and str(piece["id"]) != acc["id"]:
                    # A server that sends whole calls without an index: a new id is a new call.
                    index = f"{index}#{len(calls)}"
                    acc = None
                if acc is None:
                    acc = calls[index] = {"id": "", "name": "", "arguments": ""}
                if piece.get("id"):
                    acc["id"] = str(piece["id"])
                fn = piece.get("function") or {}
                if fn.get("name") and not acc["name"]:
                    acc["name"] = str(fn["name"])
                acc["arguments"] += _argument_text(fn.get("arguments"))
            finish = choice.get("finish_reason") or None
        return finish

    def _parse_completion(self, raw: bytes) -> Iterator[Any]:
        try:
            data = json.loads(raw)
            message = data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ProviderError("The language model sent a malformed response.") from None
        if message.get("content"):
            yield TextDelta(message["content"])
        calls = {
            i: {
                "id": c.get("id") or "",
                "name": (c.get("function") or {}).get("name") or "",
                "arguments": _argument_text((c.get("function") or {}).get("arguments")),
            }
            for i, c in enumerate(message.get("tool_calls") or [])
        }
        yield from _tool_calls(calls)
        if isinstance(data.get("usage"), dict):
            yield _usage(data["usage"])
        yield Finish(data["choices"][0].get("finish_reason") or "stop")


def _tool_calls(calls: dict[Any, dict[str, str]]) -> Iterator[ToolCall]:
    for position, acc in enumerate(calls.values()):
        if not acc["name"]:
            raise ProviderError("The language model sent a tool call without a name.")
        yield ToolCall(id=acc["id"] or f"call_{position}", name=acc["name"], arguments=acc["arguments"] or "{}")


def _argument_text(value: Any) -> str:
    """Arguments are JSON text; a few servers send the object itself."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return ""


def _usage(usage: dict[str, Any]) -> Usage:
    def number(key: str) -> int | None:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return Usage(number("prompt_tokens"), number("completion_tokens"), number("total_tokens"))


def _error_detail(raw: bytes) -> str:
    """The human part of an error body: error.message, error (a string), message or detail."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        for value in (error, data.get("message"), data.get("detail")):
            if isinstance(value, str) and value:
                return value[:500]
    return text[:300]
