"""Full-text search over a user's own conversations: titles and every stored message (the whole history,
not only the session's list), ranked, with highlighted snippets, a page at a time.

The query language is ``websearch_to_tsquery``'s, on both databases: words (all must appear),
``"a phrase"`` (words next to each other, in order), ``-word`` / ``-"a phrase"`` (must not appear),
and ``or`` between alternatives (``a b or c`` is (a and b) or c). A word is a run of letters and digits
(see ``search_schema``): ``foo-bar`` or ``3.11`` is the phrase of its two words. Each alternative needs a
word to find: one made only of exclusions would list everything else, and is refused.

The query is parsed here once, into alternatives of phrases, then written out for the database:
PostgreSQL gets it back as a canonical websearch string (``websearch_to_tsquery('simple', ...)`` on
the stored ``tsvector``, ``ts_rank`` with length normalisation, ``ts_headline`` snippets); SQLite gets
an FTS5 query (``bm25`` ranking, ``snippet``). Same words, same matching: the same conversations and
messages are found on both. Ranks differ in scale (``rank``: higher is better; compare them within
one configuration only); the order agrees where the ranking is unambiguous (term counts, lengths).

Results: title matches first (a conversation whose title matches), then messages, each group by rank,
then newest first. Pages are keyset: an opaque cursor carries the last result's group, rank and id.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import math
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db import connection as default_connection
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from . import search_schema
from .errors import SessionValidationError, storage_errors

MAX_QUERY_CHARS = 500
MAX_TERMS = 32
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
SNIPPET_WORDS = 24

_WORD = re.compile(r"[^\W_]+")
# A query's pieces: a quoted phrase (closed or running to the end), or a run of anything else but space.
_PIECE = re.compile(r'(-?)"([^"]*)"?|(\S+)')


# ---------------------------------------------------------------------------------------------
# The query


@dataclass(frozen=True)
class Phrase:
    words: tuple[str, ...]  # one word, or several that must stand next to each other


@dataclass(frozen=True)
class Alternative:
    include: tuple[Phrase, ...]
    exclude: tuple[Phrase, ...] = ()


@dataclass(frozen=True)
class Query:
    alternatives: tuple[Alternative, ...]

    @property
    def canonical(self) -> str:
        """The query in websearch syntax, made only of words, quotes, '-' and 'or' (what PostgreSQL parses)."""
        return self._websearch(with_exclusions=True)

    @property
    def ranked(self) -> str:
        """The query without its exclusions, in websearch syntax: what ranks a match (``ts_rank`` gives 0
        to a document for a query with a negation in it)."""
        return self._websearch(with_exclusions=False)

    def _websearch(self, *, with_exclusions: bool) -> str:
        def term(phrase: Phrase, negate: bool) -> str:
            text = (
                phrase.words[0] if len(phrase.words) == 1 and phrase.words[0] != "or" else f'"{" ".join(phrase.words)}"'
            )
            return ("-" if negate else "") + text

        return " or ".join(
            " ".join([*(term(p, False) for p in alt.include), *(term(p, True) for p in alt.exclude if with_exclusions)])
            for alt in self.alternatives
        )

    @property
    def fts5(self) -> str:
        """The query as an FTS5 expression: phrases in quotes, AND, NOT, OR, fully parenthesised."""

        def phrase(p: Phrase) -> str:
            return '"' + " ".join(p.words) + '"'  # words are letters and digits: nothing to escape

        parts = []
        for alt in self.alternatives:
            found = " AND ".join(phrase(p) for p in alt.include)
            if alt.exclude:
                found = f"({found}) NOT ({' OR '.join(phrase(p) for p in alt.exclude)})"
            parts.append(f"({found})")
        return " OR ".join(parts)

    @property
    def digest(self) -> str:
        return hashlib.blake2b(self.canonical.encode(), digest_size=6).hexdigest()


def parse_query(text: Any) -> Query:
    """Parse websearch syntax (see the module docstring); raise SessionValidationError (field "q")
    for text with nothing to search for."""
    if not isinstance(text, str):
        raise SessionValidationError("q must be a string", field="q")
    if "\x00" in text:
        raise SessionValidationError("q must not contain NUL characters", field="q")
    text = text.strip()
    if not text:
        raise SessionValidationError("q is empty: give words to search for.", field="q")
    if len(text) > MAX_QUERY_CHARS:
        raise SessionValidationError(f"q is too long: at most {MAX_QUERY_CHARS} characters.", field="q")
    alternatives: list[Alternative] = []
    include: list[Phrase] = []
    exclude: list[Phrase] = []
    terms = 0

    def close() -> None:
        if include or exclude:
            if not include:
                raise SessionValidationError(
                    "Each alternative of q needs a word to find: an exclusion (-word) alone would list "
                    "everything else.",
                    field="q",
                )
            alternatives.append(Alternative(tuple(include), tuple(exclude)))
        include.clear()
        exclude.clear()

    for match in _PIECE.finditer(text):
        negate_quoted, quoted, bare = match.groups()
        if bare is not None and bare.lower() == "or":
            if include or exclude:  # "or" at the start, or twice in a row, is a plain separator
                close()
            continue
        if quoted is not None:
            negate, words = bool(negate_quoted), _WORD.findall(quoted.lower())
        else:
            negate = bare.startswith("-") and len(bare) > 1
            words = _WORD.findall((bare[1:] if negate else bare).lower())
        if not words:
            continue
        terms += len(words)
        if terms > MAX_TERMS:
            raise SessionValidationError(f"q has too many words: at most {MAX_TERMS}.", field="q")
        (exclude if negate else include).append(Phrase(tuple(words)))
    close()
    if not alternatives:
        raise SessionValidationError("q has no words to search for (letters or digits).", field="q")
    return Query(tuple(alternatives))


# ---------------------------------------------------------------------------------------------
# Results and cursors


TITLE, MESSAGE = 0, 1  # the two groups of results, in this order


@dataclass
class SearchHit:
    kind: str  # "title" or "message"
    session_id: str  # the caller's id of the conversation
    session_key: uuid.UUID
    title: str
    seq: int | None  # the message (None for a title match)
    role: str | None
    snippet: SafeString  # HTML: escaped text with <mark>…</mark> around the matched words
    created_at: dt.datetime  # the message's time, or the conversation's creation for a title match
    rank: float
    _position: tuple[int, float, Any] = field(repr=False, default=(0, 0.0, 0))


@dataclass
class SearchPage:
    query: Query
    hits: list[SearchHit]
    next_cursor: str | None


def _encode_cursor(query: Query, position: tuple[int, float, Any]) -> str:
    group, rank, last_id = position
    raw = json.dumps({"q": query.digest, "g": group, "r": rank, "i": last_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(query: Query, cursor: str) -> tuple[int, float, Any]:
    bad = SessionValidationError("cursor is not valid: pass back the next_cursor of the previous page.", field="cursor")
    if not isinstance(cursor, str) or len(cursor) > 400:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
        group, rank, last_id, digest = data["g"], data["r"], data["i"], data["q"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if digest != query.digest:
        raise SessionValidationError(
            "cursor belongs to another search (q changed): start again without it.", field="cursor"
        )
    if group not in (TITLE, MESSAGE) or isinstance(rank, bool) or not isinstance(rank, int | float):
        raise bad
    if not math.isfinite(rank):
        raise bad
    if group == TITLE:
        if not isinstance(last_id, str) or not re.fullmatch(r"[0-9a-f]{32}", last_id):
            raise bad
        last_id = uuid.UUID(last_id)
    elif isinstance(last_id, bool) or not isinstance(last_id, int) or not 0 <= last_id < 2**63:
        raise bad
    return group, float(rank), last_id


def _marked(text: str, start: str, stop: str) -> SafeString:
    """Escape ``text`` and turn the (per-request, unguessable) ``start``/``stop`` markers into
    <mark>…</mark>, balanced whatever the text holds."""
    out: list[str] = []
    open_ = False
    for part in re.split(f"({re.escape(start)}|{re.escape(stop)})", text):
        if part == start:
            if not open_:
                out.append("<mark>")
                open_ = True
        elif part == stop:
            if open_:
                out.append("</mark>")
                open_ = False
        else:
            out.append(escape(part))
    if open_:
        out.append("</mark>")
    return mark_safe("".join(out))  # noqa: S308 - every piece of text is escaped


# ---------------------------------------------------------------------------------------------
# Searching


def _check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise SessionValidationError(f"limit must be a whole number from 1 to {MAX_LIMIT}.", field="limit")
    return limit


@storage_errors
def search(owner: Any, q: Any, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> SearchPage:
    """A page of ``owner``'s conversations and messages matching ``q`` (websearch syntax), best first.

    ``owner`` is a user: only their conversations are searched. ``cursor`` is a previous page's
    ``next_cursor``. Raises SessionValidationError (field q, limit or cursor) for bad input.
    """
    query = parse_query(q)
    limit = _check_limit(limit)
    after = _decode_cursor(query, cursor) if cursor else None
    owner_id = getattr(owner, "pk", None)
    if owner_id is None:
        return SearchPage(query, [], None)
    backend = _Postgres() if default_connection.vendor == "postgresql" else _SQLite()
    hits: list[SearchHit] = []
    if after is None or after[0] == TITLE:
        hits = backend.titles(query, owner_id, after[1:] if after else None, limit + 1)
    if len(hits) <= limit:
        message_after = after[1:] if after and after[0] == MESSAGE else None
        hits += backend.messages(query, owner_id, message_after, limit + 1 - len(hits))
    more = len(hits) > limit
    hits = hits[:limit]
    next_cursor = _encode_cursor(query, hits[-1]._position) if more else None
    return SearchPage(query, hits, next_cursor)


def _markers() -> tuple[str, str]:
    token = secrets.token_hex(8)
    return f"\x02{token}[", f"]{token}\x03"


class _Postgres:
    """``websearch_to_tsquery`` on the stored tsvector (messages) and the title expression index; the rank
    and the snippet come from the query without its exclusions (``Query.ranked``).

    The tsqueries are written inline, not joined in: with constant text they are computed when the
    statement is planned, so the planner sees the words and picks by their frequency (the statistics of
    the tsvector column): the GIN index for rare words, the user's own rows for common ones."""

    # ts_headline reads its text with PostgreSQL's parser, which takes "<b>" or "<div class=x>" for
    # markup and drops it from the snippet: '<' is swapped for a private-use character before, and back after.
    LT = "\ue000"
    QUERY = f"websearch_to_tsquery('{search_schema.PG_CONFIG}', %(q)s)"
    RANKED = f"websearch_to_tsquery('{search_schema.PG_CONFIG}', %(ranked)s)"

    def __init__(self) -> None:
        self.start, self.stop = _markers()
        self.options = f"StartSel={self.start}, StopSel={self.stop}, "

    def headline(self, column: str) -> str:
        return (
            f"ts_headline('{search_schema.PG_CONFIG}', replace({column}, '<', '{self.LT}'), {self.RANKED}, %(options)s)"
        )

    def marked(self, text: str | None) -> str:
        return (text or "").replace(self.LT, "<")

    def params(self, query: Query, owner_id: Any, after: tuple[float, Any] | None, limit: int, options: str):
        params = {"q": query.canonical, "ranked": query.ranked, "owner": owner_id, "limit": limit, "options": options}
        if after is not None:
            params.update(rank=after[0], last=after[1])
        return params

    def titles(self, query: Query, owner_id: Any, after: tuple[float, Any] | None, limit: int) -> list[SearchHit]:
        doc = search_schema.pg_document("s.title")
        keyset = "WHERE rank < %(rank)s OR (rank = %(rank)s AND key < %(last)s)" if after else ""
        sql = f"""
            SELECT key, sid, title, created_at, rank, {self.headline("title")}
            FROM (
                SELECT s.key, s.sid, s.title, s.created_at, ts_rank({doc}, {self.RANKED}, 1)::float8 AS rank
                FROM {search_schema.SESSION_TABLE} s
                WHERE s.owner_id = %(owner)s AND {doc} @@ {self.QUERY}
            ) found
            {keyset}
            ORDER BY rank DESC, key DESC
            LIMIT %(limit)s
        """
        rows = _fetch(sql, self.params(query, owner_id, after, limit, self.options + "HighlightAll=true"))
        return [_title_hit((*row[:5], self.marked(row[5])), self.start, self.stop) for row in rows]

    def messages(self, query: Query, owner_id: Any, after: tuple[float, Any] | None, limit: int) -> list[SearchHit]:
        keyset = "AND (rank < %(rank)s OR (rank = %(rank)s AND id < %(last)s))" if after else ""
        options = self.options + f"MaxWords={SNIPPET_WORDS}, MinWords={SNIPPET_WORDS // 2}"
        # The page is chosen first (the rank of every match among one user's rows), the snippets made for it only.
        sql = f"""
            SELECT page.id, s.sid, s.key, s.title, m.seq, m.role, m.created_at, page.rank, {self.headline("m.content")}
            FROM (
                SELECT id, session_id, rank FROM (
                    SELECT m.id, m.session_id, ts_rank(m.search_vector, {self.RANKED}, 1)::float8 AS rank
                    FROM {search_schema.MESSAGE_TABLE} m
                    JOIN {search_schema.SESSION_TABLE} s ON s.key = m.session_id
                    WHERE s.owner_id = %(owner)s AND m.search_vector @@ {self.QUERY}
                ) found
                WHERE true {keyset}
                ORDER BY rank DESC, id DESC
                LIMIT %(limit)s
            ) page
            JOIN {search_schema.MESSAGE_TABLE} m ON m.id = page.id
            JOIN {search_schema.SESSION_TABLE} s ON s.key = page.session_id
            ORDER BY page.rank DESC, page.id DESC
        """
        rows = _fetch(sql, self.params(query, owner_id, after, limit, options))
        return [_message_hit((*row[:8], self.marked(row[8])), self.start, self.stop) for row in rows]


class _SQLite:
    """FTS5: ``bm25`` (negated, so that higher is better, as on PostgreSQL) and ``snippet``."""

    def __init__(self) -> None:
        self.start, self.stop = _markers()
        search_schema.ensure_sqlite(default_connection)

    def titles(self, query: Query, owner_id: Any, after: tuple[float, Any] | None, limit: int) -> list[SearchHit]:
        fts = search_schema.TITLE_FTS
        keyset, params = "", [self.start, self.stop, "{title} : (" + query.fts5 + ")", owner_id]
        if after is not None:
            keyset = "WHERE rank < %s OR (rank = %s AND key < %s)"
            params += [after[0], after[0], after[1].hex]
        sql = f"""
            SELECT key, sid, title, created_at, rank, marked FROM (
                SELECT s.key, s.sid, s.title, s.created_at, -bm25({fts}, 1.0, 0.0) AS rank,
                       highlight({fts}, 0, %s, %s) AS marked
                FROM {fts} JOIN {search_schema.SESSION_TABLE} s ON s.key = {fts}.session_key
                WHERE {fts} MATCH %s AND s.owner_id = %s
            ) found
            {keyset}
            ORDER BY rank DESC, key DESC
            LIMIT %s
        """
        rows = _fetch(sql, [*params, limit])
        return [_title_hit(row, self.start, self.stop) for row in rows]

    def messages(self, query: Query, owner_id: Any, after: tuple[float, Any] | None, limit: int) -> list[SearchHit]:
        fts = search_schema.MESSAGE_FTS
        keyset, params = "", [query.fts5, owner_id]
        if after is not None:
            keyset = "WHERE rank < %s OR (rank = %s AND id < %s)"
            params += [after[0], after[0], after[1]]
        # The page first; snippets for its rows only (a second, rowid-bounded query).
        sql = f"""
            SELECT id, sid, key, title, seq, role, created_at, rank FROM (
                SELECT m.id, s.sid, s.key, s.title, m.seq, m.role, m.created_at, -bm25({fts}) AS rank
                FROM {fts}
                JOIN {search_schema.MESSAGE_TABLE} m ON m.id = {fts}.rowid
                JOIN {search_schema.SESSION_TABLE} s ON s.key = m.session_id
                WHERE {fts} MATCH %s AND s.owner_id = %s
            ) found
            {keyset}
            ORDER BY rank DESC, id DESC
            LIMIT %s
        """
        rows = _fetch(sql, [*params, limit])
        if not rows:
            return []
        ids = [row[0] for row in rows]
        snippets = dict(
            _fetch(
                f"SELECT rowid, snippet({fts}, 0, %s, %s, ' … ', {SNIPPET_WORDS}) FROM {fts} "
                f"WHERE {fts} MATCH %s AND rowid IN ({', '.join(['%s'] * len(ids))})",
                [self.start, self.stop, query.fts5, *ids],
            )
        )
        return [_message_hit((*row, snippets.get(row[0], "")), self.start, self.stop) for row in rows]


def _fetch(sql: str, params: list[Any] | dict[str, Any]) -> list[tuple]:
    with default_connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _key(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)


def _time(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)  # SQLite: naive UTC text


def _title_hit(row: tuple, start: str, stop: str) -> SearchHit:
    key, sid, title, created_at, rank, marked = row
    key = _key(key)
    return SearchHit(
        kind="title",
        session_id=sid,
        session_key=key,
        title=title,
        seq=None,
        role=None,
        snippet=_marked(marked or title, start, stop),
        created_at=_time(created_at),
        rank=float(rank),
        _position=(TITLE, float(rank), key.hex),
    )


def _message_hit(row: tuple, start: str, stop: str) -> SearchHit:
    message_id, sid, key, title, seq, role, created_at, rank, marked = row
    return SearchHit(
        kind="message",
        session_id=sid,
        session_key=_key(key),
        title=title,
        seq=seq,
        role=role,
        snippet=_marked(marked or "", start, stop),
        created_at=_time(created_at),
        rank=float(rank),
        _position=(MESSAGE, float(rank), message_id),
    )
