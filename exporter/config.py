"""Configuration: command-line flags over environment variables over an optional TOML file.

Every setting has one key; its environment variable is PREFECT_PG_EXPORTER_<KEY>, its flag
--<key-with-dashes> and its file key <key>. Settings every Prometheus exporter has also take the
exporter toolkit's spelling of the flag (--web.listen-address, --log.level, ...). A setting has
one value: two flags that give it different values are an error. Any DSN setting can instead be
read from a file named by <KEY>_FILE (for mounted secrets). Anything malformed raises
ConfigError with a one-line message; the CLI prints it and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exporter.dsn import DSNError, Target, parse_targets
from exporter.redis.target import RedisTarget, RedisURLError, parse_redis_targets
from exporter.thresholds import parse_overrides, split_items
from exporter.webconfig import WebConfig, WebConfigError, load_web_config

ENV_PREFIX = "PREFECT_PG_EXPORTER_"

DEFAULT_POLL_TIMEOUT_SECONDS = 10.0  # or the interval, when that is shorter

# Prefect's tables that grow fastest and churn most (events and event_resources: tens to
# hundreds of GB where retention lags)
DEFAULT_HOT_TABLES = ("flow_run", "task_run", "flow_run_state", "task_run_state", "events",
                      "event_resources", "log", "artifact")


class ConfigError(ValueError):
    """A configuration problem, worded for the person who made it."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PrefectAuth:
    api_key: str | None = None  # bearer (Prefect Cloud)
    auth_string: str | None = None  # "user:password", basic auth of a self-hosted server
    # for the startup log, never the values: the setting the credential came from, and the
    # one also set but not sent (Prefect's client sends one: the auth string, from 3.4.1)
    origin: str = ""
    unused: str = ""

    def secrets(self) -> list[str | None]:
        password = self.auth_string.partition(":")[2] if self.auth_string else None
        return [self.api_key, self.auth_string, password]



@dataclass(frozen=True)
class PrefectTarget:
    name: str
    api_url: str
    auth: PrefectAuth = field(repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    verify: bool | str = True  # False: no TLS verification; a path: that CA bundle
    # names of PREFECT_CLIENT_CUSTOM_HEADERS dropped (User-Agent, CSRF), for the startup log
    ignored_headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    postgres_targets: tuple[Target, ...] = ()
    pgbouncer_targets: tuple[Target, ...] = ()
    prefect_targets: tuple[PrefectTarget, ...] = ()
    redis_targets: tuple[RedisTarget, ...] = ()
    redis_consumer_idle_seconds: float = 60.0
    prefect_upcoming_horizon_seconds: float = 3600.0
    prefect_max_concurrent_requests: int = 4
    stuck_run_seconds: float = 3600.0
    heartbeat_timeout_seconds: float = 600.0
    outcome_window_seconds: float = 3600.0
    listen: Listen = Listen("0.0.0.0", 10816)
    telemetry_path: str = "/metrics"
    poll_interval_seconds: float = 15.0
    poll_timeout_seconds: float = DEFAULT_POLL_TIMEOUT_SECONDS
    log_level: str = "info"
    log_format: str = "auto"
    label_top_n: int = 20
    top_transactions: int = 5
    top_statements: int = 10  # pg_stat_statements' slowest, by total time (0 = not read)
    hot_tables: tuple[str, ...] = DEFAULT_HOT_TABLES
    no_statements: bool = False  # incidents without the sessions' (masked) statements
    recent_incidents: int = 50  # ended incidents kept in memory for /incidents and /
    state_dir: str | None = None  # incidents kept on disk across restarts (None: memory only)
    # threshold overrides (exporter/thresholds.py): the diagnosis and the findings metric use
    # them, as the rules generated with the same --set do
    thresholds: Mapping[str, float] = field(default_factory=dict)
    web: WebConfig = field(default_factory=WebConfig)

    @property
    def sources(self) -> tuple[str, ...]:
        """The kinds of target configured."""
        configured = (("postgres", self.postgres_targets), ("pgbouncer", self.pgbouncer_targets),
                      ("prefect", self.prefect_targets), ("redis", self.redis_targets))
        return tuple(kind for kind, targets in configured if targets)

    @property
    def statement_timeout_ms(self) -> int:
        """Server-side limit for the exporter's own queries: below the poll timeout, so the
        server cancels a slow query before the client gives up on the connection."""
        return max(100, int(self.poll_timeout_seconds * 800))


# ---- value parsers: each takes the raw string and returns the value or raises ValueError ----

# Durations above this overflow datetime arithmetic (now - 1e300 s) and fail every poll.
MAX_SECONDS = 10 * 366 * 86400.0
# Polling faster than this is never useful and hurts a struggling server: 0.01 s opened 169
# sessions in 4 s (issue 22). The poll timeout has the same floor (a shorter one fails polls
# that are merely slow, and reconnects).
MIN_POLL_SECONDS = 1.0


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    if value > MAX_SECONDS:
        raise ValueError(f"must be at most {MAX_SECONDS:.0f} seconds (ten years)")
    return value


def _poll_seconds(raw: str) -> float:
    value = _positive_float(raw)
    if value < MIN_POLL_SECONDS:
        raise ValueError(f"must be at least {MIN_POLL_SECONDS:g} second: polling faster only "
                         "adds load to the servers watched")
    return value


def _non_negative_int(raw: str) -> int:
    if not re.fullmatch(r"\s*\d+\s*", raw):
        raise ValueError("must be a whole number >= 0")
    return int(raw)


def _positive_int(raw: str) -> int:
    value = _non_negative_int(raw)
    if value < 1:
        raise ValueError("must be a whole number >= 1")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _log_level(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("debug", "info", "warn", "warning", "error"):
        raise ValueError("must be one of debug, info, warn (or warning), error")
    return "warning" if value == "warn" else value  # warn: the exporter toolkit's spelling


def _telemetry_path(raw: str) -> str:
    path = raw.strip()
    if not re.fullmatch(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*", path):
        raise ValueError("must be a URL path starting with /, e.g. /metrics")
    if path in ("/", "/healthz", "/readyz", "/probe", "/incidents", "/statements"):
        raise ValueError("must not be /, /healthz, /readyz, /probe, /incidents or /statements: "
                         "those serve the landing page, the health checks, the per-target "
                         "metrics, the recent incidents and the slowest statements")
    return path


def _listen(raw: str) -> Listen:
    match = re.fullmatch(r"\s*(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\s]*)):(?P<port>\d{1,5})\s*", raw)
    if not match or not 0 <= int(match["port"]) < 65536:
        raise ValueError("must be host:port, e.g. 0.0.0.0:10816, :10816 or [::1]:10816 "
                         "(port 0: any free port)")
    return Listen(match["v6"] or match["host"] or "0.0.0.0", int(match["port"]))


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


_URL = re.compile(r"^(?:(?P<name>[A-Za-z0-9_.:-]+)=)?(?P<url>https?://[^/\s?#]+(?:/[^\s]*)?)$")


def _prefect_urls(raw: str) -> tuple[tuple[str, str], ...]:
    """One or more APIs separated by ';' (or newlines), each optionally name=URL, as the DSN
    settings: a ';' is never part of a URL here, so `http://h/api;v=1` is refused, not taken
    as one URL."""
    parts = [p for p in re.split(r"[;\n]", raw) if p.strip()]
    if len(parts) <= 1:
        return (_prefect_url(raw.strip(" ;\n")),)
    urls = []
    for i, part in enumerate(parts, start=1):
        try:
            urls.append(_prefect_url(part))
        except ValueError as exc:
            raise ValueError(f"part {i} of {len(parts)} (';' separates APIs: name=URL;name=URL; "
                             f"write a ';' inside a URL as %3B) {exc}") from None
    names = [name for name, _ in urls]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"target names must be unique, repeated: {', '.join(repeated)} "
                         "(name them with name=URL)")
    return tuple(urls)


def _prefect_url(raw: str) -> tuple[str, str]:
    match = _URL.match(raw.strip())
    if not match or "@" in match["url"].split("/")[2]:
        raise ValueError("must be an http(s) URL of the API, e.g. http://prefect:4200/api or "
                         "https://api.prefect.cloud/api/accounts/<id>/workspaces/<id>, "
                         "optionally named as name=URL; credentials go in the API key or "
                         "auth string settings")
    if "?" in match["url"] or "#" in match["url"]:
        # endpoints are appended to the URL: /api?token=X would be asked /api?token=X/admin/...
        raise ValueError("must not have a ?query or #fragment: endpoints are appended to its "
                         "path (a token goes in the API key or headers settings)")
    parts = urlsplit(match["url"])
    try:
        port = parts.port
    except ValueError:
        port = 0
    if not parts.hostname or port == 0:  # every request would fail
        raise ValueError("must have a host, and a port from 1 to 65535 when it has one")
    url = match["url"].rstrip("/")
    host = url.split("/")[2]
    return match["name"] or host, url


# Headers the client manages itself, refused in custom headers as Prefect's client refuses them
# (prefect/client/base.py): the CSRF pair would break the token logic.
PROTECTED_HEADERS = ("user-agent", "prefect-csrf-token", "prefect-csrf-client")


def _json_headers(raw: str) -> dict[str, str]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError('must be a JSON object, e.g. {"X-Team": "data"}') from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError('must be a JSON object of strings, e.g. {"X-Team": "data"}')
    return data


def _headers(raw: str) -> dict[str, str]:
    data = _json_headers(raw)
    protected = [k for k in data if k.lower() in PROTECTED_HEADERS]
    if protected:
        raise ValueError(f"{protected[0]} is set by the exporter itself (User-Agent and the "
                         "CSRF headers cannot be overridden)")
    _sendable_headers(data)
    return data


# What an HTTP/1.1 header may hold (RFC 9110, as h11 checks each request): a name is a token;
# a value is visible ASCII, with spaces or tabs only inside. httpx sends ASCII only.
_HEADER_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_HEADER_VALUE = re.compile(r"([\x21-\x7e]([\t\x20-\x7e]*[\x21-\x7e])?)?")


def _sendable_headers(headers: Mapping[str, str]) -> None:
    """ValueError naming the first header httpx would refuse to send: refused at startup, as
    a request would fail every poll (with the value escaped in httpx's error). Never the
    value."""
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError("a header name may hold letters, digits and !#$%&'*+.^_`|~- only")
        if not _HEADER_VALUE.fullmatch(value):
            raise ValueError(f"the value of {name} must be printable ASCII on one line (no "
                             "line break, control or non-ASCII character, no space at the "
                             "ends)")


def _sendable_credentials(key: str | None, auth_string: str | None,
                          origins: Mapping[str, str]) -> None:
    """An API key goes into a header as it is (printable ASCII); an auth string is encoded
    (base64) but a line break or control character in it is a mistake (a file with two
    lines). Refused naming the setting, never the value."""
    if key and not re.fullmatch(r"[\x21-\x7e]+", key):
        raise ConfigError(f"{origins.get('prefect_api_key', 'the Prefect API key')}: must be "
                          "printable ASCII without spaces (it holds a line break, a space, a "
                          "control or a non-ASCII character)")
    if auth_string and re.search(r"[\x00-\x1f\x7f]", auth_string):
        raise ConfigError(f"{origins.get('prefect_api_auth_string', 'the auth string')}: must "
                          "be one line (it holds a line break or a control character)")


def _existing_file(raw: str) -> str:
    if not Path(raw).is_file():
        raise ValueError("no such file")
    return raw


def _state_dir(raw: str) -> str:
    """A directory, created at startup if missing; what cannot be used there (read-only, not a
    database) is a warning at startup, not an error (exporter/incidents/store.py)."""
    if not raw.strip() or "\0" in raw:
        raise ValueError("must be a directory path")
    if Path(raw).exists() and not Path(raw).is_dir():
        raise ValueError("exists and is not a directory")
    return raw


def _web_config(raw: str) -> WebConfig:
    try:
        return load_web_config(raw)
    except WebConfigError as exc:
        raise ValueError(str(exc)) from None


def _name_list(raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n)]
    if bad:
        raise ValueError(f"not a table name: {bad[0]!r}")
    return names


@dataclass(frozen=True)
class Setting:
    key: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = "VALUE"
    secret: bool = False  # may come from <KEY>_FILE; never echoed back
    toolkit_flag: str | None = None  # the exporter toolkit's spelling, accepted beside ours
    flag_value: str | None = None  # the flag takes no value and means this one (--no-statements)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def flags(self) -> tuple[str, ...]:
        return (self.flag, self.toolkit_flag) if self.toolkit_flag else (self.flag,)


SETTINGS: tuple[Setting, ...] = (
    Setting("postgres_dsn", str, "PostgreSQL to watch: libpq URI or key/value DSN; several "
            "separated by ';', each optionally named as name=postgresql://...", "DSN", secret=True),
    Setting("pgbouncer_dsn", str, "PgBouncer admin consoles to watch (database pgbouncer, a "
            "stats_users or admin_users user); several separated by ';', each optionally named "
            "as name=postgresql://...", "DSN", secret=True),
    Setting("prefect_api_url", _prefect_urls, "Prefect API(s) to watch, e.g. "
            "http://prefect:4200/api (default: PREFECT_API_URL); several separated by ';', each "
            "optionally named as name=URL", "URL"),
    Setting("prefect_api_key", str, "bearer API key, Prefect Cloud (default: PREFECT_API_KEY)",
            "KEY", secret=True),
    Setting("prefect_api_auth_string", str, "user:password for a self-hosted server's basic auth "
            "(default: PREFECT_API_AUTH_STRING)", "USER:PASSWORD", secret=True),
    Setting("prefect_api_headers", _headers, "extra HTTP headers for the Prefect API, as a JSON "
            "object; merged over PREFECT_CLIENT_CUSTOM_HEADERS", "JSON"),
    Setting("prefect_api_ca_file", _existing_file, "CA bundle to verify the Prefect API's TLS "
            "certificate (default: PREFECT_API_SSL_CERT_FILE)", "PATH"),
    Setting("prefect_api_tls_insecure_skip_verify", _boolean, "do not verify the Prefect API's "
            "TLS certificate (default: PREFECT_API_TLS_INSECURE_SKIP_VERIFY)", "BOOL"),
    Setting("redis_url", str, "Redis to watch (Prefect's messaging, Docket): redis://[user:"
            "password@]host:port/db, rediss://... or redis+sentinel://host:26379/service/db; "
            "several separated by ';', each optionally named as name=redis://...", "URL",
            secret=True),
    Setting("redis_consumer_idle_seconds", _positive_float, "a stream consumer idle longer "
            "than this no longer counts as active", "SECONDS"),
    Setting("prefect_upcoming_horizon_seconds", _positive_float,
            "how far ahead a SCHEDULED run counts as upcoming", "SECONDS"),
    Setting("prefect_max_concurrent_requests", _positive_int,
            "Prefect API requests in flight at once per poll", "N"),
    Setting("stuck_run_seconds", _positive_float, "a flow run PENDING, RUNNING, CANCELLING or "
            "PAUSED for longer than this counts as stuck", "SECONDS"),
    Setting("heartbeat_timeout_seconds", _positive_float, "a RUNNING flow run whose last "
            "heartbeat is older than this counts as a zombie (Prefect 3.6.22+ sends one every "
            "180 s by default)", "SECONDS"),
    Setting("outcome_window_seconds", _positive_float, "flow runs that ended within this "
            "window are counted by terminal state", "SECONDS"),
    Setting("listen_address", _listen, "HTTP address for the metrics, /healthz, /readyz and /",
            "HOST:PORT", toolkit_flag="--web.listen-address"),
    Setting("telemetry_path", _telemetry_path, "the path the metrics are served on", "PATH",
            toolkit_flag="--web.telemetry-path"),
    Setting("web_config_file", _web_config, "TLS and basic auth for the HTTP endpoints, in the "
            "Prometheus exporter toolkit's web config format", "PATH",
            toolkit_flag="--web.config.file"),
    Setting("poll_interval_seconds", _poll_seconds, "seconds between polls of each source "
            "(at least 1)", "SECONDS"),
    Setting("poll_timeout_seconds", _poll_seconds,
            "a poll slower than this fails (the exporter's own statement_timeout is 0.8 times "
            "it); at least 1; default: 10 or the poll interval, whichever is shorter",
            "SECONDS"),
    Setting("log_level", _log_level, "debug, info, warn (or warning), error", "LEVEL",
            toolkit_flag="--log.level"),
    Setting("log_format", _choice("auto", "json", "logfmt", "console"),
            "json, logfmt, console, or auto (console on a terminal, JSON otherwise)", "FORMAT",
            toolkit_flag="--log.format"),
    Setting("label_top_n", _positive_int, "values kept per label that comes from the database "
            "(application_name, usename, datname, ...); the rest fold into 'other'", "N"),
    Setting("top_transactions", _non_negative_int,
            "oldest transactions exported with pid and holder as labels (0 = off)", "N"),
    Setting("top_statements", _non_negative_int, "pg_stat_statements' statements with the "
            "most execution time, exported by queryid and on /statements (0 = off)", "N"),
    Setting("hot_tables", _name_list, "comma-separated tables whose vacuum state is exported",
            "T1,T2"),
    Setting("no_statements", _boolean, "incidents without the statements of the sessions "
            "involved, and no pg_stat_statements: no query text is read at all (the flag "
            "takes no value)", "BOOL",
            flag_value="true"),
    Setting("recent_incidents", _non_negative_int, "ended incidents kept in memory and listed "
            "on /incidents and / (0 = none)", "N"),
    Setting("state_dir", _state_dir, "directory where incidents are kept across restarts (unset: "
            "memory only)", "PATH"),
)
_BY_KEY = {s.key: s for s in SETTINGS}
_CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG_FILE"
THRESHOLDS_KEY = "thresholds"
THRESHOLDS_ENV = ENV_PREFIX + "THRESHOLDS"
# Prefect's own variables, read when ours are not set: a container that already talks to
# Prefect needs no second copy of its URL and credentials.
PREFECT_FALLBACKS = {
    "prefect_api_url": "PREFECT_API_URL",
    "prefect_api_key": "PREFECT_API_KEY",
    "prefect_api_auth_string": "PREFECT_API_AUTH_STRING",
    "prefect_api_ca_file": "PREFECT_API_SSL_CERT_FILE",
    "prefect_api_tls_insecure_skip_verify": "PREFECT_API_TLS_INSECURE_SKIP_VERIFY",
}
_CREDENTIALS = {"prefect_api_key", "prefect_api_auth_string"}
# Not secrets, but what they hold may be (a token in a header, in a URL): never echoed either
_NOT_ECHOED = frozenset({"prefect_api_url", "prefect_api_headers"})
# Prefect's custom headers (a 3.4.8+ client setting): merged under ours, header by header.
PREFECT_HEADERS_VARIABLE = "PREFECT_CLIENT_CUSTOM_HEADERS"
# Kubernetes injects <SERVICE>_SERVICE_HOST, _SERVICE_PORT[_NAME] and _PORT[_...] for every
# Service in the namespace: a Service named prefect-pg-exporter must not crash the exporter.
_KUBERNETES_SERVICE_LINK = re.compile(
    ENV_PREFIX + r"(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[A-Z0-9_]+)?)$")


def flag_dest(flag: str) -> str:
    """Where argparse puts a flag's values: the setting's key for ours, the flag without its
    dashes for the toolkit's spelling (load() tells them apart)."""
    setting = next((s for s in SETTINGS if s.flag == flag), None)
    return setting.key if setting else flag.removeprefix("--")


def build_parser(prog: str = "prefect-pg-exporter") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config-file", metavar="PATH",
                        help=f"TOML file with the same keys (env: {_CONFIG_FILE_ENV})")
    for s in SETTINGS:
        # append: a flag given twice is seen, not silently the last one (the toolkit repeats
        # --web.listen-address for several addresses; this exporter listens on one)
        if s.flag_value is not None:
            parser.add_argument(s.flag, dest=s.key, action="append_const", const=s.flag_value,
                                help=f"{s.help} (env: {s.env})")
        else:
            parser.add_argument(s.flag, dest=s.key, metavar=s.metavar, action="append",
                                help=f"{s.help} (env: {s.env})")
        if s.toolkit_flag:
            parser.add_argument(s.toolkit_flag, dest=flag_dest(s.toolkit_flag),
                                metavar=s.metavar, action="append",
                                help=f"the exporter toolkit's spelling of {s.flag}")
    parser.add_argument("--set", dest=THRESHOLDS_KEY, action="append", metavar="NAME=VALUE",
                        help="override an alert/diagnosis threshold, as for the rules generator "
                             "(repeatable; python -m exporter.alerting --thresholds lists them; "
                             f"env: {THRESHOLDS_ENV}=name=value,name=value)")
    return parser


FlagValue = str | Sequence[str] | None


def load(flags: Mapping[str, FlagValue], environ: Mapping[str, str] | None = None) -> Config:
    """Merge flags, environment and the optional file into a checked Config. flags: by
    setting key (or flag_dest() of a toolkit spelling), a value or the values given."""
    environ = os.environ if environ is None else environ
    file = _one_value(flags.get("config_file")) or environ.get(_CONFIG_FILE_ENV)
    raw = _from_file(file)
    overrides = _thresholds(raw.pop(THRESHOLDS_KEY, ""), f"config file {file}: thresholds")
    files: dict[str, str] = {}  # settings read from a <KEY>_FILE: that variable, for errors
    raw.update(_from_environ(environ, files))
    overrides.update(_thresholds(raw.pop(THRESHOLDS_KEY, ""), THRESHOLDS_ENV))
    given = _from_flags(flags)
    raw.update(given)
    overrides.update(_thresholds(",".join(_given(flags.get(THRESHOLDS_KEY))), "--set"))
    ours = set(raw)
    origins = {key: _BY_KEY[key].env for key in ours if _BY_KEY[key].secret}
    origins.update({key: variable for key, variable in files.items() if key not in given})
    for key, variable in PREFECT_FALLBACKS.items():
        # credentials come as a pair: one of ours set means none of Prefect's is wanted
        credential_set = key in _CREDENTIALS and ours & _CREDENTIALS
        if key not in ours and not credential_set and environ.get(variable):
            raw[key] = environ[variable]
            origins[key] = variable
    return _build(raw, overrides, origins, environ.get(PREFECT_HEADERS_VARIABLE, ""))


def _thresholds(text: str, where: str) -> dict[str, float]:
    """Threshold overrides, `name=value,name=value`; each layer overrides the one before by
    name (file, then environment, then --set)."""
    try:
        return parse_overrides(split_items(text))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _from_flags(flags: Mapping[str, FlagValue]) -> dict[str, str]:
    """One value per setting from all the flags that set it: the same value given twice (or
    in both spellings) is fine, different ones are refused rather than one silently winning."""
    values: dict[str, str] = {}
    for setting in SETTINGS:
        given = [(flag, value) for flag in setting.flags
                 for value in _given(flags.get(flag_dest(flag)))]
        if not given:
            continue
        (first_flag, first), *others = given
        for flag, value in others:
            if not _same(setting, first, value):
                raise _disagree(setting, (first_flag, first), (flag, value))
        values[setting.key] = first
    return values


def _disagree(setting: Setting, *given: tuple[str, str]) -> ConfigError:
    what = setting.key.replace("_", " ")
    if setting.secret or setting.key in _NOT_ECHOED:  # never echoed back
        return ConfigError(f"{given[0][0]} and {given[1][0]} disagree: give one {what}")
    shown = " and ".join(f"{flag} {value!r}" for flag, value in given)
    return ConfigError(f"{shown} disagree: give one {what}")


def _given(value: FlagValue) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _one_value(value: FlagValue) -> str | None:
    given = _given(value)
    return given[-1] if given else None


def _same(setting: Setting, a: str, b: str) -> bool:
    """Whether two values of a setting mean the same (:9816 and 0.0.0.0:9816, warn and
    warning)."""
    if a.strip() == b.strip():
        return True
    if setting.secret or setting.key == "web_config_file":  # parsing reads files: compare paths
        return False
    try:
        return bool(setting.parse(a) == setting.parse(b))
    except ValueError:
        return False


def _from_environ(environ: Mapping[str, str], files: dict[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    known = {s.env for s in SETTINGS} | {s.env + "_FILE" for s in SETTINGS if s.secret}
    known |= {_CONFIG_FILE_ENV, THRESHOLDS_ENV}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or _KUBERNETES_SERVICE_LINK.match(name):
            continue
        if name not in known:
            raise ConfigError(f"unknown environment variable {name} (see --help)")
        key = name[len(ENV_PREFIX):].lower()
        if key.endswith("_file") and key.removesuffix("_file") in _BY_KEY:
            base = key.removesuffix("_file")
            if (ENV_PREFIX + base.upper()) in environ:
                raise ConfigError(f"set either {name} or {ENV_PREFIX + base.upper()}, not both")
            values[base] = _read_secret_file(name, value)
            files[base] = name
        elif key != "config_file":
            values[key] = value
    return values


def _read_secret_file(variable: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"{variable}: cannot read {path}: {reason}") from None


def _from_file(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    values: dict[str, str] = {}
    for key, value in data.items():
        if key not in _BY_KEY and key != THRESHOLDS_KEY:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
        if isinstance(value, dict):  # a [thresholds] table: name = value
            value = ",".join(f"{name}={number}" for name, number in value.items())
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        values[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return values


def _build(raw: dict[str, str], overrides: Mapping[str, float] | None = None,
           origins: Mapping[str, str] | None = None, prefect_headers: str = "") -> Config:
    values: dict[str, Any] = {"thresholds": dict(overrides or {})}
    for key, text in raw.items():
        setting = _BY_KEY[key]
        if setting.secret:
            continue
        try:
            values[key] = setting.parse(text)
        except ValueError as exc:
            shown = "" if key in _NOT_ECHOED else f"={text!r}"
            name = (origins or {}).get(key, setting.env)  # PREFECT_API_URL, when it came from it
            raise ConfigError(f"{name}{shown}: {exc}") from None
    targets = {kind: _targets(raw, kind, (origins or {}).get(f"{kind}_dsn", ""))
               for kind in ("postgres", "pgbouncer")}
    if "poll_timeout_seconds" not in values:
        # a default follows the interval: setting only a short interval must just work
        interval = values.get("poll_interval_seconds", Config.poll_interval_seconds)
        values["poll_timeout_seconds"] = min(DEFAULT_POLL_TIMEOUT_SECONDS, interval)
    if "listen_address" in values:
        values["listen"] = values.pop("listen_address")
    if "web_config_file" in values:
        values["web"] = values.pop("web_config_file")
    prefect = _prefect_targets(raw, values, origins or {}, prefect_headers)
    config = Config(postgres_targets=targets["postgres"], pgbouncer_targets=targets["pgbouncer"],
                    prefect_targets=prefect, redis_targets=_redis_targets(raw), **values)
    _check(config)
    return config


def _prefect_targets(raw: dict[str, str], values: dict[str, Any], origins: Mapping[str, str],
                     prefect_headers: str) -> tuple[PrefectTarget, ...]:
    """Takes the Prefect connection settings out of values into targets. Credentials, headers
    and TLS settings are the same for every target."""
    named_urls = values.pop("prefect_api_url", ())
    our_headers = values.pop("prefect_api_headers", {})
    ca_file = values.pop("prefect_api_ca_file", None)
    insecure = values.pop("prefect_api_tls_insecure_skip_verify", False)
    key = raw.get("prefect_api_key", "").strip() or None
    auth_string = raw.get("prefect_api_auth_string", "").strip() or None
    if not named_urls:
        if key or auth_string:
            raise ConfigError(f"a Prefect API key or auth string is set but no "
                              f"{ENV_PREFIX}PREFECT_API_URL (or PREFECT_API_URL)")
        return ()
    if auth_string and ":" not in auth_string:
        raise ConfigError(f"{origins.get('prefect_api_auth_string', 'the auth string')} "
                          "must be user:password")
    if ca_file and insecure:
        raise ConfigError("set either a Prefect API CA file or insecure skip verify, not both")
    auth = _auth(key, auth_string, origins)
    _sendable_credentials(auth.api_key, auth.auth_string, origins)  # the one sent
    headers, ignored = _merged_headers(our_headers, prefect_headers)
    verify: bool | str = False if insecure else ca_file or True
    return tuple(PrefectTarget(name, url, auth, headers, verify, ignored)
                 for name, url in named_urls)


def _auth(key: str | None, auth_string: str | None, origins: Mapping[str, str]) -> PrefectAuth:
    """The credential to send. Both set: the auth string, as Prefect's client does from 3.4.1
    (prefect/client/orchestration/__init__.py: "Prioritize auth_string"; before, the key)."""
    if auth_string:
        return PrefectAuth(auth_string=auth_string,
                           origin=origins.get("prefect_api_auth_string", ""),
                           unused=origins.get("prefect_api_key", "") if key else "")
    if key:
        return PrefectAuth(api_key=key, origin=origins.get("prefect_api_key", ""))
    return PrefectAuth()


def _merged_headers(ours: dict[str, str], prefects: str) -> tuple[dict[str, str],
                                                                   tuple[str, ...]]:
    """Prefect's custom headers under ours, header by header (names compared case-blind), and
    the names of Prefect's that are dropped: User-Agent and the CSRF pair, which Prefect's own
    client also ignores (with a warning) rather than refusing to start."""
    if not prefects.strip():
        return ours, ()
    try:
        theirs = _json_headers(prefects)
        _sendable_headers(theirs)
    except ValueError as exc:
        raise ConfigError(f"{PREFECT_HEADERS_VARIABLE}: {exc}") from None
    mine = {k.lower() for k in ours}
    ignored = tuple(k for k in theirs if k.lower() in PROTECTED_HEADERS)
    kept = {k: v for k, v in theirs.items()
            if k.lower() not in mine and k.lower() not in PROTECTED_HEADERS}
    return {**kept, **ours}, ignored


def _targets(raw: dict[str, str], kind: str, origin: str) -> tuple[Target, ...]:
    value = raw.get(f"{kind}_dsn", "")
    if not value.strip():
        return ()
    what = origin or f"{ENV_PREFIX}{kind.upper()}_DSN"
    try:
        targets = tuple(parse_targets(value, what))
        for target in targets:  # what the driver cannot take fails every poll: refused now
            _check_driver(kind, target, what)
    except DSNError as exc:
        raise ConfigError(str(exc)) from None
    return targets


def _check_driver(kind: str, target: Target, what: str) -> None:
    if kind == "postgres":
        try:
            target.asyncpg_dsn()  # asyncpg reads fewer keywords than libpq
        except DSNError as exc:
            raise DSNError(f"{what}: {exc}") from None
    elif target.params.get("target_session_attrs", "any") != "any":
        # libpq checks a session with SHOW transaction_read_only, which PgBouncer's admin
        # console refuses ("invalid command"): every connection would fail
        raise DSNError(f"{what}: target {target.name!r}: "
                       "target_session_attrs must be any (PgBouncer's admin console cannot "
                       "answer the check the others make)")


def _redis_targets(raw: dict[str, str]) -> tuple[RedisTarget, ...]:
    value = raw.get("redis_url", "")
    try:
        return parse_redis_targets(value, f"{ENV_PREFIX}REDIS_URL") if value.strip() else ()
    except RedisURLError as exc:
        raise ConfigError(str(exc)) from None


def _check(config: Config) -> None:
    if not config.sources:
        raise ConfigError(f"nothing to watch: set {ENV_PREFIX}POSTGRES_DSN, "
                          f"{ENV_PREFIX}PGBOUNCER_DSN, {ENV_PREFIX}PREFECT_API_URL and/or "
                          f"{ENV_PREFIX}REDIS_URL")
    if config.poll_timeout_seconds > config.poll_interval_seconds:  # both set by the user
        raise ConfigError(
            f"{ENV_PREFIX}POLL_TIMEOUT_SECONDS ({config.poll_timeout_seconds:g}) must not exceed "
            f"{ENV_PREFIX}POLL_INTERVAL_SECONDS ({config.poll_interval_seconds:g})")


def describe(config: Config) -> dict[str, Any]:
    """The effective configuration for logs and the landing page: targets by name, no DSNs."""
    return {
        "postgres_targets": [t.name for t in config.postgres_targets],
        "pgbouncer_targets": [t.name for t in config.pgbouncer_targets],
        "prefect_targets": [t.name for t in config.prefect_targets],
        "redis_targets": [t.name for t in config.redis_targets],
        "listen_address": str(config.listen),
        "telemetry_path": config.telemetry_path,
        "poll_interval_seconds": config.poll_interval_seconds,
        "poll_timeout_seconds": config.poll_timeout_seconds,
        "label_top_n": config.label_top_n,
        "top_transactions": config.top_transactions,
        "top_statements": 0 if config.no_statements else config.top_statements,
        "hot_tables": list(config.hot_tables),
        "statements": not config.no_statements,
        "recent_incidents": config.recent_incidents,
        "state_dir": config.state_dir,
        "thresholds": dict(config.thresholds),
    }


def environment_help(settings: Sequence[Setting] = SETTINGS) -> str:
    """Every variable load() reads, one a line: the settings, then those that are not one."""
    lines = [(s.env, s.help) for s in settings]
    lines += [(s.env + "_FILE", f"a file holding {s.env} (a mounted secret)")
              for s in settings if s.secret]
    lines += [(_CONFIG_FILE_ENV, "TOML file with the same keys (flag: --config-file)"),
              (THRESHOLDS_ENV, "alert/diagnosis threshold overrides, name=value,name=value "
                               "(flag: --set, repeatable)")]
    return "\n".join(f"  {name:<44} {text}" for name, text in lines)
