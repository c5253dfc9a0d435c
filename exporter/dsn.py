"""libpq connection strings: parse, name and redact them.

Parsing is libpq's (exporter/conninfo.py, held by a test to psycopg's conninfo_to_dict, which
calls libpq), so a DSN means here exactly what it means to psql. asyncpg only reads URIs, so
key/value DSNs are turned into one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from exporter.conninfo import ConninfoError, parse

# `name=postgresql://...` names a target; a bare DSN is named after its host, port and database.
_NAMED_URI = re.compile(r"^\s*(?P<name>[A-Za-z0-9_.:-]+)=(?P<dsn>postgres(?:ql)?://.*)$", re.S)
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")

# libpq keywords asyncpg understands in a URI query string. asyncpg treats any other query
# parameter as a server setting, so an unknown keyword must be refused, not passed along.
_ASYNCPG_QUERY_KEYS = {
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "passfile",
    "target_session_attrs", "krbsrvname", "gsslib", "ssl_min_protocol_version",
    "ssl_max_protocol_version",
}
# Keywords the exporter sets itself or that have no effect on it: accepted and dropped.
_IGNORED_KEYS = {"application_name", "connect_timeout", "fallback_application_name",
                 "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
                 "client_encoding"}


class DSNError(ValueError):
    """A DSN that libpq would refuse; the message never contains the password."""


@dataclass(frozen=True)
class Target:
    name: str
    params: dict[str, str] = field(repr=False)  # libpq keywords, password included

    @property
    def password(self) -> str | None:
        return self.params.get("password")

    def redacted(self) -> str:
        """host:port/dbname user=... for messages: never the password."""
        host = self.params.get("host", "localhost")
        port = self.params.get("port", "5432")
        db = self.params.get("dbname", self.params.get("user", ""))
        user = self.params.get("user")
        return f"{host}:{port}/{db}" + (f" user={user}" if user else "")

    def asyncpg_dsn(self) -> str:
        """The same connection as a URI that asyncpg reads (host and port in the query string,
        so that Unix socket directories and multiple hosts survive)."""
        p = self.params
        unsupported = set(p) - _ASYNCPG_QUERY_KEYS - _IGNORED_KEYS - {
            "host", "port", "user", "password", "dbname"}
        if unsupported:
            raise DSNError(
                f"target {self.name!r}: DSN keyword(s) not supported for PostgreSQL: "
                + ", ".join(sorted(unsupported)))
        auth = ""
        if "user" in p:
            auth = quote(p["user"], safe="")
            if "password" in p:
                auth += ":" + quote(p["password"], safe="")
            auth += "@"
        query: dict[str, str] = {k: p[k] for k in ("host", "port") if k in p}
        query.update({k: v for k, v in p.items() if k in _ASYNCPG_QUERY_KEYS})
        path = quote(p.get("dbname", ""), safe="")
        return f"postgresql://{auth}/{path}" + (f"?{urlencode(query)}" if query else "")


def parse_target(entry: str, what: str) -> Target:
    """One DSN entry (`name=URI`, a URI or a key/value string) into a named target."""
    match = _NAMED_URI.match(entry)
    name, dsn = (match["name"], match["dsn"]) if match else (None, entry.strip())
    if not dsn:
        raise DSNError(f"{what}: empty DSN")
    try:
        params = parse(dsn)
    except ConninfoError as exc:
        raise DSNError(f"{what}: invalid DSN: {_first_line(exc, params_of_secret(dsn))}") from None
    target = Target(name or "", params)
    name = name or _default_name(target)
    if not _TARGET_NAME.match(name):
        raise DSNError(f"{what}: target name {name!r} must match {_TARGET_NAME.pattern}")
    return Target(name, params)


def parse_targets(value: str, what: str) -> list[Target]:
    """One or more DSN entries separated by newlines or ';'. Names must be unique."""
    entries = [e for e in re.split(r"[;\n]", value) if e.strip()]
    targets = [parse_target(entry, what) for entry in entries]
    names = [t.name for t in targets]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DSNError(f"{what}: target names must be unique, repeated: {', '.join(duplicated)} "
                       "(name them with name=postgresql://...)")
    return targets


def _default_name(target: Target) -> str:
    host = target.params.get("host", "localhost").split(",")[0]
    if host.startswith("/"):
        host = "socket"
    port = target.params.get("port", "5432").split(",")[0]
    db = target.params.get("dbname", target.params.get("user", ""))
    # a PgBouncer admin console is always database "pgbouncer": its address names it
    return f"{host}:{port}/{db}" if db and db != "pgbouncer" else f"{host}:{port}"


def params_of_secret(dsn: str) -> list[str]:
    """Password-looking values in a DSN libpq refused, so the error can be scrubbed of them."""
    found = re.findall(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)
    found += re.findall(r"://[^:/@]*:([^@/]*)@", dsn)
    return [f.strip("'") for f in found if f]


def _first_line(exc: BaseException, secrets: list[str]) -> str:
    return redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                  secrets)


def redact(text: str, secrets: Sequence[str | None]) -> str:
    """Replace every known secret in a message with ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
