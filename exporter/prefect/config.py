"""The exporter's settings for Prefect targets: where each API is, the credential and headers
sent (the same for every target), TLS, and what the Prefect checks count. Prefect's own
variables (PREFECT_API_URL, ...) are read when ours are not set: a container that already talks
to Prefect needs no second copy of its URL and credentials.

(exporter/prefect/settings.py is another thing: the Prefect server's settings, read from its
API.)"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from exporter.settingspec import (
    ENV_PREFIX,
    ConfigError,
    Given,
    KindConfig,
    Setting,
    boolean,
    existing_file,
    positive_float,
    positive_int,
)


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


# Prefect's custom headers (a 3.4.8+ client setting): merged under ours, header by header.
PREFECT_HEADERS_VARIABLE = "PREFECT_CLIENT_CUSTOM_HEADERS"
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


def _targets(given: Given) -> dict[str, Any]:
    return {"prefect_targets": _prefect_targets(given.raw, given.values, given.origins,
                                                given.environ.get(PREFECT_HEADERS_VARIABLE, ""))}


def _prefect_targets(raw: Mapping[str, str], values: dict[str, Any], origins: Mapping[str, str],
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




TARGET_SETTINGS: tuple[Setting, ...] = (
    Setting("prefect_api_url", _prefect_urls, "Prefect API(s) to watch, e.g. "
            "http://prefect:4200/api (default: PREFECT_API_URL); several separated by ';', each "
            "optionally named as name=URL", "URL"),
    Setting("prefect_api_key", str, "bearer API key, Prefect Cloud (default: PREFECT_API_KEY)",
            "KEY", secret=True),
    Setting("prefect_api_auth_string", str, "user:password for a self-hosted server's basic auth "
            "(default: PREFECT_API_AUTH_STRING)", "USER:PASSWORD", secret=True),
    Setting("prefect_api_headers", _headers, "extra HTTP headers for the Prefect API, as a JSON "
            "object; merged over PREFECT_CLIENT_CUSTOM_HEADERS", "JSON"),
    Setting("prefect_api_ca_file", existing_file, "CA bundle to verify the Prefect API's TLS "
            "certificate (default: PREFECT_API_SSL_CERT_FILE)", "PATH"),
    Setting("prefect_api_tls_insecure_skip_verify", boolean, "do not verify the Prefect API's "
            "TLS certificate (default: PREFECT_API_TLS_INSECURE_SKIP_VERIFY)", "BOOL"),
)
SETTINGS: tuple[Setting, ...] = (
    Setting("prefect_upcoming_horizon_seconds", positive_float,
            "how far ahead a SCHEDULED run counts as upcoming", "SECONDS"),
    Setting("prefect_max_concurrent_requests", positive_int,
            "Prefect API requests in flight at once per poll", "N"),
    Setting("stuck_run_seconds", positive_float, "a flow run PENDING, RUNNING, CANCELLING or "
            "PAUSED for longer than this counts as stuck", "SECONDS"),
    Setting("heartbeat_timeout_seconds", positive_float, "a RUNNING flow run whose last "
            "heartbeat is older than this counts as a zombie (Prefect 3.6.22+ sends one every "
            "180 s by default)", "SECONDS"),
    Setting("outcome_window_seconds", positive_float, "flow runs that ended within this "
            "window are counted by terminal state", "SECONDS"),
)
# Prefect's own variables, read when ours are not set: a container that already talks to
# Prefect needs no second copy of its URL and credentials.
PREFECT_FALLBACKS = {
    "prefect_api_url": "PREFECT_API_URL",
    "prefect_api_key": "PREFECT_API_KEY",
    "prefect_api_auth_string": "PREFECT_API_AUTH_STRING",
    "prefect_api_ca_file": "PREFECT_API_SSL_CERT_FILE",
    "prefect_api_tls_insecure_skip_verify": "PREFECT_API_TLS_INSECURE_SKIP_VERIFY",
}
CONFIG = KindConfig(
    target_settings=TARGET_SETTINGS, settings=SETTINGS, targets=_targets,
    fallbacks=PREFECT_FALLBACKS,
    credentials=frozenset({"prefect_api_key", "prefect_api_auth_string"}),
    # not secrets, but what they hold may be (a token in a header, in a URL)
    not_echoed=frozenset({"prefect_api_url", "prefect_api_headers"}))
