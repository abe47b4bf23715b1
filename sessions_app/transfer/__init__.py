"""Export and import of conversations (issue 11): the one module the API, the views and the
management commands call.

- ``formats``: the formats read — Convo's ``convo.export/1``, ChatGPT's ``conversations.json``, Open
  WebUI's chat export — into checked ``Incoming`` conversations; ``ImportInvalid`` names the
  conversation and field at fault.
- ``import_``: writing them, one transaction per conversation, numbered by the engine's bookkeeping.
- ``export``: ``convo.export/1`` JSON, Markdown, JSON Lines and zip writers, streamed in constant memory.

The format is documented in docs/export-format.md (JSON Schema: docs/convo-export-1.schema.json).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from .export import (
    document_header,
    filename_part,
    iter_json,
    iter_jsonl,
    iter_markdown,
    iter_sessions,
    iter_zip,
    streaming_response,
    user_sessions,
)
from .formats import FORMAT, FORMAT_NAMES, ImportInvalid, ImportTooLarge, Incoming, read
from .import_ import Imported, ParentLinker, check, import_conversation, import_conversations

__all__ = [
    "FORMAT",
    "FORMAT_NAMES",
    "ImportInvalid",
    "ImportResult",
    "ImportTooLarge",
    "Imported",
    "Incoming",
    "ParentLinker",
    "check",
    "check_size",
    "document_header",
    "filename_part",
    "import_bytes",
    "import_conversation",
    "import_conversations",
    "iter_json",
    "iter_jsonl",
    "iter_markdown",
    "iter_sessions",
    "iter_zip",
    "read",
    "streaming_response",
    "user_sessions",
]


def check_size(size: int | None) -> None:
    """Refuse a file over CONVO_IMPORT_MAX_BYTES (ImportTooLarge: the API's 413, the form's error)."""
    limit = settings.CONVO_IMPORT_MAX_BYTES
    if size is not None and size > limit:
        raise ImportTooLarge(f"The file is {size:,} bytes; the largest import is {limit:,} bytes.")


@dataclass
class ImportResult:
    source: str  # formats.CONVO, CHATGPT or OPENWEBUI
    imported: list[Imported]

    @property
    def format_name(self) -> str:
        return FORMAT_NAMES[self.source]


def import_bytes(raw: bytes, *, owner) -> ImportResult:
    """Import every conversation of an uploaded file (any format ``formats.read`` knows) for ``owner``:
    all of them, each in its own transaction, or none when the file has an error."""
    check_size(len(raw))
    conversations = read(raw)
    return ImportResult(conversations[0].source, import_conversations(conversations, owner=owner))
