"""Statement fingerprints: every literal masked, whatever the text, and never the raw text."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exporter.incidents import fingerprint as fp
from exporter.incidents.fingerprint import CUT, MAX_LENGTH, UNAVAILABLE, UNREADABLE, fingerprint


@pytest.mark.parametrize(("sql", "expected"), [
    # Prefect's own statements are parameterised: the shape is the statement
    ("UPDATE deployment SET last_polled=$1::TIMESTAMP WITH TIME ZONE WHERE deployment.id IN "
     "($2::UUID)",
     "UPDATE deployment SET last_polled=$1::TIMESTAMP WITH TIME ZONE WHERE deployment.id IN "
     "($2::UUID)"),
    ("INSERT INTO task_run (id, name, state_type) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
     "INSERT INTO task_run (id, name, state_type) VALUES ($1, …) ON CONFLICT DO NOTHING"),
    # literals of every kind
    ("UPDATE task_run SET state = 'RUNNING', n = 3, f = 1.5e3 WHERE id = 42",
     "UPDATE task_run SET state = ?, n = ?, f = ? WHERE id = ?"),
    ("SELECT E'it\\'s', U&'d\\0061t' || B'101', X'1F' + 0x1F - .5",
     "SELECT ?, ? || ?, ? + ? - ?"),
    ("SELECT $$dollar 'quoted'$$, $tag$ with $$ inside $tag$", "SELECT ?, ?"),
    ("ALTER ROLE prefect PASSWORD 'hunter2'", "ALTER ROLE prefect PASSWORD ?"),
    ("CREATE USER MAPPING FOR u SERVER s OPTIONS (user 'x', password 'hunter2')",
     "CREATE USER MAPPING FOR u SERVER s OPTIONS (user ?, password ?)"),
    # SET takes identifiers as values: data there
    ("SET my.password = hunter2", "SET my.password = ?"),
    ("SET search_path TO prefect, public", "SET search_path TO ?, ?"),
    ("ALTER ROLE prefect SET statement_timeout = '60s'",
     "ALTER ROLE prefect SET statement_timeout = ?"),
    # comments say anything and are dropped; they still separate
    ("SELECT a/* password=hunter2 */FROM t -- token abc\nWHERE b = $1",
     "SELECT a FROM t WHERE b = $1"),
    ("/* traceparent='00-abc' */ SELECT 1", "SELECT ?"),
    # whitespace collapsed, formatting kept
    ("SELECT\n\tcount(*)\n  FROM   flow_run", "SELECT count(*) FROM flow_run"),
    # long lists collapse
    ("DELETE FROM log WHERE id IN (1, 2, 3, 4, 5, 6)", "DELETE FROM log WHERE id IN (?, …)"),
    ('SELECT "Quoted Id", U&"x" FROM "My Table"', 'SELECT "Quoted Id", U&"x" FROM "My Table"'),
    ("SELECT a->>'k', a ? 'k' FROM t", "SELECT a->>?, a ? ? FROM t"),
    ("<insufficient privilege>", "<insufficient privilege>"),
    ("", ""),
])
def test_literals_are_masked(sql: str, expected: str) -> None:
    assert fingerprint(sql) == expected


@pytest.mark.parametrize(("sql", "expected"), [
    # cut at track_activity_query_size inside a literal: the scanner fails there
    ("ALTER ROLE prefect PASSWORD 'hunter", "ALTER ROLE prefect PASSWORD ?…"),
    ("UPDATE t SET v = $$half a dollar-quoted sec", "UPDATE t SET v = ?…"),
    ("UPDATE t SET v = E'esc\\'aped secr", "UPDATE t SET v = ?…"),
    ("SELECT 1 /* an unterminated comment with hunter2", "SELECT ? ?…"),
    ('SELECT "half an ident', "SELECT ?…"),
    ("'hunter2", "?…"),
])
def test_text_cut_inside_a_literal_is_masked_to_the_end(sql: str, expected: str) -> None:
    assert fingerprint(sql) == expected


def test_non_utf8_garbage_is_replaced_not_shown_raw() -> None:
    # lenient decoding gives U+FFFD; surrogateescape gives lone surrogates
    for text in ("SELECT 'caf\ufffd\ufffd' FROM t", "SELECT 'caf\udce9\udcff' FROM t"):
        assert fingerprint(text) == "SELECT ? FROM t"
    shown = fingerprint("SELECT x\udcff\x00y FROM t WHERE p = 'hunter2'")
    assert "hunter2" not in shown and shown.isprintable()


def test_length_is_bounded() -> None:
    sql = "SELECT " + ", ".join(f"column_{i}" for i in range(500)) + " FROM t"
    shown = fingerprint(sql)
    assert len(shown) == MAX_LENGTH and shown.endswith(CUT)
    assert len(fingerprint(sql, max_length=40)) == 40


def test_a_failing_scanner_gives_a_marker_not_the_text(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        ParseError = ValueError

        @staticmethod
        def scan(text: str) -> list[object]:
            raise RuntimeError("boom")

    monkeypatch.setattr(fp, "_parser", Broken)
    assert fingerprint("SELECT 'hunter2'") == UNREADABLE


def test_without_pglast_a_marker_and_no_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__
    real_find = fp.importlib.util.find_spec

    def no_pglast(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("pglast"):
            raise ImportError("no pglast")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fp, "_parser", None)
    monkeypatch.setattr(builtins, "__import__", no_pglast)
    assert fingerprint("SELECT 'hunter2'") == UNAVAILABLE
    monkeypatch.setattr(fp.importlib.util, "find_spec",
                        lambda name, *args: None if name == "pglast" else real_find(name))
    assert not fp.available()


def test_available_does_not_import_pglast() -> None:
    """3.7 MB a sidecar carries only once an incident has a statement to show."""
    done = subprocess.run([sys.executable, "-c", "import sys; from exporter.incidents import "
                           "fingerprint; print(fingerprint.available(), 'pglast' in sys.modules)"],
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["True", "False"], done.stderr


def test_hostile_fuzz_never_shows_a_literal() -> None:
    """Random mixtures of quotes, dollars, comments and a secret in quotes: the secret shows
    only where PostgreSQL's own scanner reads it as a name (an earlier quote closed by the
    secret's own opening quote), never from inside a literal or a comment."""
    import random

    from pglast import parser

    rng = random.Random(17)
    pieces = ["'", '"', "$$", "$a$", "/*", "*/", "--", "\n", "E'\\", " ", "SELECT", "x", ";",
              "(", ")", "U&'", "\ufffd", "\udcff", "1", "SET", "="]
    for _ in range(2000):
        body = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        text = f"{body}'hunter2'{body}"
        if "hunter2" in fingerprint(text):
            clean = text.encode("utf-8", "replace").decode("utf-8")
            tokens, _ = fp._tokens(parser, clean)  # what fingerprint() scanned
            names = [clean[t.start:t.end + 1] for t in tokens if t.name == "IDENT"]
            assert any("hunter2" in name for name in names), body
