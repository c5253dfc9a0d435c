"""TLS and basic auth for the HTTP endpoints, in the web configuration file format of the
Prometheus exporter toolkit (`--web.config.file`), so users reuse what they know:

    tls_server_config:
      cert_file: server.crt          # paths relative to this file
      key_file: server.key
      client_ca_file: ca.crt         # optional: mutual TLS
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')

/healthz and /readyz stay open so container and kubelet probes need no credentials; they say
only "ok" or which sources have not been read yet.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
from aiohttp import web

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version",
             "max_version"}


class WebConfigError(ValueError):
    pass


@dataclass(frozen=True)
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict, repr=False)  # user -> bcrypt hash


def load_web_config(path: str) -> WebConfig:
    import yaml

    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise WebConfigError(f"web config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise WebConfigError(f"web config {path}: not valid YAML: "
                             f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise WebConfigError(f"web config {path}: expected a mapping")
    unknown = set(data) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise WebConfigError(f"web config {path}: unknown key(s) {', '.join(sorted(unknown))}")
    tls = _ssl_context(data.get("tls_server_config"), file.parent, path)
    users = _users(data.get("basic_auth_users"), path)
    return WebConfig(tls, users)


def _ssl_context(tls: Any, base: Path, path: str) -> ssl.SSLContext | None:
    if not tls:
        return None
    if not isinstance(tls, dict) or set(tls) - _TLS_KEYS:
        raise WebConfigError(f"web config {path}: tls_server_config takes "
                             f"{', '.join(sorted(_TLS_KEYS))}")
    if not tls.get("cert_file") or not tls.get("key_file"):
        raise WebConfigError(f"web config {path}: tls_server_config needs cert_file and key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(base / tls["cert_file"], base / tls["key_file"])
        if tls.get("client_ca_file"):
            context.load_verify_locations(base / tls["client_ca_file"])
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"web config {path}: cannot load certificate or key: {exc}") \
            from None
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise WebConfigError(f"web config {path}: client_auth_type must be one of "
                             f"{', '.join(CLIENT_AUTH)}")
    context.verify_mode = CLIENT_AUTH[auth]
    for key, attribute in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if key in tls:
            if tls[key] not in TLS_VERSIONS:
                raise WebConfigError(f"web config {path}: {key} must be one of "
                                     f"{', '.join(TLS_VERSIONS)}")
            setattr(context, attribute, TLS_VERSIONS[tls[key]])
    return context


def _users(users: Any, path: str) -> dict[str, bytes]:
    if not users:
        return {}
    if not isinstance(users, dict):
        raise WebConfigError(f"web config {path}: basic_auth_users must map users to hashes")
    result = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"web config {path}: the password of {user!r} must be a bcrypt "
                                 "hash ($2y$...), not a plain password")
        result[str(user)] = hashed.replace("$2y$", "$2b$", 1).encode()
    return result


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def basic_auth_middleware(users: dict[str, bytes]) -> Any:
    """Checks credentials with bcrypt once, then remembers the good ones by a keyed digest, as
    the exporter toolkit does: bcrypt is slow on purpose, scrapes must not be."""
    salt = bcrypt.gensalt()
    verified: set[bytes] = set()

    async def check(header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        digest = hmac.new(salt, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        if digest in verified:
            return True
        hashed = users.get(user)
        # in a thread: ~0.2 s of bcrypt must not stall scrapes of the event loop
        if hashed is None or not await asyncio.to_thread(bcrypt.checkpw, password.encode(),
                                                         hashed):
            return False
        if len(verified) > 1000:
            verified.clear()
        verified.add(digest)
        return True

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or await check(request.headers.get("Authorization", "")):
            return await handler(request)
        return web.Response(status=401, text="Unauthorized\n",
                            headers={"WWW-Authenticate": 'Basic realm="prefect-pg-exporter"'})

    return middleware
