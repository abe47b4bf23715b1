"""The tools an assistant may call, as a small registry.

A tool is a name, a description, a JSON-schema of its arguments (sent to the model as is) and a
function ``(arguments, context) -> str``. Add one with ``register(Tool(...))`` or the ``@tool``
decorator; ``definitions()`` lists them in the Chat Completions ``tools`` format and ``run()`` calls
one with the model's raw argument text, turning every failure into an error result the model can
read (a bad tool call never fails the reply).
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
import math
import operator
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from sessions_app import engine

logger = logging.getLogger(__name__)


class ToolError(Exception):
    """A tool refused its input; the message goes back to the model as the tool's result."""


@dataclass(frozen=True)
class ToolContext:
    session_id: engine.SessionRef  # the reply's session: its key (a reply never goes by the id)
    now: dt.datetime | None = None


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    func: Callable[[dict[str, Any], ToolContext], str]

    def definition(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass(frozen=True)
class ToolResult:
    content: str
    ok: bool


REGISTRY: dict[str, Tool] = {}


def register(t: Tool) -> Tool:
    REGISTRY[t.name] = t
    return t


def tool(name: str, description: str, properties: dict[str, Any], required: list[str] | None = None):
    """Decorator registering a function as a tool with an object-of-``properties`` schema."""

    def wrap(func: Callable[[dict[str, Any], ToolContext], str]) -> Callable[[dict[str, Any], ToolContext], str]:
        schema = {"type": "object", "properties": properties, "required": required or [], "additionalProperties": False}
        register(Tool(name, description, schema, func))
        return func

    return wrap


def definitions() -> list[dict[str, Any]]:
    """Every registered tool in the Chat Completions ``tools`` format, in registration order."""
    return [t.definition() for t in REGISTRY.values()]


def run(name: str, arguments: str, context: ToolContext) -> ToolResult:
    """Call tool ``name`` with the model's argument text (a JSON object)."""
    found = REGISTRY.get(name)
    if found is None:
        return ToolResult(f"Error: there is no tool named {name!r}.", ok=False)
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        return ToolResult("Error: the arguments are not valid JSON.", ok=False)
    if not isinstance(args, dict):
        return ToolResult("Error: the arguments must be a JSON object.", ok=False)
    try:
        args = _check_arguments(found.parameters, args)
        return ToolResult(found.func(args, context), ok=True)
    except ToolError as exc:
        return ToolResult(f"Error: {exc}", ok=False)
    except engine.SessionValidationError as exc:
        return ToolResult(f"Error: {exc}", ok=False)
    except engine.SessionError:
        raise  # the session itself is gone or broken: the reply cannot go on
    except Exception:
        logger.exception("Tool %s failed", name)
        return ToolResult(f"Error: the tool {name} failed unexpectedly.", ok=False)


def _check_arguments(schema: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    """Check required keys and scalar types of a flat object schema (what the tools here use)."""
    properties = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in args or args[key] is None:
            raise ToolError(f"the argument {key!r} is required")
    checked = {}
    for key, value in args.items():
        spec = properties.get(key)
        if spec is None:
            raise ToolError(f"unknown argument {key!r}")
        if spec.get("type") == "string":
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ToolError(f"the argument {key!r} must be a string")
            value = str(value)
        checked[key] = value
    return checked


# ---------------------------------------------------------------------------------------------
# calculator: arithmetic on numbers through Python's parser, evaluated node by node (never eval).

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPRESSION = 500
MAX_RESULT_BITS = 4096  # integers past ~1233 digits are refused (and so is the work to reach them)


def calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** (or ^), parentheses."""
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("^", "**")
    if not text:
        raise ToolError("the expression is empty")
    if len(text) > MAX_EXPRESSION:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ToolError(f"{expression!r} is not an arithmetic expression") from None
    return _evaluate(tree.body)


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("the result is too large") from None
        if isinstance(value, complex):
            raise ToolError("the result is not a real number")
        if isinstance(value, int) and value.bit_length() > MAX_RESULT_BITS:
            raise ToolError("the result is too large")
        if isinstance(value, float) and not math.isfinite(value):
            raise ToolError("the result is too large")
        return value
    raise ToolError("only numbers, + - * / // % ** and parentheses are allowed")


def _check_power(base: int | float, exponent: int | float) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if base.bit_length() * exponent > MAX_RESULT_BITS:
            raise ToolError("the result is too large")
    elif abs(exponent) > 10_000:
        raise ToolError("the exponent is too large")


def format_number(value: int | float) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".12g")
    return str(value)


@tool(
    "calculator",
    "Evaluate an arithmetic expression exactly (numbers, + - * / // % **, parentheses). Use it for any arithmetic.",
    {"expression": {"type": "string", "description": "The expression, e.g. 12*7 or (3+4)**2"}},
    ["expression"],
)
def _calculator(args: dict[str, Any], context: ToolContext) -> str:
    return format_number(calculate(args["expression"]))


# ---------------------------------------------------------------------------------------------
# The session's state (what the chat's state panel shows).


@tool(
    "get_state_variable",
    "Read a variable remembered in this conversation's state.",
    {"key": {"type": "string", "description": "The variable's name, e.g. favourite colour"}},
    ["key"],
)
def _get_state_variable(args: dict[str, Any], context: ToolContext) -> str:
    session = engine.session_get(context.session_id)
    value = engine.state_get(session, args["key"])
    return json.dumps({"key": args["key"], "found": value is not None, "value": value}, ensure_ascii=False)


@tool(
    "set_state_variable",
    "Remember a variable in this conversation's state (replacing its previous value).",
    {
        "key": {"type": "string", "description": "The variable's name"},
        "value": {"type": "string", "description": "The value to remember"},
    },
    ["key", "value"],
)
def _set_state_variable(args: dict[str, Any], context: ToolContext) -> str:
    engine.state_set(context.session_id, args["key"], args["value"], now=context.now)
    return json.dumps({"key": args["key"], "value": args["value"], "saved": True}, ensure_ascii=False)


@tool(
    "current_time",
    "The current date and time, in UTC or in an IANA time zone.",
    {"timezone": {"type": "string", "description": "An IANA time zone such as Europe/Paris (default UTC)"}},
)
def _current_time(args: dict[str, Any], context: ToolContext) -> str:
    now = context.now or timezone.now()
    name = args.get("timezone") or "UTC"
    try:
        zone = zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown time zone {name!r}") from None
    return json.dumps({"timezone": name, "time": now.astimezone(zone).isoformat(timespec="seconds")})
