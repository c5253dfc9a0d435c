"""What a setting is: its key, how its text is parsed and what --help says of it. Each source
kind declares its own settings and how they become its targets (exporter/<kind>/config.py, a
KindConfig on its SourceKind); exporter/config.py gathers them with the exporter's own
settings, as exporter/catalogue.py gathers the metric specs, and merges file, environment
and flags.

Every setting has one key; its environment variable is PREFECT_PG_EXPORTER_<KEY>, its flag
--<key-with-dashes> and its file key <key>. A parser takes the raw text and returns the value or
raises ValueError with what is wrong, worded for the person who wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.dsn import DSNError, Target, parse_targets

ENV_PREFIX = "PREFECT_PG_EXPORTER_"


class ConfigError(ValueError):
    """A configuration problem, worded for the person who made it."""


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


@dataclass(frozen=True)
class Given:
    """What a kind builds its targets from, once every layer is merged. raw: each setting's
    text, secrets included (secrets are never parsed before the kind reads them). values: the
    parsed settings that are not secret; a kind pops those it turns into targets, the rest
    become Config fields as they are. origins: for a secret, or a value read from another
    program's variable, the variable it came from (errors name it, never the value)."""

    raw: Mapping[str, str]
    values: dict[str, Any]
    origins: Mapping[str, str]
    environ: Mapping[str, str]


def no_targets(given: Given) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class KindConfig:
    """A source kind's settings and how they become its Config fields.

    target_settings come first in --help, the kinds in order (where each kind's targets are
    and how they are read); settings after them (what the kind's checks and metrics count).
    targets: the Config fields the kind builds (its targets), or ConfigError. fallbacks: other
    programs' variables read when ours are not set, by key (Prefect's PREFECT_API_URL);
    credentials: keys that come as a pair (one of ours set, none of the fallbacks is read);
    not_echoed: settings that are not secrets but may hold one (a token in a URL or header),
    never shown in an error."""

    target_settings: tuple[Setting, ...] = ()
    settings: tuple[Setting, ...] = ()
    targets: Callable[[Given], dict[str, Any]] = no_targets
    fallbacks: Mapping[str, str] = field(default_factory=dict)
    credentials: frozenset[str] = frozenset()
    not_echoed: frozenset[str] = frozenset()


# ---- value parsers shared by the kinds and the exporter's own settings ----

# Durations above this overflow datetime arithmetic (now - 1e300 s) and fail every poll.
MAX_SECONDS = 10 * 366 * 86400.0


def positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    if value > MAX_SECONDS:
        raise ValueError(f"must be at most {MAX_SECONDS:.0f} seconds (ten years)")
    return value


def non_negative_int(raw: str) -> int:
    if not re.fullmatch(r"\s*\d+\s*", raw):
        raise ValueError("must be a whole number >= 0")
    return int(raw)


def positive_int(raw: str) -> int:
    value = non_negative_int(raw)
    if value < 1:
        raise ValueError("must be a whole number >= 1")
    return value


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def existing_file(raw: str) -> str:
    if not Path(raw).is_file():
        raise ValueError("no such file")
    return raw


def dsn_targets(value: str, what: str,
                driver_reads: Callable[[Target, str], None]) -> tuple[Target, ...]:
    """The targets of a DSN setting (PostgreSQL's, PgBouncer's); what its driver cannot take
    fails every poll, so it is refused now (driver_reads raises DSNError)."""
    if not value.strip():
        return ()
    try:
        targets = tuple(parse_targets(value, what))
        for target in targets:
            driver_reads(target, what)
    except DSNError as exc:
        raise ConfigError(str(exc)) from None
    return targets
