"""`prefect-pg-exporter doctor --since 1h`: the doctor is a one-shot process that reads the
present; the recent past is in the running exporter's memory. This asks its /incidents on its
own listen address (as `healthcheck` asks /healthz), with the credentials of ~/.netrc (or
$NETRC) when its web config asks for basic auth, and says in one line when no exporter answers.
"""

from __future__ import annotations

import base64
import json
import netrc
import os
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporter.config import Config

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|min|m|h|d)?")
_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str) -> float:
    """'90s', '30m', '1h', '2d', '1h30m' or plain seconds -> seconds; ValueError otherwise."""
    text = text.strip().lower()
    parts = list(_DURATION.finditer(text))
    if not parts or "".join(m.group(0) for m in parts) != text.replace(" ", ""):
        raise ValueError(f"--since {text!r}: not a duration (e.g. 90s, 30m, 1h, 2d)")
    seconds = sum(float(m.group(1)) * _UNITS[m.group(2)] for m in parts)
    if seconds <= 0:
        raise ValueError(f"--since {text!r}: must be longer than 0")
    return seconds


def incidents_url(config: Config) -> str:
    """The running exporter's /incidents, on the address it listens on (loopback when it
    listens on every address)."""
    host = config.listen.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.web.ssl_context is not None else "http"
    return f"{scheme}://{host}:{config.listen.port}/incidents"


@dataclass(frozen=True)
class Recent:
    url: str
    incidents: Sequence[Mapping[str, Any]] = ()
    error: str = ""  # one line: why there are none to show


def fetch_recent(config: Config, since: float, now: float, timeout: float = 4.0) -> Recent:
    url = incidents_url(config)
    request = urllib.request.Request(url, headers=_auth_header(url))
    # its own process, by address, over loopback: the certificate is not verified, as in
    # `healthcheck`
    context = ssl._create_unverified_context() if url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            return Recent(url, error=f"the exporter at {url} asks for credentials: add them "
                                     "to ~/.netrc (machine HOST login USER password PASSWORD)")
        return Recent(url, error=f"the exporter at {url} answered HTTP {exc.code}")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return Recent(url, error=f"no exporter answers at {url} ({reason})")
    return Recent(url, [i for i in body.get("incidents", []) if _within(i, since, now)])


def _within(incident: Mapping[str, Any], since: float, now: float) -> bool:
    ended = incident.get("ended_at")
    if not ended:
        return True
    try:
        return datetime.fromisoformat(str(ended)).timestamp() >= now - since
    except ValueError:
        return True


def _auth_header(url: str) -> dict[str, str]:
    host = url.split("/")[2].rsplit(":", 1)[0].strip("[]")
    try:
        found = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return {}
    if not found:
        return {}
    login, _, password = found
    token = base64.b64encode(f"{login}:{password or ''}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def recent_report(config: Config, since: float, now: float) -> tuple[dict[str, Any], str]:
    """For the doctor: the JSON entries and the text section of the recent incidents."""
    from exporter.finding import age
    from exporter.incidents.render import incidents_text

    recent = fetch_recent(config, since, now)
    window = age(since)
    if recent.error:
        return ({"incidents": None, "incidents_error": recent.error},
                f"Recent incidents (last {window}): {recent.error}; the present only.\n")
    if not recent.incidents:
        return ({"incidents": []},
                f"Recent incidents (last {window}): none recorded by the exporter at "
                f"{recent.url}.\n")
    return ({"incidents": list(recent.incidents)},
            f"Recent incidents (last {window}, from the exporter at {recent.url}):\n"
            + incidents_text(recent.incidents))
