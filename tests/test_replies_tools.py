"""The tool registry: safe arithmetic, state tools, argument checking, extension."""

import json

import pytest

from sessions_app import engine
from sessions_app.replies import tools
from sessions_app.replies.tools import ToolContext, ToolError, calculate


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("12*7", "84"),
        ("(1+2)*3", "9"),
        ("2^10", "1024"),
        ("7/2", "3.5"),
        ("12/4", "3"),
        ("-3 + +4", "1"),
        ("10 // 3", "3"),
        ("10 % 4", "2"),
        ("2**0.5", "1.41421356237"),
        ("6 × 7", "42"),
        ("1e3 * 2", "2000"),
    ],
)
def test_calculator(expression, result):
    assert tools.run("calculator", json.dumps({"expression": expression}), ToolContext("unused")).content == result


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("__import__('os').system('true')", "only numbers"),
        ("().__class__", "only numbers"),
        ("a + 1", "only numbers"),
        ("[1] * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("'a' * 3", "only numbers"),
        ("1/0", "division by zero"),
        ("9**9**9", "too large"),
        ("10**5000", "too large"),
        ("2.0**99999", "too large"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 +", "not an arithmetic expression"),
        ("1" * 600, "longer than"),
        ("", "empty"),
    ],
)
def test_calculator_refuses(expression, error):
    with pytest.raises(ToolError, match=error):
        calculate(expression)


def test_registry_lists_definitions_in_the_chat_completions_format():
    names = [d["function"]["name"] for d in tools.definitions()]
    assert names[:4] == ["calculator", "get_state_variable", "set_state_variable", "current_time"]
    calc = tools.definitions()[0]
    assert calc["type"] == "function"
    assert calc["function"]["parameters"]["required"] == ["expression"]


def test_a_tool_is_easy_to_add():
    @tools.tool("shout", "Upper-case a text.", {"text": {"type": "string"}}, ["text"])
    def shout(args, context):
        return args["text"].upper()

    try:
        assert "shout" in [d["function"]["name"] for d in tools.definitions()]
        assert tools.run("shout", '{"text": "hi"}', ToolContext("s")).content == "HI"
        missing = tools.run("shout", "{}", ToolContext("s"))
        assert (missing.ok, missing.content) == (False, "Error: the argument 'text' is required")
        unknown = tools.run("shout", '{"text": "a", "loud": 1}', ToolContext("s"))
        assert unknown.content == "Error: unknown argument 'loud'"
    finally:
        tools.REGISTRY.pop("shout")


@pytest.mark.django_db
def test_state_tools(make_session):
    make_session("s")
    context = ToolContext("s")
    assert json.loads(tools.run("get_state_variable", '{"key": "city"}', context).content) == {
        "key": "city",
        "found": False,
        "value": None,
    }
    tools.run("set_state_variable", '{"key": "city", "value": "Lyon"}', context)
    assert engine.session_get("s").variables == {"city": "Lyon"}
    assert json.loads(tools.run("get_state_variable", '{"key": "city"}', context).content)["value"] == "Lyon"
    # Numbers from a model are accepted as text; an empty key is the engine's refusal, told to the model.
    tools.run("set_state_variable", '{"key": "age", "value": 42}', context)
    assert engine.session_get("s").variables["age"] == "42"
    bad = tools.run("set_state_variable", '{"key": "", "value": "x"}', context)
    assert (bad.ok, bad.content) == (False, "Error: key must not be empty")


def test_current_time(now):
    result = json.loads(tools.run("current_time", '{"timezone": "Europe/Paris"}', ToolContext("s", now=now)).content)
    assert result == {"timezone": "Europe/Paris", "time": "2026-05-01T14:00:00+02:00"}
    assert tools.run("current_time", '{"timezone": "Mars/Base"}', ToolContext("s")).content == (
        "Error: unknown time zone 'Mars/Base'"
    )
