"""DSNs: parsed as libpq parses them, named, redacted, and converted for asyncpg."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from exporter.dsn import DSNError, parse_target, parse_targets


def test_key_value_dsn_becomes_an_asyncpg_uri_with_host_and_port_in_the_query() -> None:
    target = parse_target("host=/var/run/postgresql port=5433 dbname=prefect user=mon "
                          "password='p@ss:w/rd;x' sslmode=require", "TEST")
    uri = target.asyncpg_dsn()
    parts = urlsplit(uri)
    assert parts.scheme == "postgresql" and parts.path == "/prefect"
    assert parts.netloc == "mon:p%40ss%3Aw%2Frd%3Bx@"  # every special character escaped
    assert parse_qs(parts.query) == {"host": ["/var/run/postgresql"], "port": ["5433"],
                                     "sslmode": ["require"]}


def test_uri_with_several_hosts_keeps_them_all() -> None:
    target = parse_target("postgresql://u@db1:5432,db2:5433/prefect?target_session_attrs=any",
                          "TEST")
    query = parse_qs(urlsplit(target.asyncpg_dsn()).query)
    assert query["host"] == ["db1,db2"] and query["port"] == ["5432,5433"]
    assert query["target_session_attrs"] == ["any"]
    assert target.name == "db1:5432/prefect"


def test_keywords_the_exporter_sets_itself_are_dropped_unknown_ones_refused() -> None:
    ok = parse_target("host=db dbname=p application_name=theirs connect_timeout=3", "TEST")
    assert "application_name" not in ok.asyncpg_dsn()
    with pytest.raises(DSNError, match="not supported for PostgreSQL: options"):
        parse_target("host=db dbname=p options='-c work_mem=1MB'", "TEST").asyncpg_dsn()


def test_names_and_redaction() -> None:
    named, console = parse_targets("primary=postgresql://u:pw@db/prefect;"
                                   "postgresql://s:pw2@pgb:6432/pgbouncer", "TEST")
    assert (named.name, console.name) == ("primary", "pgb:6432")
    assert named.redacted() == "db:5432/prefect user=u" and "pw" not in named.redacted()
    with pytest.raises(DSNError, match="unique"):
        parse_targets("postgresql://u@db/p;postgresql://v@db/p", "TEST")


def test_the_password_and_the_key_passphrase_are_secrets() -> None:
    target = parse_target("postgresql://u:pw%2Fx@db/p?sslpassword=k%3By&sslkey=/k.pem", "TEST")
    assert target.secrets() == ["pw/x", "k;y"]
    from exporter.dsn import redact

    # as asyncpg's URI spells them (percent-encoded), as well as decoded
    uri = target.asyncpg_dsn()
    assert "pw%2Fx" in uri and "k%3By" in uri
    assert "pw" not in redact(uri, target.secrets()) and "k%3B" not in redact(uri, target.secrets())


def test_an_invalid_dsn_is_refused_without_its_password() -> None:
    with pytest.raises(DSNError) as info:
        parse_target("host=db password='hunter2 port=5432", "TEST")  # unterminated quote
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)
