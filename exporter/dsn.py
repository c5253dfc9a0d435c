"""libpq connection strings: parse, name and redact them.

Parsing is libpq's (exporter/conninfo.py, held by a test to psycopg's conninfo_to_dict, which
calls libpq), so a DSN means here exactly what it means to psql. asyncpg only reads URIs, so
key/value DSNs are turned into one.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus, urlencode

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


# Values libpq (18, psycopg's) and asyncpg (0.30+) both accept; anything else fails every
# connection attempt, so it is refused at startup. Exact spellings: libpq compares with strcmp.
_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby",
                             "prefer-standby"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "load_balance_hosts": ("disable", "random"),
    "sslcertmode": ("disable", "allow", "require"),
    "sslnegotiation": ("postgres", "direct"),
    # asyncpg looks these up in ssl.TLSVersion, so its spelling only (libpq ignores case)
    "ssl_min_protocol_version": ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
    "ssl_max_protocol_version": ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
}
# libpq's integer keywords (pqParseIntParam: an optional sign, digits, spaces around)
_INTEGERS = ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
             "keepalives_count", "tcp_user_timeout")


class DSNError(ValueError):
    """A DSN that libpq would refuse; the message never contains the password."""


@dataclass(frozen=True)
class Target:
    name: str
    params: dict[str, str] = field(repr=False)  # libpq keywords, password included

    @property
    def password(self) -> str | None:
        return self.params.get("password")

    def secrets(self) -> list[str | None]:
        """What no error may show: the password and the client key's passphrase."""
        return [self.params.get("password"), self.params.get("sslpassword")]

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
        if "port" in query:  # libpq's empty entry is the default port; asyncpg's int() fails
            query["port"] = ",".join(port.strip() or "5432" for port in query["port"].split(","))
        query.update({k: v for k, v in p.items() if k in _ASYNCPG_QUERY_KEYS})
        path = quote(p.get("dbname", ""), safe="")
        return f"postgresql://{auth}/{path}" + (f"?{urlencode(query)}" if query else "")


def parse_target(entry: str, what: str) -> Target:
    """One DSN entry (`name=URI`, a URI or a key/value string) into a named target. Errors
    name the setting and the problem, never a value: a DSN that does not parse may have been
    cut inside its password."""
    match = _NAMED_URI.match(entry)
    name, dsn = (match["name"], match["dsn"]) if match else (None, entry.strip())
    if not dsn:
        raise DSNError(f"{what}: empty DSN")
    try:
        params = parse(dsn)
    except ConninfoError as exc:
        raise DSNError(f"{what}: invalid DSN: {_first_line(exc, params_of_secret(dsn))}") from None
    problem = check_values(params)
    if problem:
        raise DSNError(f"{what}: invalid DSN: {problem}")
    target = Target(name or "", params)
    name = name or _default_name(target)
    if not _TARGET_NAME.match(name):
        # a default name is the host, port and database: not shown, a '/' or '@' in it is
        # most likely a password's, cut there
        raise DSNError(f"{what}: cannot name the target after its host, port and database "
                       "(in a URI, write a '/', '@' or '?' inside the password "
                       "percent-encoded: %2F %40 %3F); or name it: name=postgresql://...")
    return Target(name, params)


def check_values(params: dict[str, str]) -> str:
    """The first value that no driver can connect with, as a message naming its keyword (never
    the value); "" when there is none."""
    hosts = params.get("host", "").split(",")
    ports = params.get("port", "").split(",")
    if not all(re.fullmatch(r"\s*\d{1,5}\s*", p) and 0 < int(p) < 65536
               for p in ports if p.strip()):
        return "port must be a number from 1 to 65535"
    if len(ports) > 1 and len(ports) != len(hosts):
        return f"{len(ports)} ports for {len(hosts)} hosts (give one port, or one per host)"
    if "hostaddr" in params:
        addrs = params["hostaddr"].split(",")
        if not all(_is_ip(a) for a in addrs if a.strip()):
            return "hostaddr must be IP addresses (a name goes in host)"
        if "host" in params and len(addrs) != len(hosts):
            return f"{len(addrs)} hostaddr for {len(hosts)} hosts (one per host)"
    for key, choices in _CHOICES.items():
        if key in params and params[key] not in choices:
            return f"{key} must be one of {', '.join(choices)}"
    for key in _INTEGERS:
        if key in params and not re.fullmatch(r"\s*[-+]?\d{1,9}\s*", params[key]):
            return f"{key} must be a whole number"
    return ""


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip())
    except ValueError:
        return False
    return True


def parse_targets(value: str, what: str) -> list[Target]:
    """One or more DSN entries separated by newlines or ';'. Names must be unique."""
    entries = [e for e in re.split(r"[;\n]", value) if e.strip()]
    if len(entries) > 1:
        # a ';' inside a password splits the DSN there: say so, by position, never the text
        targets = [parse_target(entry, f"{what}: part {i} of {len(entries)} (';' separates "
                                "DSNs: a ';' inside a password goes in a URI, as %3B)")
                   for i, entry in enumerate(entries, start=1)]
    else:
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


# A secret this short is redacted only where it stands alone: a header value "1" must not
# turn "HTTP 401" into "HTTP 4***0***".
_SHORT = 4


def secret_forms(secret: str) -> set[str]:
    """The ways an error may spell a secret: as it is, escaped (Python's repr of the text or of
    its bytes, as h11's "Illegal header value b'...\\n...'" does; JSON; unicode_escape),
    percent-encoded (a URL, a form) and base64 (a Basic Authorization header)."""
    if not secret:
        return set()
    data = secret.encode()
    forms = {secret, repr(secret)[1:-1], repr(data)[2:-1], json.dumps(secret)[1:-1],
             secret.encode("unicode_escape").decode("ascii"), quote(secret, safe=""),
             quote(secret), quote_plus(secret), base64.b64encode(data).decode("ascii")}
    return {form for form in forms if form}


def redact(text: str, secrets: Sequence[str | None]) -> str:
    """Replace every known secret in a message, in any of its forms, with ***."""
    forms = sorted({form for s in secrets if s for form in secret_forms(s)}, key=len,
                   reverse=True)  # longest first: a form inside another is not left half done
    for form in forms:
        if len(form) >= _SHORT:
            text = text.replace(form, "***")
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])", "***", text)
    return text
