"""The web config applied to each request: client certificate SANs, basic auth, response
headers.

Everything is read from the web config of the moment (webreload.py re-reads the file when it
changes), as the exporter toolkit re-reads it per request. /healthz and /readyz stay open so
container and kubelet probes need neither credentials nor an allowed client certificate SAN;
they say only "ok" or which sources have not been read yet.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from exporter.webconfig import OPEN_PATHS, WebConfig, normalise_san


class BasicAuth:
    """Checks credentials with bcrypt once, then remembers the good ones by a keyed digest of
    user, hash and password, as the exporter toolkit does: bcrypt is slow on purpose, scrapes
    must not be; and a hash changed in the file no longer matches what was remembered."""

    def __init__(self) -> None:
        self._key = os.urandom(32)
        self._verified: set[bytes] = set()
        # one bcrypt at a time, as the toolkit: a flood of wrong passwords takes one core
        self._bcrypt = asyncio.Semaphore(1)

    async def check(self, users: dict[str, bytes], header: str) -> bool:
        credentials = _credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = users.get(user)
        digest = hmac.new(self._key, b"\0".join((user.encode(), hashed or b"",
                                                 password.encode())), hashlib.sha256).digest()
        if hashed is not None and digest in self._verified:
            return True
        # An unknown user is checked against another user's hash (and refused whatever the
        # result): it costs what a wrong password costs, so names cannot be found by timing.
        against = hashed if hashed is not None else next(iter(users.values()))
        async with self._bcrypt:
            # in a thread: ~0.2 s of bcrypt must not stall scrapes on the event loop
            good = await asyncio.to_thread(_checkpw, password.encode(), against)
        if not good or hashed is None:
            return False
        if len(self._verified) > 1000:
            self._verified.clear()
        self._verified.add(digest)
        return True


def _checkpw(password: bytes, hashed: bytes) -> bool:
    import bcrypt  # imported here: only an exporter with basic auth users loads it

    return bcrypt.checkpw(password, hashed)


def _credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":  # auth schemes are case-insensitive (RFC 9110, 11.1)
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        user, sep, password = decoded.partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


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
