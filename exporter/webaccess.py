"""The web config applied to each request: client certificate SANs, basic auth, response
headers.

/healthz and /readyz stay open so container and kubelet probes need neither credentials nor an
allowed client certificate SAN; they say only "ok" or which sources have not been read yet.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import bcrypt
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from exporter.webconfig import OPEN_PATHS, WebConfig, normalise_san


class BasicAuth:
    """Checks credentials with bcrypt once, then remembers the good ones by a keyed digest, as
    the exporter toolkit does: bcrypt is slow on purpose, scrapes must not be."""

    def __init__(self) -> None:
        self._salt = bcrypt.gensalt()
        self._verified: set[bytes] = set()

    async def check(self, users: dict[str, bytes], header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        digest = hmac.new(self._salt, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        if digest in self._verified:
            return True
        hashed = users.get(user)
        # in a thread: ~0.2 s of bcrypt must not stall scrapes of the event loop
        if hashed is None or not await asyncio.to_thread(bcrypt.checkpw, password.encode(),
                                                         hashed):
            return False
        if len(self._verified) > 1000:
            self._verified.clear()
        self._verified.add(digest)
        return True


def client_sans(peercert: dict[str, Any] | None) -> list[str]:
    """The SANs of a verified client certificate, as Go lists them for client_allowed_sans:
    DNS names, e-mail addresses, IP addresses and URIs."""
    kinds = {"DNS", "email", "IP Address", "URI"}
    sans = (peercert or {}).get("subjectAltName", ())
    return [normalise_san(value) for kind, value in sans if kind in kinds]


def _has_allowed_san(request: web.Request, allowed: frozenset[str]) -> bool:
    peercert = request.transport.get_extra_info("peercert") if request.transport else None
    return not allowed.isdisjoint(client_sans(peercert))


def access_middleware(current: Callable[[], WebConfig]) -> Middleware:
    auth = BasicAuth()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        config = current()
        if request.path in OPEN_PATHS:
            return await handler(request)
        if config.allowed_sans and not _has_allowed_san(request, config.allowed_sans):
            # the toolkit ends the handshake; after it, a clear status is all that is left
            return web.Response(status=403, text="Forbidden: no allowed SAN in the client "
                                "certificate\n")
        if config.users and not await auth.check(config.users,
                                                 request.headers.get("Authorization", "")):
            return web.Response(status=401, text="Unauthorized\n",
                                headers={"WWW-Authenticate": 'Basic realm="prefect-pg-exporter"'})
        return await handler(request)

    return middleware


def install(app: web.Application, current: Callable[[], WebConfig]) -> None:
    """The access checks, and the configured headers on every response, 401 and 404 included
    (as the toolkit sets them before anything else answers)."""
    app.middlewares.append(access_middleware(current))

    async def add_headers(_: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(current().headers)

    app.on_response_prepare.append(add_headers)
