"""libpq connection strings, parsed as libpq parses them, without loading a driver.

Both forms: `key=value` pairs (values quoted with single quotes, backslash escapes) and URIs
(`postgresql://user:password@host:port,host2/dbname?key=value`, percent-encoded). The result is
what psycopg's conninfo_to_dict() (libpq's PQconninfoParse) returns; a unit test holds the two
to the same answers. Written here so that an exporter watching only PostgreSQL does not load
psycopg (about 11 MB of its memory) just to read its DSN.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

# libpq's keywords (PostgreSQL 15, and the newer ones a newer client would accept)
KEYWORDS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "channel_binding",
    "connect_timeout", "client_encoding", "options", "application_name",
    "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
    "keepalives_count", "tcp_user_timeout", "replication", "gssencmode", "sslmode",
    "requiressl", "sslcompression", "sslcert", "sslkey", "sslpassword", "sslrootcert", "sslcrl",
    "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version",
    "krbsrvname", "gsslib", "service", "target_session_attrs", "load_balance_hosts",
    "sslcertmode", "require_auth", "sslnegotiation", "gssdelegation",
})
_URI_PREFIX = re.compile(r"^postgres(?:ql)?://")


# `postgresql:/...`, `postgresql//...`: a URI with its "://" mistyped (libpq reads it as
# key/value pairs and refuses it; the message should say what was meant)
_ALMOST_URI = re.compile(r"^\s*postgres(?:ql)?\W")


class ConninfoError(ValueError):
    """A connection string libpq would refuse. The message never quotes the string: a word
    that libpq cannot read may be a piece of the password (an unquoted space, an unencoded
    '/' or ';' cut it there)."""


def parse(dsn: str) -> dict[str, str]:
    """The keywords of a connection string, as libpq reads them."""
    if _URI_PREFIX.match(dsn):
        params = _parse_uri(dsn)
    elif _ALMOST_URI.match(dsn):
        raise ConninfoError("a URI must start with postgresql:// (or postgres://)")
    else:
        params = _parse_pairs(dsn)
    unknown = sorted(set(params) - KEYWORDS)
    if unknown:
        import difflib  # imported here: only a DSN with an unknown keyword needs it

        # named only when it is a near miss of a keyword: the word may be part of a password
        near = difflib.get_close_matches(unknown[0], KEYWORDS, n=1)
        hint = f' (did you mean "{near[0]}"?)' if near else ""
        raise ConninfoError(f"a keyword libpq does not know{hint}")
    return params


def _parse_pairs(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return params
        start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text[i] != "=":
            raise ConninfoError('a word without "=" (key=value pairs: quote a value that holds '
                                "a space, password='a b'; a URI starts with postgresql://)")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        value, i = _quoted(text, i + 1) if i < n and text[i] == "'" else _bare(text, i)
        params[key] = value


def _bare(text: str, i: int) -> tuple[str, int]:
    out = []
    while i < len(text) and not text[i].isspace():
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out), i


def _quoted(text: str, i: int) -> tuple[str, int]:
    out = []
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif text[i] == "'":
            return "".join(out), i + 1
        else:
            out.append(text[i])
            i += 1
    raise ConninfoError("unterminated quoted string in connection info string")


def _decode(part: str) -> str:
    if re.search(r"%(?![0-9A-Fa-f]{2})", part):
        raise ConninfoError('invalid percent-encoding in the URI (write a "%" as %25)')
    data = unquote_to_bytes(part)
    if b"\0" in data:
        raise ConninfoError("%00 in the URI (libpq forbids it)")
    return data.decode("utf-8", "replace")


def _parse_uri(uri: str) -> dict[str, str]:
    rest = _URI_PREFIX.sub("", uri, count=1)
    params: dict[str, str] = {}
    authority_end = min((p for p in (rest.find("/"), rest.find("?")) if p >= 0),
                        default=len(rest))
    authority, rest = rest[:authority_end], rest[authority_end:]
    if "@" in authority:
        userinfo, authority = authority.rsplit("@", 1)
        user, colon, password = userinfo.partition(":")
        if user:
            params["user"] = _decode(user)
        if colon and password:
            params["password"] = _decode(password)
    hosts, ports = _hosts(authority)
    if any(hosts):
        params["host"] = ",".join(hosts)
    if any(ports):
        params["port"] = ",".join(ports)
    path, _, query = rest.partition("?")
    if path.startswith("/") and path[1:]:
        params["dbname"] = _decode(path[1:])
    for item in query.split("&") if query else ():
        key, equals, value = item.partition("=")
        if not equals:
            raise ConninfoError('a URI query parameter without "=" (key=value)')
        key, value = _decode(key), _decode(value)
        if key == "ssl" and value == "true":  # libpq's JDBC-compatible spelling
            key, value = "sslmode", "require"
        params[key] = value
    return params


def _hosts(authority: str) -> tuple[list[str], list[str]]:
    hosts, ports = [], []
    for entry in authority.split(",") if authority else [""]:
        if entry.startswith("["):
            close = entry.find("]")
            if close < 0:
                raise ConninfoError('an IPv6 host in the URI without its closing "]"')
            host, after = entry[1:close], entry[close + 1:]
            if after and not after.startswith(":"):
                raise ConninfoError('an IPv6 host in the URI followed by something other '
                                    'than ":port"')
            port = after[1:]
        else:
            host, _, port = entry.partition(":")
        hosts.append(_decode(host))
        ports.append(_decode(port))
    return hosts, ports
