"""Statements as fingerprints: the shape of a statement with every literal masked, so the evidence
of an incident can say "UPDATE task_run SET state = ? WHERE id = $1" without ever carrying a
password, a token or a row's data.

PostgreSQL's own scanner (libpg_query through pglast) splits the text into tokens; only tokens
known to be structure (keywords, identifiers, operators, punctuation, $n parameters) keep their
text, and everything else (string, number, bit and dollar-quoted constants, and any token this
module does not know) becomes `?`. Comments are dropped: they can hold anything. Values given to
SET (and ALTER ... SET) lose their identifiers too, since `SET x.password = hunter2` is legal.

Text cut at track_activity_query_size can end inside a literal or comment, where the scanner
fails: from that point on everything is masked. Anything else that goes wrong gives a fixed
marker, never the raw text. pglast is imported on first use, so an exporter started with
--no-statements never loads it, and one where it cannot be imported still runs.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator, Sequence
from typing import Any

MAX_LENGTH = 256  # characters of a fingerprint; a longer one is cut and ends with "…"
MASK = "?"
CUT = "…"
UNAVAILABLE = "(statement not shown: the SQL tokenizer pglast is not available)"
UNREADABLE = "(statement not shown: it could not be tokenized)"
INSUFFICIENT_PRIVILEGE = "<insufficient privilege>"  # what pg_stat_activity shows without it

# token names of libpg_query's scanner whose text is structure, not data
_STRUCTURE = frozenset({"IDENT", "UIDENT", "PARAM", "Op", "TYPECAST", "DOT_DOT", "COLON_EQUALS",
                        "EQUALS_GREATER", "LESS_EQUALS", "GREATER_EQUALS", "NOT_EQUALS"})
_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_SET_STATEMENTS = frozenset({"SET", "ALTER", "RESET"})
_WHITESPACE = re.compile(r"\s+")


class _Unavailable(Exception):
    pass


_parser: Any = None


def _pglast() -> Any:
    """pglast's parser module, imported on first use."""
    global _parser
    if _parser is None:
        try:
            from pglast import parser  # lazily: --no-statements never needs it
        except Exception as exc:  # ImportError, or a broken binary wheel (OSError)
            raise _Unavailable from exc
        _parser = parser
    return _parser


def available() -> bool:
    """Whether pglast is installed, without importing it (3.7 MB, loaded at the first statement
    an incident shows): a wheel that is installed but broken is found then, and its statements
    show as the fixed marker."""
    if _parser is not None:
        return True
    try:
        return importlib.util.find_spec("pglast") is not None
    except (ImportError, ValueError):
        return False


def fingerprint(text: str | None, max_length: int = MAX_LENGTH) -> str:
    """The statement with every literal masked and comments dropped, at most max_length
    characters. Never raises, never returns the raw text."""
    if not text:
        return ""
    if text.strip() == INSUFFICIENT_PRIVILEGE:
        return INSUFFICIENT_PRIVILEGE
    # bytes that were not UTF-8 arrive as U+FFFD or lone surrogates: make it encodable first
    text = text.encode("utf-8", "replace").decode("utf-8")
    try:
        tokens, cut = _tokens(_pglast(), text)
        shape = _render(text, tokens, cut)
    except _Unavailable:
        return UNAVAILABLE
    except Exception:  # a scanner failure must not become a raw statement or a failed poll
        return UNREADABLE
    return _bounded(shape, max_length)


def _tokens(parser: Any, text: str) -> tuple[Sequence[Any], bool]:
    """The tokens, and whether the text ended inside something unterminated (a literal, a
    quoted identifier, a comment: text cut at track_activity_query_size), which is then left
    out and masked. The scanner says where the unterminated thing starts."""
    try:
        return list(parser.scan(text)), False
    except parser.ParseError as exc:
        location = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        if not 0 < location < len(text):
            return [], True
        # a second failure propagates: UNREADABLE, never the raw text
        return list(parser.scan(text[:location])), True


def _render(text: str, tokens: Sequence[Any], cut: bool) -> str:
    """The shown tokens, one space where the statement had whitespace or a comment."""
    parts: list[str] = []
    previous_end = -1
    gap = False
    for token, shown in _shown(text, tokens):
        gap = gap or token.start > previous_end + 1
        previous_end = token.end
        if shown is None:  # a comment: it separates, and says nothing
            gap = True
            continue
        if parts and gap:
            parts.append(" ")
        parts.append(shown)
        gap = False
    if cut:
        parts.append((" " if parts else "") + MASK + CUT)
    return _collapse_lists("".join(parts))


def _shown(text: str, tokens: Sequence[Any]) -> Iterator[tuple[Any, str | None]]:
    """Each token with what is shown of it (None for a comment)."""
    statement_start = True
    masking_values = False  # inside the value of a SET: identifiers are data there
    set_statement = False
    for token in tokens:
        name, kind = token.name, token.kind
        raw = text[token.start:token.end + 1]
        if name in _COMMENTS:
            yield token, None
            continue
        if raw == ";":
            statement_start, masking_values, set_statement = True, False, False
            yield token, raw
            continue
        if statement_start:
            set_statement = raw.upper() in _SET_STATEMENTS
            statement_start = False
        if set_statement and (raw == "=" or raw.upper() == "TO"):
            masking_values = True
            yield token, raw
            continue
        if kind != "NO_KEYWORD":  # a keyword, as written (it may be a column's name)
            yield token, MASK if masking_values else raw
        elif name in _STRUCTURE or name.startswith("ASCII_"):
            yield token, MASK if masking_values and name in ("IDENT", "UIDENT") else raw
        else:
            yield token, MASK


_LIST = re.compile(r"(?:\?|\$\d+)(?:\s*,\s*(?:\?|\$\d+)){2,}")


def _collapse_lists(shape: str) -> str:
    """IN ($1, $2, ..., $500) and long VALUES lists: the first value and an ellipsis."""
    return _LIST.sub(lambda m: m.group(0).split(",")[0] + ", " + CUT, shape)


def _bounded(shape: str, max_length: int) -> str:
    shape = "".join(c if c.isprintable() else " " for c in shape)
    shape = _WHITESPACE.sub(" ", shape).strip()
    if len(shape) > max_length:
        shape = shape[:max_length - 1].rstrip() + CUT
    return shape
