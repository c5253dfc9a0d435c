"""Redis targets: `name=redis://user:password@host:port/db`, several separated by ';', and
the Sentinel form prefect-redis and Docket accept:
`redis+sentinel://[user:password@]host[:port][,host2[:port2]...]/service_name[/db]`
(`rediss+sentinel://` for TLS; `?sentinel_username=...&sentinel_password=...` for the Sentinel
daemons' own auth; members default to port 26379).

Parsed without the driver (the configuration never imports redis-py): the URL is kept whole for
redis-py's `from_url`, and what the exporter shows of it (its name, `redacted()`) never holds
the password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
_NAMED = re.compile(r"^\s*(?P<name>[A-Za-z0-9_.:/-]{1,64})=(?P<url>[a-z+]+://.*)$", re.S)
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")


class RedisURLError(ValueError):
    """A Redis URL the exporter refuses; the message never holds the password."""


@dataclass(frozen=True)
class RedisTarget:
    name: str
    url: str = field(repr=False)  # as given, password included: for redis-py only
    host: str = ""
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # Sentinel: the daemons to ask for the master of `service`
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    tls: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def secrets(self) -> list[str | None]:
        """What to scrub from any message: the password, raw and URL-encoded."""
        raw = self.url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
        return [self.password, raw.partition(":")[2] or None, self.sentinel_password,
                *re.findall(r"sentinel_password=([^&]+)", self.url)]

    def redacted(self) -> str:
        """host:port/db user=... for messages: never the password."""
        user = f" user={self.username}" if self.username else ""
        if self.sentinels:
            members = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel {members} service {self.service}/{self.db}{user}"
        return f"{self.host}:{self.port}/{self.db}{user}"


def parse_redis_target(entry: str, what: str) -> RedisTarget:
    match = _NAMED.match(entry)
    name, url = (match["name"], match["url"].strip()) if match else (None, entry.strip())
    if url.partition("://")[0] in SENTINEL_SCHEMES:
        return _sentinel_target(name, url, what)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RedisURLError(f"{what}: not a Redis URL (redis://[user:password@]host:port/db, "
                            "rediss:// for TLS)") from None
    if parts.scheme not in SCHEMES or (parts.scheme != "unix" and not parts.hostname):
        raise RedisURLError(f"{what}: must be redis://[user:password@]host[:port][/db], "
                            "rediss://... for TLS, redis+sentinel://host:26379/service[/db], "
                            "or unix:///path?db=N; several separated by ';', each optionally "
                            "named as name=redis://...")
    db_text = parts.path.strip("/") if parts.scheme != "unix" else ""
    query_db = re.search(r"(?:^|&)db=([^&]*)", parts.query)
    if query_db:
        db_text = query_db[1]
    if db_text and not db_text.isdigit():
        raise RedisURLError(f"{what}: the database must be a number, e.g. redis://host:6379/1")
    host = parts.hostname or (parts.path if parts.scheme == "unix" else "")
    target = RedisTarget(
        name="", url=url, host=host, port=port or 6379, db=int(db_text or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None)
    name = name or (f"{host}:{target.port}/{target.db}" if parts.scheme != "unix"
                    else f"socket/{target.db}")
    if not _TARGET_NAME.match(name):
        raise RedisURLError(f"{what}: target name {name!r} must match {_TARGET_NAME.pattern}")
    return RedisTarget(name, url, target.host, target.port, target.db, target.username,
                       target.password)


def _sentinel_target(name: str | None, url: str, what: str) -> RedisTarget:
    """The member list is carved off by hand (urlsplit refuses a netloc with several hosts),
    as prefect-redis does."""
    scheme, _, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    auth, _, members_text = netloc.rpartition("@")
    path, _, query = (slash + tail).partition("?")
    segments = [s for s in path.split("/") if s]
    usage = (f"{what}: a Sentinel URL is redis+sentinel://[user:password@]host[:port][,host2"
             "[:port2]]/service_name[/db]")
    try:
        members = tuple(_member(m) for m in members_text.split(",") if m)
    except ValueError:
        raise RedisURLError(usage) from None
    if not members or not 1 <= len(segments) <= 2 or (len(segments) == 2
                                                      and not segments[1].isdigit()):
        raise RedisURLError(usage)
    user, _, password = auth.partition(":")
    options = dict(part.partition("=")[::2] for part in query.split("&") if part)
    db = int(segments[1]) if len(segments) == 2 else 0
    target = RedisTarget(
        name or f"{segments[0]}/{db}", url, members[0][0], members[0][1], db,
        unquote(user) if user else None, unquote(password) if password else None,
        sentinels=members, service=segments[0], tls=scheme.startswith("rediss"),
        sentinel_username=unquote(options["sentinel_username"])
        if options.get("sentinel_username") else None,
        sentinel_password=unquote(options["sentinel_password"])
        if options.get("sentinel_password") else None)
    if not _TARGET_NAME.match(target.name):
        raise RedisURLError(f"{what}: target name {target.name!r} must match "
                            f"{_TARGET_NAME.pattern}")
    return target


def _member(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host or (port and not port.isdigit()) or int(port or SENTINEL_PORT) > 65535:
        raise ValueError(text)
    return host, int(port or SENTINEL_PORT)


def parse_redis_targets(value: str, what: str) -> tuple[RedisTarget, ...]:
    """One or more URLs separated by ';' or newlines. Names must be unique."""
    entries = [e for e in re.split(r"[;\n]", value) if e.strip()]
    targets = tuple(parse_redis_target(e, f"{what} (part {i} of {len(entries)})"
                                       if len(entries) > 1 else what)
                    for i, e in enumerate(entries, start=1))
    names = [t.name for t in targets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RedisURLError(f"{what}: target names must be unique, repeated: "
                            f"{', '.join(repeated)} (name them with name=redis://...)")
    return targets
