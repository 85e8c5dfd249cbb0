"""The store's SQL is written once, in SQLite's words; `postgres(sql)` says it in PostgreSQL's.

What differs is small and mechanical: parameters (`?` and `:name` become psycopg's `%s` and
`%(name)s`, a literal `%` doubles; a parameter only tested for NULL is given a type, which the server,
binding it, could not infer), `group_concat` is `string_agg`, a text's size in bytes is
`octet_length`, and a row lock written as a comment (`/*FOR UPDATE SKIP LOCKED*/`, which SQLite, with its
one writer, has no need of) is said. The rest is SQL both say alike (upserts are `ON CONFLICT`, subqueries are named): the
PostgreSQL schema gives the tables SQLite's implicit `rowid` as a real column where a query orders
by it, and a `json_extract` function for the paths the queries use. A test explains every named query
on both.
"""

from __future__ import annotations

import re
from functools import lru_cache

_BYTES = re.compile(r"length\(CAST\((.+?) AS BLOB\)\)")
_LOCKING = re.compile(r"/\*(FOR (?:UPDATE|SHARE)(?: SKIP LOCKED)?)\*/")
_NULL_TEST = re.compile(r"\s+IS\s+(NOT\s+)?NULL\b", re.IGNORECASE)


@lru_cache(maxsize=1024)
def postgres(sql: str) -> str:
    """`sql` (SQLite's words, `?` or `:name` parameters) in PostgreSQL's words with psycopg's parameters."""
    sql = _BYTES.sub(r"octet_length(\1)", sql)
    sql = _LOCKING.sub(r"\1", sql)
    sql = re.sub(r"\bgroup_concat\(", "string_agg(", sql)
    return _parameters(sql)


def _parameters(sql: str) -> str:
    """`?` -> `%s`, `:name` -> `%(name)s`, `%` -> `%%`, outside quoted strings and identifiers."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == c:
                    if end + 1 < n and sql[end + 1] == c:  # a doubled quote inside the string
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i:end + 1].replace("%", "%%"))
            i = end + 1
        elif c == "?":
            out.append("%s" + _typed(sql, i + 1))
            i += 1
        elif c == ":" and i + 1 < n and (sql[i + 1].isalpha() or sql[i + 1] == "_") and (i == 0 or sql[i - 1] != ":"):
            end = i + 1
            while end < n and (sql[end].isalnum() or sql[end] == "_"):
                end += 1
            out.append(f"%({sql[i + 1:end]})s" + _typed(sql, end))
            i = end
        elif c == "%":
            out.append("%%")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _typed(sql: str, after: int) -> str:
    """A type for a parameter the server could not otherwise infer: one only tested for NULL (its
    value's type is sent with it when it has one; text when it is None or a string)."""
    return "::text" if _NULL_TEST.match(sql, after) else ""
