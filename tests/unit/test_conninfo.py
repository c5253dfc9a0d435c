"""Our libpq connection-string parser gives libpq's answers (psycopg's conninfo_to_dict, which
calls libpq, is the reference: it is installed for the tests and for PgBouncer targets)."""

from __future__ import annotations

import pytest
from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict

from exporter.conninfo import ConninfoError, parse

SAME = [
    "host=db port=5433 dbname=prefect user=mon password=s3cret",
    "host=a port=1 dbname='x y' password='a\\'b'",
    " host = a   port=2 ",
    "host=a\\ b",
    "password='' host=h",
    "application_name=x options='-c statement_timeout=5s' sslmode=verify-full",
    "postgresql://u:p%40ss@h1:5432,h2/db?sslmode=require&application_name=x",
    "postgresql://[::1]:5433/db",
    "postgresql://[2001:db8::1],[::1]:7/db",
    "postgresql:///db?host=/tmp",
    "postgres://h",
    "postgresql://u@/d",
    "postgresql://h:1,:2/d",
    "postgresql://%2Fvar%2Frun%2Fpostgresql/db",
    "postgresql://u@h/d?port=7&connect_timeout=3",
    "postgresql://u:@h/d",
    "postgresql://u:pa:ss@h/d",
    "postgresql://h/d%20b",
    "postgresql://h/?sslmode=disable",
    "postgresql://u@h",
    "postgresql://h?ssl=true",
    "",
]


@pytest.mark.parametrize("dsn", SAME)
def test_parses_as_libpq_does(dsn: str) -> None:
    assert parse(dsn) == conninfo_to_dict(dsn)


@pytest.mark.parametrize("dsn", [
    "dbname=x foo=bar",  # an unknown keyword
    "host",  # no "="
    "password='unterminated",
    "postgresql://h/d?nokey",
    "postgresql://h/%zz",
    "postgresql://[::1/d",
])
def test_refuses_what_libpq_refuses(dsn: str) -> None:
    with pytest.raises(ProgrammingError):
        conninfo_to_dict(dsn)
    with pytest.raises(ConninfoError):
        parse(dsn)
