"""The built-in responder: no model, no network, the whole pipeline.

It reads the same Chat Completions messages a model would and answers through the same machinery:
arithmetic ("what is 12*7?") by calling the calculator tool, "remember that my X is Y" by calling
set_state_variable, "what is my X?" by calling get_state_variable, "what time is it?" by calling
current_time; anything else gets a reply stating the context it received. Text streams word by word.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

from django.conf import settings

from .base import CancelHandle, ContextInfo, Finish, ProviderRequest, TextDelta, ToolCall

BUILTIN_LABEL = "built-in responder — no language model configured"

_REMEMBER = re.compile(r"^\s*(?:please\s+)?remember\s+(?:that\s+)?my\s+(.+?)\s+(?:is|are)\s+(.+?)[\s.!]*$", re.I | re.S)
_RECALL = re.compile(r"^\s*(?:what(?:'s|\s+is|\s+are)|tell\s+me)\s+my\s+(.+?)[\s?.!]*$", re.I | re.S)
_TIME = re.compile(r"\bwhat\s+time\s+is\s+it\b|\b(?:current|the)\s+time\b|\bwhat(?:'s|\s+is)\s+the\s+date\b", re.I)
_ARITHMETIC = re.compile(
    r"^\s*(?:(?:what(?:'s|\s+is)|calculate|compute|how\s+much\s+is|evaluate)\s*)?([-+*/^%().\d\s×÷]+?)[\s?=.!]*$", re.I
)
_OPERATOR = re.compile(r"\d\s*(?:[-+*/^%×÷]|\*\*)\s*[-+(]*\s*[\d.(]")


def normalise_key(text: str) -> str:
    return " ".join(text.lower().split())


class BuiltinResponder:
    name = "builtin"
    model = "builtin"

    def __init__(self, word_delay: float = 0.0) -> None:
        self.word_delay = max(0.0, word_delay)

    @classmethod
    def from_settings(cls) -> BuiltinResponder:
        return cls(word_delay=settings.CONVO_BUILTIN_WORD_DELAY)

    @classmethod
    def label(cls) -> str:
        return BUILTIN_LABEL

    def stream(self, request: ProviderRequest, handle: CancelHandle) -> Iterator[Any]:
        messages = request.messages
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is None:
            text = "There is no message of yours in the context, so there is nothing to answer."
        else:
            after = messages[last_user + 1 :]
            if any(m["role"] == "tool" for m in after):
                text = self._answer_from_tools(after)
            else:
                call = self._plan(messages[last_user]["content"]) if request.tools else None
                if call is not None:
                    yield call
                    yield Finish("tool_calls")
                    return
                text = self._describe(request.context)
        for word in re.findall(r"\S+\s*", text):
            if handle.is_cancelled or (self.word_delay and handle.cancelled.wait(self.word_delay)):
                return
            yield TextDelta(word)
        yield Finish("stop")

    # What to do with a user message.

    def _plan(self, content: str) -> ToolCall | None:
        if m := _REMEMBER.match(content):
            return _call("set_state_variable", {"key": normalise_key(m[1]), "value": m[2].strip()})
        if m := _RECALL.match(content):
            return _call("get_state_variable", {"key": normalise_key(m[1])})
        if _TIME.search(content):
            return _call("current_time", {})
        if (m := _ARITHMETIC.match(content)) and _OPERATOR.search(m[1]):
            return _call("calculator", {"expression": " ".join(m[1].split())})
        return None

    def _answer_from_tools(self, after: list[dict[str, Any]]) -> str:
        calls = {c["id"]: c["function"] for m in after for c in m.get("tool_calls") or []}
        parts = []
        for m in after:
            if m["role"] != "tool":
                continue
            fn = calls.get(m["tool_call_id"], {"name": "tool", "arguments": "{}"})
            parts.append(_explain(fn["name"], _loads(fn["arguments"]), m["content"]))
        return " ".join(parts)

    @staticmethod
    def _describe(ctx: ContextInfo) -> str:
        messages = f"{ctx.message_count} message{'s' if ctx.message_count != 1 else ''}"
        return (
            f"I am the {BUILTIN_LABEL}, so I do not really understand you. For turn {ctx.turn_number} I received "
            f"{messages} of context, about {ctx.tokens} tokens (the budget is {ctx.max_tokens}). "
            "Try arithmetic (“what is 12*7?”), “remember that my name is Ada”, then “what is my name?”, "
            "or “what time is it?”."
        )


def _call(name: str, arguments: dict[str, Any]) -> ToolCall:
    return ToolCall(id="call_" + uuid.uuid4().hex[:24], name=name, arguments=json.dumps(arguments, ensure_ascii=False))


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _explain(name: str, args: Any, result: str) -> str:
    args = args if isinstance(args, dict) else {}
    if result.startswith("Error:"):
        return f"The {name} tool said: {result[len('Error:') :].strip()}"
    data = _loads(result)
    if name == "calculator":
        return f"{args.get('expression', '?')} = {result}."
    if name == "set_state_variable" and isinstance(data, dict):
        return f"Got it: your {data.get('key')} is {data.get('value')}. I will remember that."
    if name == "get_state_variable" and isinstance(data, dict):
        if data.get("found"):
            return f"Your {data.get('key')} is {data.get('value')}."
        return f"I do not know your {data.get('key')} yet. Tell me with “remember that my {data.get('key')} is …”."
    if name == "current_time" and isinstance(data, dict):
        return f"It is {data.get('time')} ({data.get('timezone')})."
    return f"The {name} tool returned: {result}"
