"""The web config file re-read when it or a TLS file it names changes: certificates rotate
without a restart, as with the exporter toolkit (which re-reads everything per TLS handshake and
per request).

Here a check is a few stat() calls per new connection and per request; the file is read again
only when one of them changed. A file rewritten within the filesystem's timestamp granularity
of the last read keeps its stat, so while a file is that fresh its content is compared instead
(git's "racy" entries). A config that became invalid is logged and the last good one stays in
force. Whether TLS is on cannot change without a restart: the listening socket decides it. A
reload never removes protection: a file that would turn off TLS, basic auth or client
certificate checks (an empty file, a comment, `basic_auth_users:` with no entries, a file caught
half-written) is refused with a warning, and removing them takes a restart.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import structlog

from exporter.webconfig import WebConfig, WebConfigError, load_web_config, named_files

log = structlog.get_logger("exporter.web")

RACY_NS = 2_000_000_000  # coarser than any filesystem's timestamps we expect (FAT: 2 s)
Stat = tuple[int, int, int, int, int] | None


class LiveWebConfig:
    """The web config as the files say now, or the last good one."""

    def __init__(self, initial: WebConfig,
                 load: Callable[[str], WebConfig] = load_web_config) -> None:
        self._good = initial
        self._load = load
        self._watch: tuple[str, ...] = initial.files
        # the files as they were when the initial config was read: close enough, and a change
        # in between is caught by the racy check
        self._stats = _stats(self._watch)
        self._digest = _digest(self._watch)
        self._taken_ns = time.time_ns()

    def current(self) -> WebConfig:
        if self._good.path is None:
            return self._good
        stats = _stats(self._watch)
        if stats == self._stats and not self._racy(stats):
            return self._good
        digest = _digest(self._watch)
        if digest == self._digest:  # touched, or fresh but unchanged: nothing to re-read
            self._stats, self._taken_ns = stats, time.time_ns()
            return self._good
        self._reload(self._good.path)
        return self._good

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context to listen with: each connection gets the current one."""
        if self._good.ssl_context is None:
            return None
        context = ReloadingContext(ssl.PROTOCOL_TLS_SERVER)
        context.current = lambda: self.current().ssl_context
        return context

    def _racy(self, stats: tuple[Stat, ...]) -> bool:
        return any(s is not None and s[3] >= self._taken_ns - RACY_NS for s in stats)

    def _reload(self, path: str) -> None:
        # fingerprint first: a change while loading is then seen by the next check
        watch = named_files(path)
        self._watch, self._taken_ns = watch, time.time_ns()
        self._stats, self._digest = _stats(watch), _digest(watch)
        try:
            new = self._load(path)
        except WebConfigError as exc:
            log.error("web config not reloaded, the last good one stays in force",
                      error=str(exc))
            return
        if new.files != watch:
            self._stats = ()  # named other files than read above: look again next time
        removed = removed_protections(self._good, new)
        if removed:
            # an empty or half-written file (truncate, then write) must not open the endpoints
            # for a moment, nor a mistake for good: removing protection takes a restart
            log.warning("web config not reloaded: it would remove " + ", ".join(removed)
                        + "; the last good one stays in force (restart the exporter to "
                        "remove authentication or TLS)", path=path)
            return
        if new.ssl_context is not None and self._good.ssl_context is None:
            log.warning("web config: TLS cannot be turned on without a restart; "
                        "the rest is applied", tls=False)
            new = replace(new, ssl_context=None, allowed_sans=self._good.allowed_sans)
        self._good = new
        log.info("web config reloaded", path=path)


def removed_protections(old: WebConfig, new: WebConfig) -> list[str]:
    """What a reload from old to new would switch off (lowered counts as removed)."""
    removed = []
    if old.ssl_context is not None and new.ssl_context is None:
        removed.append("TLS")
    if old.users and not new.users:
        removed.append("basic auth")
    if _verify_mode(old) > _verify_mode(new):
        removed.append("client certificate verification")
    if old.allowed_sans and not new.allowed_sans:
        removed.append("client_allowed_sans")
    return removed


def _verify_mode(config: WebConfig) -> int:
    """CERT_NONE < CERT_OPTIONAL < CERT_REQUIRED."""
    return int(config.ssl_context.verify_mode) if config.ssl_context is not None else 0


class ReloadingContext(ssl.SSLContext):
    """The listening context. asyncio wraps each accepted connection with wrap_bio(); this one
    hands the connection to the context of the moment, so a rotated certificate and changed
    client auth, versions, ciphers and curves all apply to the next connection (Go's
    GetConfigForClient). An sni_callback could not do it: swapping the context during the
    handshake (SSL_set_SSL_CTX) changes the certificate and trust store but keeps the verify
    mode, versions and curves of the first one."""

    current: Callable[[], ssl.SSLContext | None]

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 server_side: bool = False, server_hostname: str | bytes | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        context = self.current()
        if context is None:  # not reachable: TLS stays on once on
            raise ssl.SSLError("no TLS configuration")
        return context.wrap_bio(incoming, outgoing, server_side, server_hostname, session)


def _stats(paths: Sequence[str]) -> tuple[Stat, ...]:
    return tuple(_stat(path) for path in paths)


def _stat(path: str) -> Stat:
    try:
        s = os.stat(path)  # follows symlinks: a Kubernetes secret swaps its ..data link
    except OSError:
        return None
    return (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)


def _digest(paths: Sequence[str]) -> bytes:
    digest = hashlib.sha256()
    for path in paths:
        try:
            with open(path, "rb") as file:
                digest.update(hashlib.sha256(file.read()).digest())
        except OSError:
            digest.update(b"unreadable")
    return digest.digest()
