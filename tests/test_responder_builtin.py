"""The built-in responder on its own: what it makes of a message, given Chat Completions messages."""

import json

import pytest

from sessions_app.replies import tools
from sessions_app.replies.responders import CancelHandle, ContextInfo, Finish, ProviderRequest, TextDelta, ToolCall
from sessions_app.replies.responders.builtin import BuiltinResponder

CONTEXT = ContextInfo(message_count=3, tokens=42, turn_number=2, max_tokens=8192)


def ask(messages, *, with_tools=True, handle=None):
    request = ProviderRequest(messages, tools.definitions() if with_tools else None, CONTEXT, "s")
    return list(BuiltinResponder().stream(request, handle or CancelHandle()))


@pytest.mark.parametrize(
    ("text", "name", "arguments"),
    [
        ("what is 12*7?", "calculator", {"expression": "12*7"}),
        ("What's 2 + 2", "calculator", {"expression": "2 + 2"}),
        ("calculate (3+4)*2", "calculator", {"expression": "(3+4)*2"}),
        ("10 / 4 =", "calculator", {"expression": "10 / 4"}),
        ("remember that my dog's name is Rex.", "set_state_variable", {"key": "dog's name", "value": "Rex"}),
        (
            "Please remember my Favourite  Colour is deep blue",
            "set_state_variable",
            {"key": "favourite colour", "value": "deep blue"},
        ),
        ("What is my dog's name?", "get_state_variable", {"key": "dog's name"}),
        ("what's my favourite colour", "get_state_variable", {"key": "favourite colour"}),
        ("what time is it?", "current_time", {}),
    ],
)
def test_a_message_becomes_a_tool_call(text, name, arguments):
    events = ask([{"role": "user", "content": text}])
    assert isinstance(events[0], ToolCall) and events[-1] == Finish("tool_calls")
    assert (events[0].name, json.loads(events[0].arguments)) == (name, arguments)


@pytest.mark.parametrize("text", ["what is 2?", "hello", "what is the meaning of life?", "12"])
def test_anything_else_is_described_word_by_word(text):
    events = ask([{"role": "system", "content": "sys"}, {"role": "user", "content": text}])
    words = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(words) > 10 and events[-1] == Finish("stop")
    assert "For turn 2 I received 3 messages of context, about 42 tokens (the budget is 8192)." in "".join(words)


def test_without_tools_it_answers_in_text():
    events = ask([{"role": "user", "content": "what is 1+1?"}], with_tools=False)
    assert not any(isinstance(e, ToolCall) for e in events)


def test_after_the_tool_it_answers_from_the_result():
    call = {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "1/0"}'}}
    events = ask(
        [
            {"role": "user", "content": "what is 1/0?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "Error: division by zero"},
        ]
    )
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "The calculator tool said: division by zero"


def test_a_cancelled_stream_stops_between_words():
    handle = CancelHandle()
    handle.cancel()
    events = ask([{"role": "user", "content": "hello"}], handle=handle)
    assert events == []
