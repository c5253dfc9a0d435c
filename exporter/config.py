"""Configuration: command-line flags over environment variables over an optional TOML file.

Each source kind declares its own settings and how they become its targets
(exporter/<kind>/config.py, on its SourceKind); this module gathers them with the exporter's
own, in the kinds' order, as the catalogue gathers metric specs, and merges the layers.

Every setting has one key; its environment variable is PREFECT_PG_EXPORTER_<KEY>, its flag
--<key-with-dashes> and its file key <key>. Settings every Prometheus exporter has also take the
exporter toolkit's spelling of the flag (--web.listen-address, --log.level, ...). A setting has
one value: two flags that give it different values are an error. Any DSN setting can instead be
read from a file named by <KEY>_FILE (for mounted secrets). Anything malformed raises
ConfigError with a one-line message; the CLI prints it and exits 2.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.dsn import Target
from exporter.kinds import KINDS
from exporter.prefect.config import PREFECT_FALLBACKS, PrefectTarget
from exporter.redis.target import RedisTarget
from exporter.settingspec import (
    ENV_PREFIX,
    ConfigError,
    Given,
    Setting,
    boolean,
    non_negative_int,
    positive_float,
    positive_int,
)
from exporter.thresholds import parse_overrides, split_items
from exporter.webconfig import WebConfig, WebConfigError, load_web_config

__all__ = ["ENV_PREFIX", "PREFECT_FALLBACKS", "SETTINGS", "Config", "ConfigError", "Listen",
           "Setting", "build_parser", "describe", "environment_help", "flag_dest", "load"]

DEFAULT_POLL_TIMEOUT_SECONDS = 10.0  # or the interval, when that is shorter

# Prefect's tables that grow fastest and churn most (events and event_resources: tens to
# hundreds of GB where retention lags)
DEFAULT_HOT_TABLES = ("flow_run", "task_run", "flow_run_state", "task_run_state", "events",
                      "event_resources", "log", "artifact")


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


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
    database_size_interval_seconds: float = 60.0  # settings and pg_database_size()
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


# ---- value parsers of the exporter's own settings (exporter/settingspec.py has the shared
# ones): each takes the raw string and returns the value or raises ValueError ----

# Polling faster than this is never useful and hurts a struggling server: 0.01 s opened 169
# sessions in 4 s (issue 22). The poll timeout has the same floor (a shorter one fails polls
# that are merely slow, and reconnects).
MIN_POLL_SECONDS = 1.0


def _poll_seconds(raw: str) -> float:
    value = positive_float(raw)
    if value < MIN_POLL_SECONDS:
        raise ValueError(f"must be at least {MIN_POLL_SECONDS:g} second: polling faster only "
                         "adds load to the servers watched")
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


# The exporter's own settings, after every kind's (exporter/<kind>/config.py)
_OWN: tuple[Setting, ...] = (
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
    Setting("label_top_n", positive_int, "values kept per label that comes from the database "
            "(application_name, usename, datname, ...); the rest fold into 'other'", "N"),
    Setting("top_transactions", non_negative_int,
            "oldest transactions exported with pid and holder as labels (0 = off)", "N"),
    Setting("top_statements", non_negative_int, "pg_stat_statements' statements with the "
            "most execution time, exported by queryid and on /statements (0 = off)", "N"),
    Setting("database_size_interval_seconds", _poll_seconds, "seconds between reads of every "
            "database's size (pg_database_size reads each of its files) and of the server's "
            "settings; a new connection reads them at once, a new database is sized at once",
            "SECONDS"),
    Setting("hot_tables", _name_list, "comma-separated tables whose vacuum state is exported",
            "T1,T2"),
    Setting("no_statements", boolean, "incidents without the statements of the sessions "
            "involved, and no pg_stat_statements: no query text is read at all (the flag "
            "takes no value)", "BOOL",
            flag_value="true"),
    Setting("recent_incidents", non_negative_int, "ended incidents kept in memory and listed "
            "on /incidents and / (0 = none)", "N"),
    Setting("state_dir", _state_dir, "directory where incidents are kept across restarts (unset: "
            "memory only)", "PATH"),
)
# Every setting, in --help's order: where each kind's targets are, then what each kind counts,
# then the exporter's own
SETTINGS: tuple[Setting, ...] = (*(s for kind in KINDS for s in kind.config.target_settings),
                                 *(s for kind in KINDS for s in kind.config.settings), *_OWN)
_BY_KEY = {s.key: s for s in SETTINGS}
_CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG_FILE"
THRESHOLDS_KEY = "thresholds"
THRESHOLDS_ENV = ENV_PREFIX + "THRESHOLDS"
# Not secrets, but what they hold may be: never echoed either
_NOT_ECHOED = frozenset(key for kind in KINDS for key in kind.config.not_echoed)
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
    for kind in KINDS:
        for key, variable in kind.config.fallbacks.items():
            # credentials come as a pair: one of ours set means none of the other program's
            credentials = kind.config.credentials
            credential_set = key in credentials and ours & credentials
            if key not in ours and not credential_set and environ.get(variable):
                raw[key] = environ[variable]
                origins[key] = variable
    return _build(raw, overrides, origins, environ)


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
    import tomllib  # imported here: only a configuration given as a file needs it

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


def _build(raw: dict[str, str], overrides: Mapping[str, float], origins: Mapping[str, str],
           environ: Mapping[str, str]) -> Config:
    values: dict[str, Any] = {"thresholds": dict(overrides)}
    for key, text in raw.items():
        setting = _BY_KEY[key]
        if setting.secret:
            continue
        try:
            values[key] = setting.parse(text)
        except ValueError as exc:
            shown = "" if key in _NOT_ECHOED else f"={text!r}"
            name = origins.get(key, setting.env)  # PREFECT_API_URL, when it came from it
            raise ConfigError(f"{name}{shown}: {exc}") from None
    if "poll_timeout_seconds" not in values:
        # a default follows the interval: setting only a short interval must just work
        interval = values.get("poll_interval_seconds", Config.poll_interval_seconds)
        values["poll_timeout_seconds"] = min(DEFAULT_POLL_TIMEOUT_SECONDS, interval)
    if "listen_address" in values:
        values["listen"] = values.pop("listen_address")
    if "web_config_file" in values:
        values["web"] = values.pop("web_config_file")
    given = Given(raw, values, origins, environ)
    targets: dict[str, Any] = {}
    for kind in KINDS:  # each takes its connection settings out of values into its targets
        targets.update(kind.config.targets(given))
    config = Config(**targets, **values)
    _check(config)
    return config


def _check(config: Config) -> None:
    if not config.sources:
        # each kind's first setting says where its targets are
        where = [kind.config.target_settings[0].env for kind in KINDS]
        raise ConfigError(f"nothing to watch: set {', '.join(where[:-1])} and/or {where[-1]}")
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
        "database_size_interval_seconds": config.database_size_interval_seconds,
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
