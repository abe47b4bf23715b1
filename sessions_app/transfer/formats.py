"""The formats Convo reads and writes, as plain data: reading a file into ``Incoming`` conversations.

Three formats are read (``read``), each validated completely before anything is written, so that a bad
file names the conversation and the field at fault and imports nothing:

- Convo's own ``convo.export/1`` (docs/export-format.md, docs/convo-export-1.schema.json): one
  conversation object, a list of them, JSON Lines (one per line), or the zip ``GET /api/v1/export`` makes;
- ChatGPT's data export ``conversations.json``: a list of conversations whose ``mapping`` is a tree of
  nodes; the branch ending at ``current_node`` is imported, hidden and empty nodes skipped;
- Open WebUI's chat export: a list of chats whose ``chat.history.messages`` is a tree (``parentId``,
  ``childrenIds``); the branch ending at ``chat.history.currentId`` is imported.

Values go through the engine's own input checks (``engine.values``), so an import can hold nothing an
append could not.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import engine
from ..engine.values import check_state, check_string_map, json_value
from ..models import Role

FORMAT = "convo.export/1"
FORMAT_PREFIX = "convo.export/"
CONVO, CHATGPT, OPENWEBUI = "convo", "chatgpt", "openwebui"
FORMAT_NAMES = {CONVO: "Convo export", CHATGPT: "ChatGPT export", OPENWEBUI: "Open WebUI export"}
TITLE_MAX = 200  # ConversationSession.title
LINEAGE_KINDS = ("branch", "edit", "continue")


class ImportInvalid(engine.SessionValidationError):
    """A file that cannot be imported: ``str(exc)`` names the conversation and the field."""

    def __init__(self, detail: str, *, conversation: str | None = None, field: str | None = None) -> None:
        where = ", ".join(part for part in (conversation, f"field {field}" if field else None) if part)
        super().__init__(f"{where}: {detail}" if where else detail, field=field)
        self.conversation = conversation


class ImportTooLarge(ImportInvalid, engine.InputTooLarge):
    """A file over CONVO_IMPORT_MAX_BYTES (the API's 413)."""


@dataclass
class IncomingMessage:
    role: str
    content: str
    created_at: dt.datetime
    name: str | None = None
    tool_call_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    seq: int | None = None  # Convo's own format: the stored sequence number
    turn: int | None = None  # Convo's own format: checked against the engine's numbering


@dataclass
class ListBounds:
    """Convo's own format: the session's list, as stored (see ``models``)."""

    last_seq: int
    low_seq: int
    head_seq: int | None
    turn_count: int


@dataclass
class Incoming:
    """One conversation read from a file, checked, ready to be written (``import_.import_conversations``)."""

    label: str  # how errors name it: conversation 2 ("Title")
    source: str
    sid: str | None
    title: str
    created_at: dt.datetime
    updated_at: dt.datetime
    config: engine.SessionConfig
    messages: list[IncomingMessage]
    system_prompt: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    pinned: bool = False
    archived: bool = False
    bounds: ListBounds | None = None
    turns: dict[int, dict[str, str]] = field(default_factory=dict)
    key: uuid.UUID | None = None  # the exported session's key (lineage across one import)
    parent_key: uuid.UUID | None = None
    parent_seq: int | None = None
    lineage: str = ""


# ---------------------------------------------------------------------------------------------
# Reading a file


def documents(raw: bytes) -> Iterator[Any]:
    """The JSON documents in an uploaded file: a zip's ``.json`` members, the file's one JSON value,
    or each line of JSON Lines. Raises ImportInvalid when it is none of these."""
    if raw[:4] == b"PK\x03\x04":
        try:
            archive = zipfile.ZipFile(io.BytesIO(raw))
            names = [n for n in archive.namelist() if n.endswith(".json") and not n.endswith("manifest.json")]
        except zipfile.BadZipFile as exc:
            raise ImportInvalid(f"The file is not a readable zip archive ({exc}).") from None
        if not names:
            raise ImportInvalid("The zip archive holds no .json conversation files.")
        for name in names:
            try:
                with archive.open(name) as member:
                    yield _loads(member.read(), name)
            except zipfile.BadZipFile as exc:
                raise ImportInvalid(f"{name}: cannot be read from the archive ({exc}).") from None
        return
    text = _decode(raw, "The file")
    if not text.strip():
        raise ImportInvalid("The file is empty.")
    try:
        yield _parse(text, "The file")
        return
    except _NotJSON as exc:
        first_error = exc.error
    # JSON Lines: several values, one a line (blank lines allowed).
    # Only "\n" ends a line: JSON text may hold U+2028 and the like unescaped.
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if len(lines) < 2 or not isinstance(first_error, json.JSONDecodeError):
        raise _bad_json("The file", first_error)
    yield from [_loads(line.encode("utf-8"), f"Line {number}") for number, line in lines]


def path_documents(path: str) -> Iterator[Any]:
    """The JSON documents of a file on disk, as ``documents`` reads them, but JSON Lines a line at a
    time (a JSON Lines export of any size is read in the memory of its largest conversation)."""
    with open(path, "rb") as file:
        head = file.read(4)
        file.seek(0)
        first = file.readline()
        rest = file.readline()
        while rest and not rest.strip():
            rest = file.readline()
        if head == b"PK\x03\x04" or not rest or not first.strip().startswith(b"{"):
            file.seek(0)
            yield from documents(file.read())
            return
        try:
            _parse(_decode(first, "Line 1"), "Line 1")
        except _NotJSON:  # not one value a line: a pretty-printed document (or a bad one: said below)
            file.seek(0)
            yield from documents(file.read())
            return
        file.seek(0)
        for number, line in enumerate(file, 1):
            if line.strip():
                yield _loads(line, f"Line {number}")


def read(raw: bytes) -> list[Incoming]:
    """Every conversation in an uploaded file, checked; raises ImportInvalid naming what is wrong."""
    return list(read_documents(documents(raw)))


def read_documents(docs: Iterable[Any]) -> Iterator[Incoming]:
    """The conversations in parsed JSON documents (see ``documents``), numbered across them."""
    number = 0
    for doc in docs:
        items = doc if isinstance(doc, list) else [doc]
        if isinstance(doc, list) and not doc:
            raise ImportInvalid("The file holds an empty list: no conversations to import.")
        kind = detect(items[0])
        for item in items:
            number += 1
            yield read_item(item, kind, number)


def read_item(item: Any, kind: str, number: int) -> Incoming:
    label = f"conversation {number}"
    if not isinstance(item, dict):
        raise ImportInvalid(f"expected an object, got {_type_name(item)}", conversation=label)
    title = item.get("title")
    if isinstance(title, str) and title.strip():
        label += f' ("{_one_line(title)[:60]}")'
    reader = {CONVO: _read_convo, CHATGPT: _read_chatgpt, OPENWEBUI: _read_openwebui}[kind]
    try:
        return reader(item, label)
    except ImportInvalid:
        raise
    except engine.SessionValidationError as exc:
        # The engine's own checks (text, names, metadata, state): name the conversation.
        raise ImportInvalid(str(exc), conversation=label, field=exc.field) from None
    except engine.SerializationError as exc:
        raise ImportInvalid(str(exc), conversation=label) from None


def detect(item: Any) -> str:
    """Which format a conversation object is in."""
    if isinstance(item, dict):
        fmt = item.get("format")
        if isinstance(fmt, str) and fmt.startswith(FORMAT_PREFIX):
            if fmt != FORMAT:
                raise ImportInvalid(f"Unsupported format version {fmt!r}: this Convo reads {FORMAT!r}.")
            return CONVO
        if "mapping" in item or "current_node" in item:
            return CHATGPT
        if isinstance(item.get("chat"), dict):
            return OPENWEBUI
    raise ImportInvalid(
        "Unrecognised file: expected a Convo export (format convo.export/1), ChatGPT's conversations.json "
        "or an Open WebUI chat export."
    )


# ---------------------------------------------------------------------------------------------
# Convo's own format


def _read_convo(item: dict[str, Any], label: str) -> Incoming:
    f = _Fields(item, label)
    config_obj = f.obj("config")
    c = _Fields(config_obj, label, "config")
    config = engine.SessionConfig(
        max_messages=c.int("max_messages", minimum=1),
        max_tokens=c.int("max_tokens", minimum=1),
        timeout_seconds=c.int("timeout_seconds", minimum=0, optional=True),
        persist_system_prompt=c.bool("persist_system_prompt"),
    ).validated()
    state = _Fields(f.obj("state"), label, "state")
    variables = check_string_map("state.variables", state.obj("variables"))
    data = state.obj("data")
    data = {check_name_key("state.data", k): json_value(v, f"state.data[{k!r}]") for k, v in data.items()}
    check_state(variables, data)
    bounds_obj = _Fields(f.obj("list"), label, "list")
    bounds = ListBounds(
        last_seq=bounds_obj.int("last_seq", minimum=0),
        low_seq=bounds_obj.int("low_seq", minimum=1),
        head_seq=bounds_obj.int("head_seq", minimum=1, optional=True),
        turn_count=bounds_obj.int("turn_count", minimum=0),
    )
    lineage = _Fields(f.obj("lineage"), label, "lineage")
    kind = lineage.str("kind", optional=True) or ""
    if kind and kind not in LINEAGE_KINDS:
        raise ImportInvalid(
            f"must be one of {', '.join(LINEAGE_KINDS)} or null", conversation=label, field="lineage.kind"
        )

    messages = []
    for i, raw in enumerate(f.list("messages")):
        where = f"messages[{i}]"
        if not isinstance(raw, dict):
            raise ImportInvalid(f"expected an object, got {_type_name(raw)}", conversation=label, field=where)
        m = _Fields(raw, label, where)
        messages.append(
            IncomingMessage(
                role=m.role("role"),
                content=m.content("content"),
                created_at=m.time("created_at"),
                name=m.name("name"),
                tool_call_id=m.name("tool_call_id"),
                metadata=m.metadata("metadata"),
                seq=m.int("seq", minimum=1),
                turn=m.int("turn", minimum=1, optional=True),
            )
        )
    turns: dict[int, dict[str, str]] = {}
    for i, raw in enumerate(f.list("turns")):
        t = _Fields(raw if isinstance(raw, dict) else {}, label, f"turns[{i}]")
        if not isinstance(raw, dict):
            raise ImportInvalid(f"expected an object, got {_type_name(raw)}", conversation=label, field=t.path(""))
        number = t.int("number", minimum=1)
        if not number <= bounds.turn_count:
            raise ImportInvalid(
                f"turn {number} is beyond the conversation's turn_count ({bounds.turn_count})",
                conversation=label,
                field=t.path("number"),
            )
        turns[number] = t.metadata("metadata")
    return Incoming(
        label=label,
        source=CONVO,
        sid=_own_id(f.str("id", optional=True)),
        title=_title(f.str("title", optional=True)),
        created_at=f.time("created_at"),
        updated_at=f.time("updated_at"),
        config=config,
        messages=messages,
        system_prompt=f.content("system_prompt", optional=True),
        variables=variables,
        data=data,
        metadata=f.metadata("metadata"),
        pinned=f.bool("pinned", optional=True) or False,
        archived=f.bool("archived", optional=True) or False,
        bounds=bounds,
        turns=turns,
        key=f.uuid("key", optional=True),
        parent_key=lineage.uuid("parent_key", optional=True),
        parent_seq=lineage.int("parent_seq", minimum=0, optional=True),  # 0: an edit of the first message
        lineage=kind,
    )


def check_name_key(name: str, key: str) -> str:
    return engine.check_name(f"{name} key", key)


# ---------------------------------------------------------------------------------------------
# ChatGPT's conversations.json


def _read_chatgpt(item: dict[str, Any], label: str) -> Incoming:
    f = _Fields(item, label)
    mapping = f.obj("mapping")
    current = f.str("current_node", optional=True)
    if current is None:  # no node marked current: the newest leaf, the one ChatGPT would show
        current = _newest_leaf(mapping, "children", lambda node: (node.get("message") or {}).get("create_time"))
    nodes = (
        _branch(mapping, current, label, "mapping", parent_key="parent", children_key="children")
        if current is not None
        else []
    )
    created = f.epoch("create_time")
    updated = f.epoch("update_time", optional=True)
    messages: list[IncomingMessage] = []
    last_time = created
    for node_id, node in nodes:
        where = f"mapping[{node_id!r}]"
        n = _Fields(node, label, where)
        message = n.obj("message", optional=True)
        if message is None:
            continue  # the tree's root
        m = _Fields(message, label, f"{where}.message")
        author = _Fields(m.obj("author"), label, f"{where}.message.author")
        role = author.role("role")
        meta = message.get("metadata")
        if isinstance(meta, dict) and meta.get("is_visually_hidden_from_conversation"):
            continue
        text = _chatgpt_text(m.obj("content"), label, f"{where}.message.content")
        if not text.strip():
            continue  # empty system nodes, and nodes with no text (images, tool payloads)
        when = m.epoch("create_time", optional=True) or last_time
        last_time = when
        metadata = {"chatgpt_id": node_id}
        model = meta.get("model_slug") if isinstance(meta, dict) else None
        if isinstance(model, str) and model:
            metadata["model"] = model
        name = author.str("name", optional=True) if role == Role.TOOL else None
        messages.append(
            IncomingMessage(
                role=role,
                content=engine.check_content(f"{where}.message.content", text),
                created_at=when,
                name=engine.check_name(f"{where}.message.author.name", name, allow_none=True),
                metadata=engine.check_metadata("metadata", metadata),
            )
        )
    conversation_id = item.get("conversation_id") or item.get("id")
    return Incoming(
        label=label,
        source=CHATGPT,
        sid=_own_id(conversation_id if isinstance(conversation_id, str) else None),
        title=_title(f.str("title", optional=True)),
        created_at=created,
        updated_at=max(updated or created, last_time),
        config=_foreign_config(),
        messages=messages,
        metadata=engine.check_metadata("metadata", {"imported_from": "chatgpt"}),
        archived=item.get("is_archived") is True,
    )


def _chatgpt_text(content: dict[str, Any], label: str, where: str) -> str:
    """The text of a ChatGPT message: its string parts (text and multimodal_text), or the ``text`` of
    code and execution output; anything else (images, browsing payloads, context) has none."""
    parts = content.get("parts")
    if parts is not None:
        if not isinstance(parts, list):
            raise ImportInvalid(f"expected a list, got {_type_name(parts)}", conversation=label, field=f"{where}.parts")
        return "\n".join(part for part in parts if isinstance(part, str))
    text = content.get("text")
    return text if isinstance(text, str) else ""


# ---------------------------------------------------------------------------------------------
# Open WebUI's chat export


def _read_openwebui(item: dict[str, Any], label: str) -> Incoming:
    f = _Fields(item, label)
    chat = _Fields(f.obj("chat"), label, "chat")
    history = _Fields(chat.obj("history"), label, "chat.history")
    messages_map = history.obj("messages")
    current = history.str("currentId", optional=True)
    if current is None:  # no message marked current: the newest leaf
        current = _newest_leaf(messages_map, "childrenIds", lambda node: node.get("timestamp"))
    title = f.str("title", optional=True) or chat.str("title", optional=True)
    messages: list[IncomingMessage] = []
    created = f.epoch("created_at", optional=True)
    last_time = created
    if current is not None:
        nodes = _branch(
            messages_map, current, label, "chat.history.messages", parent_key="parentId", children_key="childrenIds"
        )
        for node_id, node in nodes:
            where = f"chat.history.messages[{node_id!r}]"
            m = _Fields(node, label, where)
            role = m.role("role")
            content = m.content("content", optional=True) or ""
            if not content.strip():
                continue  # e.g. a reply that failed (Open WebUI keeps its "error" beside an empty content)
            when = m.epoch("timestamp", optional=True) or last_time or m.epoch("timestamp")
            last_time = when
            metadata = {"openwebui_id": node_id}
            model = node.get("model")
            if isinstance(model, str) and model:
                metadata["model"] = model
            messages.append(
                IncomingMessage(
                    role=role, content=content, created_at=when, metadata=engine.check_metadata("metadata", metadata)
                )
            )
    created = created or (messages[0].created_at if messages else None) or f.epoch("created_at")
    updated = f.epoch("updated_at", optional=True) or created
    system = None
    params = chat.obj("params", optional=True) or {}
    if isinstance(params.get("system"), str) and params["system"].strip():
        system = engine.check_content("chat.params.system", params["system"])
    sid = item.get("id")
    return Incoming(
        label=label,
        source=OPENWEBUI,
        sid=_own_id(sid if isinstance(sid, str) else None),
        title=_title(title),
        created_at=created,
        updated_at=max(updated, last_time or updated),
        config=_foreign_config(),
        messages=messages,
        system_prompt=system,
        metadata=engine.check_metadata("metadata", {"imported_from": "openwebui"}),
        pinned=item.get("pinned") is True,
        archived=item.get("archived") is True,
    )


# ---------------------------------------------------------------------------------------------
# Helpers


def _branch(
    tree: dict[str, Any], leaf: str, label: str, where: str, *, parent_key: str, children_key: str
) -> list[tuple[str, dict[str, Any]]]:
    """The nodes from the root down to ``leaf``, following parents; a missing node or a cycle is an error."""
    if leaf not in tree:
        raise ImportInvalid(
            f"names node {leaf!r}, which is not in {where}", conversation=label, field=_leaf_field(where)
        )
    path: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    node_id: Any = leaf
    while node_id is not None:
        if not isinstance(node_id, str):
            raise ImportInvalid(
                f"expected a node id (string) or null, got {_type_name(node_id)}",
                conversation=label,
                field=f"{where}[{path[-1][0]!r}].{parent_key}",
            )
        if node_id in seen:
            raise ImportInvalid(
                f"the parents of node {leaf!r} form a cycle (through {node_id!r})", conversation=label, field=where
            )
        seen.add(node_id)
        node = tree.get(node_id)
        if node is None:
            raise ImportInvalid(
                f"names parent {node_id!r}, which is not in {where}",
                conversation=label,
                field=f"{where}[{path[-1][0]!r}].{parent_key}",
            )
        if not isinstance(node, dict):
            raise ImportInvalid(
                f"expected an object, got {_type_name(node)}", conversation=label, field=f"{where}[{node_id!r}]"
            )
        children = node.get(children_key, [])
        if children is not None and not isinstance(children, list):
            raise ImportInvalid(
                f"expected a list, got {_type_name(children)}",
                conversation=label,
                field=f"{where}[{node_id!r}].{children_key}",
            )
        path.append((node_id, node))
        node_id = node.get(parent_key)
    path.reverse()
    return path


def _newest_leaf(tree: dict[str, Any], children_key: str, time_of) -> str | None:
    """The id of the leaf (a node without children) with the latest time, or None for an empty tree."""
    best, best_time = None, None
    for node_id, node in tree.items():
        if not isinstance(node, dict) or node.get(children_key):
            continue
        when = time_of(node)
        when = when if isinstance(when, int | float) and not isinstance(when, bool) else float("-inf")
        if best is None or when >= best_time:
            best, best_time = node_id, when
    return best


def _leaf_field(where: str) -> str:
    return "current_node" if where == "mapping" else "chat.history.currentId"


def _foreign_config() -> engine.SessionConfig:
    """Another tool's conversation: the project's defaults, never expiring (an archive the user keeps;
    they can set a timeout in its settings)."""
    default = engine.SessionConfig.default()
    return engine.SessionConfig(
        max_messages=default.max_messages,
        max_tokens=default.max_tokens,
        timeout_seconds=None,
        persist_system_prompt=default.persist_system_prompt,
    )


def _own_id(value: str | None) -> str | None:
    """The file's id for a conversation when it is one Convo can use (else a new one is made)."""
    if value is None:
        return None
    try:
        return engine.validate_session_id(value)
    except engine.SessionValidationError:
        return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _title(value: str | None) -> str:
    return _one_line(value or "")[:TITLE_MAX]


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _refuse_constant(constant: str) -> Any:
    raise json.JSONDecodeError(f"{constant} is not valid JSON", constant, 0)


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportInvalid(f"{what} is not UTF-8 text (byte {exc.start}).") from None


class _NotJSON(Exception):
    def __init__(self, error: ValueError | RecursionError) -> None:
        self.error = error


def _parse(text: str, what: str) -> Any:
    """JSON text as RFC 8259 has it (no NaN or Infinity); raises _NotJSON, also for nesting too deep
    for the parser and integers beyond Python's digit limit."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise _NotJSON(exc) from None


def _loads(raw: bytes, what: str) -> Any:
    try:
        return _parse(_decode(raw, what), what)
    except _NotJSON as exc:
        raise _bad_json(what, exc.error) from None


def _bad_json(what: str, exc: ValueError | RecursionError) -> ImportInvalid:
    if isinstance(exc, json.JSONDecodeError):
        return ImportInvalid(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).")
    if isinstance(exc, RecursionError):
        return ImportInvalid(f"{what} is not valid JSON here: it is nested too deeply.")
    return ImportInvalid(f"{what} is not valid JSON here: {exc}.")


class _Fields:
    """Typed access to an object's fields; a missing or wrong one raises ImportInvalid with its path."""

    def __init__(self, obj: dict[str, Any], label: str, prefix: str = "") -> None:
        self.obj_ = obj
        self.label = label
        self.prefix = prefix

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix and key else (self.prefix or key)

    def fail(self, key: str, detail: str) -> ImportInvalid:
        return ImportInvalid(detail, conversation=self.label, field=self.path(key))

    def get(self, key: str, types: tuple[type, ...], expected: str, optional: bool) -> Any:
        if key not in self.obj_ or self.obj_[key] is None:
            if optional:
                return None
            raise self.fail(key, "missing")
        value = self.obj_[key]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise self.fail(key, f"expected {expected}, got {_type_name(value)}")
        return value

    def obj(self, key: str, *, optional: bool = False) -> Any:
        return self.get(key, (dict,), "an object", optional)

    def list(self, key: str) -> list[Any]:
        return self.get(key, (list,), "a list", False)

    def str(self, key: str, *, optional: bool = False) -> Any:
        value = self.get(key, (str,), "a string", optional)
        if value is not None:
            engine.values.check_text(self.path(key), value)
        return value

    def bool(self, key: str, *, optional: bool = False) -> Any:
        return self.get(key, (bool,), "true or false", optional)

    def int(self, key: str, *, minimum: int, optional: bool = False) -> Any:
        value = self.get(key, (int,), "a whole number", optional)
        if value is not None and not minimum <= value <= 2**63 - 1:
            raise self.fail(key, f"must be at least {minimum}")
        return value

    def content(self, key: str, *, optional: bool = False) -> Any:
        value = self.get(key, (str,), "a string", optional)
        return engine.check_content(self.path(key), value, allow_none=True)

    def name(self, key: str) -> Any:
        return engine.check_name(self.path(key), self.get(key, (str,), "a string", True), allow_none=True)

    def metadata(self, key: str) -> dict[str, str]:
        value = self.get(key, (dict,), "an object of strings", True)
        return engine.check_metadata(self.path(key), value)

    def role(self, key: str) -> str:
        value = self.get(key, (str,), "a string", False)
        if value not in Role.values:
            raise self.fail(key, f"{value!r} is not a role ({', '.join(Role.values)})")
        return value

    def uuid(self, key: str, *, optional: bool = False) -> Any:
        value = self.get(key, (str,), "a UUID string", optional)
        if value is None:
            return None
        try:
            return uuid.UUID(value)
        except ValueError:
            raise self.fail(key, f"{value!r} is not a UUID") from None

    def time(self, key: str) -> dt.datetime:
        value = self.get(key, (str,), "an ISO 8601 time", False)
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            raise self.fail(key, f"{value!r} is not an ISO 8601 time") from None
        if when.tzinfo is None:
            raise self.fail(key, f"{value!r} has no time zone")
        return when.astimezone(dt.UTC)

    def epoch(self, key: str, *, optional: bool = False) -> Any:
        """Seconds since 1970 (ChatGPT, Open WebUI); milli-, micro- and nanoseconds are recognised."""
        value = self.get(key, (int, float), "a number (seconds since 1970)", optional)
        if value is None:
            return None
        seconds = float(value)
        for _ in range(3):
            if seconds < 1e11:
                break
            seconds /= 1000
        try:
            return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise self.fail(key, f"{value!r} is not a time") from None
