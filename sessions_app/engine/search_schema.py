"""The full-text indexes behind ``engine.search``: their DDL on PostgreSQL and SQLite, installed by
migration 0009_search (changing what is installed here needs a new migration).

Words, on both: runs of letters and digits, lower-cased; no stemming, no stop words. PostgreSQL indexes
``to_tsvector('simple', <text with every other character replaced by a space>)``; SQLite's FTS5 uses
the ``unicode61`` tokenizer (diacritics kept), which splits the text at the same characters. So
"example.com", "foo-bar", "x_y" and "3.11" are two words each on both (PostgreSQL's parser on the raw
text would make "example.com" one host name token, and FTS5 two words).

SQLite: the FTS5 tables are kept in step by triggers. A later migration that rebuilds the message or
session table (SQLite's way of altering a column) drops the triggers with the old table, so
``ensure_sqlite`` puts them back (and rebuilds the indexes) when they are missing; search calls it.
"""

from __future__ import annotations

from typing import Any

MESSAGE_TABLE = "sessions_app_message"
SESSION_TABLE = "sessions_app_conversationsession"
MESSAGE_FTS = "sessions_app_message_fts"
TITLE_FTS = "sessions_app_title_fts"

# PostgreSQL: the document of a text (the same expression in the column, the index and the queries).
PG_CONFIG = "simple"


def pg_document(column: str) -> str:
    return f"to_tsvector('{PG_CONFIG}'::regconfig, regexp_replace({column}, '[^[:alnum:]]+', ' ', 'g'))"


PG_INSTALL = [
    # Stored, generated: computed for every existing row when added, and by PostgreSQL on each write.
    f"ALTER TABLE {MESSAGE_TABLE} ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ({pg_document('content')}) STORED",
    f"CREATE INDEX message_search ON {MESSAGE_TABLE} USING gin (search_vector)",
    # More of the most common words in the column's statistics: a word outside that list is estimated
    # rarer, so the planner reads a rare word's few rows from the GIN index (0.5 ms among 1,000,000
    # messages) instead of probing it once per conversation of the user's (2 ms at the default 100).
    f"ALTER TABLE {MESSAGE_TABLE} ALTER COLUMN search_vector SET STATISTICS 300",
    f"CREATE INDEX session_title_search ON {SESSION_TABLE} USING gin (({pg_document('title')}))",
]
PG_UNINSTALL = [
    "DROP INDEX IF EXISTS session_title_search",
    "DROP INDEX IF EXISTS message_search",
    f"ALTER TABLE {MESSAGE_TABLE} DROP COLUMN IF EXISTS search_vector",
]

TOKENIZER = "unicode61 remove_diacritics 0"

SQLITE_TABLES = [
    # External content: the index refers to the message rows by id; the text is not stored twice.
    f"CREATE VIRTUAL TABLE {MESSAGE_FTS} USING fts5(content, content='{MESSAGE_TABLE}', content_rowid='id', "
    f"tokenize='{TOKENIZER}')",
    # Titles by session key (the key is indexed as a word, so a trigger finds a session's row by it).
    f"CREATE VIRTUAL TABLE {TITLE_FTS} USING fts5(title, session_key, tokenize='{TOKENIZER}')",
]

_TITLE_ROW = f"SELECT rowid FROM {TITLE_FTS} WHERE {TITLE_FTS} MATCH 'session_key : \"' || old.key || '\"'"

SQLITE_TRIGGERS = {
    "sessions_app_message_fts_insert": f"""
        CREATE TRIGGER IF NOT EXISTS sessions_app_message_fts_insert AFTER INSERT ON {MESSAGE_TABLE} BEGIN
            INSERT INTO {MESSAGE_FTS}(rowid, content) VALUES (new.id, new.content);
        END""",
    "sessions_app_message_fts_delete": f"""
        CREATE TRIGGER IF NOT EXISTS sessions_app_message_fts_delete AFTER DELETE ON {MESSAGE_TABLE} BEGIN
            INSERT INTO {MESSAGE_FTS}({MESSAGE_FTS}, rowid, content) VALUES ('delete', old.id, old.content);
        END""",
    "sessions_app_message_fts_update": f"""
        CREATE TRIGGER IF NOT EXISTS sessions_app_message_fts_update AFTER UPDATE OF id, content ON {MESSAGE_TABLE} BEGIN
            INSERT INTO {MESSAGE_FTS}({MESSAGE_FTS}, rowid, content) VALUES ('delete', old.id, old.content);
            INSERT INTO {MESSAGE_FTS}(rowid, content) VALUES (new.id, new.content);
        END""",
    "sessions_app_title_fts_insert": f"""
        CREATE TRIGGER IF NOT EXISTS sessions_app_title_fts_insert AFTER INSERT ON {SESSION_TABLE}
        WHEN new.title != '' BEGIN
            INSERT INTO {TITLE_FTS}(title, session_key) VALUES (new.title, new.key);
        END""",
    "sessions_app_title_fts_delete": f"""
        CREATE TRIGGER IF NOT EXISTS sessions_app_title_fts_delete AFTER DELETE ON {SESSION_TABLE}
        WHEN old.title != '' BEGIN
            DELETE FROM {TITLE_FTS} WHERE rowid IN ({_TITLE_ROW});
        END""",
    "sessions_app_title_fts_update": f"""
        CREATE TRIGGER IF NOT EXISTS sessions_app_title_fts_update AFTER UPDATE OF key, title ON {SESSION_TABLE}
        WHEN old.title IS NOT new.title OR old.key IS NOT new.key BEGIN
            DELETE FROM {TITLE_FTS} WHERE rowid IN ({_TITLE_ROW});
            INSERT INTO {TITLE_FTS}(title, session_key) SELECT new.title, new.key WHERE new.title != '';
        END""",
}

SQLITE_REBUILD = [
    f"INSERT INTO {MESSAGE_FTS}({MESSAGE_FTS}) VALUES ('rebuild')",
    f"DELETE FROM {TITLE_FTS}",
    f"INSERT INTO {TITLE_FTS}(title, session_key) SELECT title, key FROM {SESSION_TABLE} WHERE title != ''",
]


def install(connection: Any) -> None:
    """Create the indexes (and on SQLite the triggers), indexing the rows already there."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            for sql in PG_INSTALL:
                cursor.execute(sql)
        elif connection.vendor == "sqlite":
            for sql in [*SQLITE_TABLES, *SQLITE_TRIGGERS.values(), *SQLITE_REBUILD]:
                cursor.execute(sql)


def uninstall(connection: Any) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            for sql in PG_UNINSTALL:
                cursor.execute(sql)
        elif connection.vendor == "sqlite":
            for name in SQLITE_TRIGGERS:
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}")
            for table in (MESSAGE_FTS, TITLE_FTS):
                cursor.execute(f"DROP TABLE IF EXISTS {table}")


def ensure_sqlite(connection: Any) -> bool:
    """Put back missing triggers (a table rebuilt by a later migration loses them) and re-index, since
    writes may have gone by unindexed meanwhile. Returns whether anything was missing. One catalogue
    query when all is well."""
    with connection.cursor() as cursor:
        placeholders = ", ".join(["%s"] * len(SQLITE_TRIGGERS))
        cursor.execute(
            f"SELECT name FROM sqlite_master WHERE type = 'trigger' AND name IN ({placeholders})", list(SQLITE_TRIGGERS)
        )
        present = {row[0] for row in cursor.fetchall()}
        if len(present) == len(SQLITE_TRIGGERS):
            return False
        for name, sql in SQLITE_TRIGGERS.items():
            if name not in present:
                cursor.execute(sql)
        for sql in SQLITE_REBUILD:
            cursor.execute(sql)
    return True
