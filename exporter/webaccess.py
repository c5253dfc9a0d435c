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
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from exporter.webconfig import OPEN_PATHS, WebConfig, normalise_san
from exporter.webguard import WARNINGS

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

BCRYPT_THREADS = 2  # bcrypt releases the GIL: checks run side by side, never on the event loop
MAX_CHECKS = 16  # distinct credentials being checked (waiting or running), all clients together
MAX_CHECKS_PER_CLIENT = 1  # ... from one client address
REMEMBERED = 1000  # verified and failed digests kept (each set cleared when full)


class Busy(Exception):
    """Too many credentials are being checked (for this client or for all): answer 429 at once
    instead of queueing bcrypt work behind an attacker's."""


class BasicAuth:
    """Checks credentials with bcrypt once, then remembers the good ones by a keyed digest of
    user, hash and password, as the exporter toolkit does: bcrypt is slow on purpose, scrapes
    must not be; and a hash changed in the file no longer matches what was remembered.

    What an unauthenticated client can cost is bounded: failed digests are remembered too (a
    scraper with an old password, or a replayed guess, costs one bcrypt); the same credentials
    sent at once share one check; a client address has one check in progress at a time and all
    clients MAX_CHECKS, beyond which the answer is 429 without bcrypt. The toolkit checks one at
    a time: 150 wrong passwords at once made a new valid login wait behind all of them."""

    def __init__(self) -> None:
        self._key = os.urandom(32)
        self._verified: set[bytes] = set()
        self._failed: set[bytes] = set()
        self._checking: dict[bytes, asyncio.Future[bool]] = {}
        self._per_client: dict[str, int] = {}

    async def check(self, users: dict[str, bytes], header: str, client: str = "") -> bool:
        """Whether the header carries a user's password; Busy when it cannot be checked now."""
        credentials = _credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = users.get(user)
        digest = hmac.new(self._key, b"\0".join((user.encode(), hashed or b"",
                                                 password.encode())), hashlib.sha256).digest()
        if digest in self._verified:
            return True
        if digest in self._failed:
            return False
        checking = self._checking.get(digest)
        if checking is None:
            # An unknown user is checked against another user's hash (and refused whatever the
            # result): it costs what a wrong password costs, so names cannot be found by timing.
            against = hashed if hashed is not None else next(iter(users.values()))
            checking = self._start(digest, password.encode(), against, hashed is not None,
                                   client)
        # shielded: a client that hangs up does not cancel a check others may be waiting on
        return await asyncio.shield(checking)

    def _start(self, digest: bytes, password: bytes, against: bytes, known: bool,
               client: str) -> asyncio.Future[bool]:
        if (len(self._checking) >= MAX_CHECKS
                or self._per_client.get(client, 0) >= MAX_CHECKS_PER_CLIENT):
            raise Busy
        self._per_client[client] = self._per_client.get(client, 0) + 1
        task = asyncio.ensure_future(self._bcrypt(digest, password, against, known, client))
        self._checking[digest] = task
        return task

    async def _bcrypt(self, digest: bytes, password: bytes, against: bytes, known: bool,
                      client: str) -> bool:
        try:
            loop = asyncio.get_running_loop()
            matched = await loop.run_in_executor(_pool(), _checkpw, password, against)
        finally:
            del self._checking[digest]
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]
        good = matched and known
        remembered = self._verified if good else self._failed
        if len(remembered) >= REMEMBERED:
            remembered.clear()
        remembered.add(digest)
        return good


_POOL: list[ThreadPoolExecutor] = []


def _pool() -> ThreadPoolExecutor:
    """The bcrypt threads, started on the first check (not the default executor, which DNS
    lookups and other blocking calls share)."""
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor  # its threads only for basic auth

        _POOL.append(ThreadPoolExecutor(BCRYPT_THREADS, thread_name_prefix="bcrypt"))
    return _POOL[0]


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
        if config.users:
            try:
                good = await auth.check(config.users, request.headers.get("Authorization", ""),
                                        request.remote or "")
            except Busy:
                WARNINGS.warn("login refused", "too many credentials being checked")
                return web.Response(status=429, text="Too Many Requests: credentials from this "
                                    "client are being checked\n", headers={"Retry-After": "1"})
            if not good:
                return web.Response(status=401, text="Unauthorized\n", headers={
                    "WWW-Authenticate": 'Basic realm="prefect-pg-exporter"'})
        return await handler(request)

    return middleware


def install(app: web.Application, current: Callable[[], WebConfig]) -> None:
    """The access checks, and the configured headers on every response, 401 and 404 included
    (as the toolkit sets them before anything else answers)."""
    app.middlewares.append(access_middleware(current))

    async def add_headers(_: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(current().headers)

    app.on_response_prepare.append(add_headers)
