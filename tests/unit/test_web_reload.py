"""The web config file re-read when it or its TLS files change: certificates rotate without a
restart, a broken replacement keeps the last good config, client auth and users follow."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import structlog
import trustme

from exporter import webreload
from exporter.webconfig import load_web_config
from exporter.webreload import LiveWebConfig
from tests.helpers import StartExporter
from tests.tlsfiles import (
    TLS,
    UNREACHABLE_DSN,
    client_context,
    presented_serial,
    serial,
    write_server_cert,
    write_web_config,
)

FRAME = "http_server_config:\n  headers:\n    X-Frame-Options: {}\n"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def test_rotated_certificate_is_presented_to_the_next_connection(
        tmp_path: Path, ca: trustme.CA, start_exporter: StartExporter) -> None:
    first = write_server_cert(tmp_path, ca)
    exporter = await start_exporter(web_config_file=write_web_config(tmp_path, TLS),
                                    postgres_dsn=UNREACHABLE_DSN)
    client = client_context(ca)
    assert await presented_serial(exporter, client) == serial(first)
    second = write_server_cert(tmp_path, ca)  # same host, same paths, new key and serial
    assert await presented_serial(exporter, client) == serial(second)


async def test_broken_replacement_keeps_the_last_good_certificate(
        tmp_path: Path, ca: trustme.CA, start_exporter: StartExporter) -> None:
    good = write_server_cert(tmp_path, ca)
    exporter = await start_exporter(web_config_file=write_web_config(tmp_path, TLS),
                                    postgres_dsn=UNREACHABLE_DSN)
    client = client_context(ca)
    key = (tmp_path / "server.key").read_bytes()
    # a new certificate whose key has not been written yet: cert and key do not match
    ca.issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    with structlog.testing.capture_logs() as logs:
        assert await presented_serial(exporter, client) == serial(good)
        assert await presented_serial(exporter, client) == serial(good)
    errors = [e for e in logs if e["event"].startswith("web config")]
    assert len(errors) == 1, logs  # once per change, not per connection
    assert errors[0]["log_level"] == "error"
    assert "cannot load certificate or key" in errors[0]["error"]
    assert "PRIVATE KEY" not in repr(logs) and key.decode() not in repr(logs)
    (tmp_path / "server.crt").write_text("not a certificate\n")
    assert await presented_serial(exporter, client) == serial(good)
    fixed = write_server_cert(tmp_path, ca)  # the key arrives: the pair is good again
    assert await presented_serial(exporter, client) == serial(fixed)


async def test_client_auth_and_users_follow_the_file(
        tmp_path: Path, ca: trustme.CA, start_exporter: StartExporter) -> None:
    import bcrypt

    write_server_cert(tmp_path, ca)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    users = "basic_auth_users:\n  prometheus: '{}'\n"
    old_hash = bcrypt.hashpw(b"old-pw", bcrypt.gensalt(4)).decode()
    config = write_web_config(tmp_path, TLS + users.format(old_hash))
    exporter = await start_exporter(web_config_file=config, postgres_dsn=UNREACHABLE_DSN)
    url = f"https://127.0.0.1:{exporter.port}/metrics"
    async with httpx.AsyncClient(verify=client_context(ca)) as client:
        assert (await client.get(url, auth=("prometheus", "old-pw"))).status_code == 200
    # the password changes and client certificates become required
    new_hash = bcrypt.hashpw(b"new-pw", bcrypt.gensalt(4)).decode()
    write_web_config(tmp_path, TLS + "  client_ca_file: ca.crt\n"
                     "  client_auth_type: RequireAndVerifyClientCert\n"
                     + users.format(new_hash)
                     + "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    with pytest.raises(httpx.TransportError):
        async with httpx.AsyncClient(verify=client_context(ca)) as client:
            await client.get(url, auth=("prometheus", "new-pw"))
    with_cert = client_context(ca, ca.issue_cert("prometheus"))
    async with httpx.AsyncClient(verify=with_cert) as client:
        # the old password was remembered as verified: that must not outlive its hash
        assert (await client.get(url, auth=("prometheus", "old-pw"))).status_code == 401
        response = await client.get(url, auth=("prometheus", "new-pw"))
        assert response.status_code == 200 and response.headers["X-Frame-Options"] == "deny"


async def test_tls_cannot_be_turned_off_by_the_file(
        tmp_path: Path, ca: trustme.CA, start_exporter: StartExporter) -> None:
    first = write_server_cert(tmp_path, ca)
    config = write_web_config(tmp_path, TLS)
    exporter = await start_exporter(web_config_file=config, postgres_dsn=UNREACHABLE_DSN)
    with structlog.testing.capture_logs() as logs:
        write_web_config(tmp_path, FRAME.format("deny"))
        assert await presented_serial(exporter, client_context(ca)) == serial(first)
    assert [(e["log_level"], e["event"]) for e in logs if e["event"].startswith("web")] == [
        ("warning", "web config not reloaded: it would remove TLS; the last good one stays in "
                    "force (restart the exporter to remove authentication or TLS)")]
    async with httpx.AsyncClient(verify=client_context(ca)) as client:
        response = await client.get(f"https://127.0.0.1:{exporter.port}/healthz")
    assert "X-Frame-Options" not in response.headers  # the old config, whole


USERS = "basic_auth_users:\n  prometheus: '{}'\n"


@pytest.mark.parametrize(("text", "removed"), [
    ("", "basic auth"),
    ("# basic auth off for now\n", "basic auth"),
    ("basic_auth_users:\n", "basic auth"),
    ("basic_auth_users: {}\n", "basic auth"),
    (FRAME.format("deny"), "basic auth"),
])
def test_a_reload_never_drops_basic_auth(tmp_path: Path, text: str, removed: str) -> None:
    import bcrypt

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    path = write_web_config(tmp_path, USERS.format(hashed))
    live = LiveWebConfig(load_web_config(path))
    users = live.current().users
    write_web_config(tmp_path, text)
    os.utime(path, ns=(10**18, 10**18))  # seen as changed whatever the clock's granularity
    with structlog.testing.capture_logs() as logs:
        assert live.current().users == users
        assert live.current().users == users
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("warning", f"web config not reloaded: it would remove {removed}; the last good one "
                    "stays in force (restart the exporter to remove authentication or TLS)")]
    # another password is a change, not a removal: applied
    write_web_config(tmp_path, USERS.format(bcrypt.hashpw(b"pw2", bcrypt.gensalt(4)).decode()))
    os.utime(path, ns=(2 * 10**18, 2 * 10**18))
    assert live.current().users != users and live.current().users


def test_a_reload_never_drops_client_certificate_checks(tmp_path: Path, ca: trustme.CA) -> None:
    write_server_cert(tmp_path, ca)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    mtls = TLS + "  client_ca_file: ca.crt\n  client_auth_type: {}\n"
    path = write_web_config(tmp_path, mtls.format("RequireAndVerifyClientCert")
                            + "  client_allowed_sans: [prometheus]\n")
    live = LiveWebConfig(load_web_config(path))
    first = live.current()
    write_web_config(tmp_path, mtls.format("VerifyClientCertIfGiven"))
    os.utime(path, ns=(10**18, 10**18))
    with structlog.testing.capture_logs() as logs:
        assert live.current() is first
    assert "client certificate verification, client_allowed_sans" in logs[0]["event"]


async def test_a_truncate_then_write_rewrite_never_serves_unauthenticated(
        tmp_path: Path, start_exporter: StartExporter) -> None:
    """The rewrite editors and some secret mounts do: the file is empty for a moment, then
    holds the same users again. A scraper without credentials hammers the real server all the
    while: not one 200 (before the fix, about a fifth of them)."""
    import bcrypt

    text = USERS.format(bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode())
    path = write_web_config(tmp_path, text)
    exporter = await start_exporter(web_config_file=path, postgres_dsn=UNREACHABLE_DSN)
    done = threading.Event()

    def rewrite() -> None:
        for _ in range(400):  # bounded: at most ~2 s of rewrites
            if done.is_set():
                return
            with open(path, "w") as file:  # truncated here
                file.flush()
                time.sleep(0.002)
                file.write(text)
            time.sleep(0.002)

    statuses: Counter[int] = Counter()
    with structlog.testing.capture_logs() as logs:
        writer = threading.Thread(target=rewrite)
        writer.start()
        try:
            async with httpx.AsyncClient() as client:
                deadline = time.monotonic() + 10
                while writer.is_alive() and time.monotonic() < deadline:
                    response = await client.get(f"http://127.0.0.1:{exporter.port}/metrics")
                    statuses[response.status_code] += 1
        finally:
            done.set()
            writer.join()
    refused = [e for e in logs if e["event"].startswith("web config not reloaded")]
    assert statuses[200] == 0, statuses
    assert statuses[401] >= 50, statuses
    assert refused, "the scrapes never saw the file empty: the race was not exercised"


def _frozen_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem whose timestamps did not move: the rewrite fell in the same clock tick."""
    monkeypatch.setattr(webreload, "_stat", lambda path: (1, 1, 100, 1, 1))


def test_same_stat_rewrite_is_seen_while_the_files_are_fresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_web_config(tmp_path, FRAME.format("deny"))
    _frozen_stats(monkeypatch)
    live = LiveWebConfig(load_web_config(path))
    monkeypatch.setattr(webreload, "RACY_NS", 10**19)  # every file counts as fresh
    write_web_config(tmp_path, FRAME.format("sameorigin"))
    assert live.current().headers == {"X-Frame-Options": "sameorigin"}


def test_settled_files_cost_a_stat_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_web_config(tmp_path, FRAME.format("deny"))
    _frozen_stats(monkeypatch)
    live = LiveWebConfig(load_web_config(path))
    monkeypatch.setattr(webreload, "RACY_NS", -(10**19))  # every file counts as settled
    reads: list[str] = []

    def digest(paths: list[str]) -> bytes:
        reads.extend(paths)
        return b""

    monkeypatch.setattr(webreload, "_digest", digest)
    for _ in range(3):
        assert live.current().headers == {"X-Frame-Options": "deny"}
    assert reads == []


def test_a_missing_certificate_that_appears_is_picked_up(tmp_path: Path, ca: trustme.CA) -> None:
    path = write_web_config(tmp_path, TLS)
    write_server_cert(tmp_path, ca)
    live = LiveWebConfig(load_web_config(path))
    # the file now names a certificate that is not there yet
    write_web_config(tmp_path, TLS.replace("server.", "next."))
    first = live.current()
    assert first.files[1].endswith("server.crt")  # the last good one
    # copied, not moved: the files read last time stay as they were
    shutil.copy(tmp_path / "server.crt", tmp_path / "next.crt")
    shutil.copy(tmp_path / "server.key", tmp_path / "next.key")
    assert live.current().files[1].endswith("next.crt")


def test_a_touched_file_is_not_re_read(tmp_path: Path) -> None:
    path = write_web_config(tmp_path, FRAME.format("deny"))
    live = LiveWebConfig(load_web_config(path))
    first = live.current()
    os.utime(path, ns=(10**18, 10**18))  # new timestamps, same content
    with structlog.testing.capture_logs() as logs:
        assert live.current() is first
    assert logs == []
