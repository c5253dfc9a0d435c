"""The HTTP endpoints against careless and hostile clients (issue #22): the auth scheme's case,
what /readyz tells a stranger, wrong passwords by the hundred, malformed requests, idle and slow
connections. Real servers on loopback; the exporter polls an address that refuses at once."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import httpx
import pytest
import structlog

from exporter import webaccess, webguard
from exporter.config import ConfigError, load
from tests.exporter_process import exporter_process
from tests.helpers import StartExporter
from tests.tlsfiles import UNREACHABLE_DSN, write_web_config

PASSWORD = b"scrape-pw"
HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
USERS = f"basic_auth_users:\n  prometheus: '{HASH}'\n"


def basic(user: str, password: bytes, scheme: str = "Basic") -> dict[str, str]:
    return {"Authorization": f"{scheme} "
            + base64.b64encode(user.encode() + b":" + password).decode()}


async def test_the_basic_scheme_is_case_insensitive(tmp_path: Path,
                                                     start_exporter: StartExporter) -> None:
    exporter = await start_exporter(web_config_file=write_web_config(tmp_path, USERS),
                                    postgres_dsn=UNREACHABLE_DSN)
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    async with httpx.AsyncClient() as client:
        for scheme in ("Basic", "basic", "BASIC", "bAsIc"):
            response = await client.get(url, headers=basic("prometheus", PASSWORD, scheme))
            assert response.status_code == 200, scheme
        for scheme in ("Bearer", "Basicx"):
            response = await client.get(url, headers=basic("prometheus", PASSWORD, scheme))
            assert response.status_code == 401, scheme


async def test_readyz_does_not_name_targets_to_strangers(tmp_path: Path,
                                                          start_exporter: StartExporter) -> None:
    exporter = await start_exporter(web_config_file=write_web_config(tmp_path, USERS),
                                    postgres_dsn="secret-db-name=" + UNREACHABLE_DSN)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{exporter.port}/readyz")
    assert response.status_code == 503
    assert "secret-db-name" not in response.text and "postgres/" not in response.text
    assert response.text == "not ready: 1 of 1 targets never polled successfully\n"


async def test_readyz_names_targets_without_access_checks(start_exporter: StartExporter) -> None:
    """Without basic auth or client certificates everything is open anyway: the names help."""
    exporter = await start_exporter(postgres_dsn="primary=" + UNREACHABLE_DSN)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{exporter.port}/readyz")
    assert response.status_code == 503 and "postgres/primary" in response.text


SECRET = "s3cr3t-7f2a"


@pytest.mark.parametrize("text", [
    f"basic_auth_users:\n  prometheus: *{SECRET}\n",  # an undefined alias
    f"basic_auth_users:\n  prometheus: !{SECRET} x\n",  # an unknown tag
    f"basic_auth_users: !!python/object:{SECRET} {{}}\n",
    f"a: &{SECRET} 1\nb: &{SECRET} 2\n",  # a duplicate anchor
    f'a: "{SECRET}\\q"\n',  # a bad escape
    f"{SECRET}: 1\n{HASH}: 2\n",  # a file named by mistake: its keys
    f"tls_server_config:\n  {SECRET}: x\n",
    f"http_server_config:\n  {SECRET}: x\n",
])
def test_a_web_config_that_does_not_parse_is_not_echoed(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"postgres_dsn": "postgresql://x@h/db",
              "web_config_file": write_web_config(tmp_path, text)}, {})
    message = str(info.value)
    assert SECRET not in message and "$2" not in message and "\n" not in message
    assert "web config" in message


def test_the_web_config_error_says_where_and_what(tmp_path: Path) -> None:
    """Without the text, the line and column and PyYAML's own tokens are what is left."""
    with pytest.raises(ConfigError, match=re.escape(
            "not valid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'")):
        load({"postgres_dsn": "postgresql://x@h/db",
              "web_config_file": write_web_config(tmp_path, "key: [unclosed\n")}, {})
    with pytest.raises(ConfigError, match=re.escape(
            "unknown key(s) tls_config, 1 other(s) not shown")):
        load({"postgres_dsn": "postgresql://x@h/db",
              "web_config_file": write_web_config(tmp_path, f"tls_config: 1\n{SECRET}: 2\n")},
             {})


def test_cli_does_not_print_a_web_config_that_does_not_parse(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "--postgres-dsn", "postgresql://x@h/db",
         "--listen-address", "127.0.0.1:0",
         "--web.config.file", write_web_config(tmp_path, f"basic_auth_users:\n  p: *{HASH}\n")],
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "not valid YAML at line 2" in done.stderr and "$2" not in done.stderr


# 150 clients guessing passwords without pause, in a process of their own (so that their
# event loop is not the one measuring the valid login): "storming" once each has sent a guess
# and ten answers came back, then a JSON line of the statuses counted.
STORM = """
import asyncio, base64, json, sys, time
import httpx

async def main(url, clients, seconds):
    counts, sent, told = {}, 0, False
    stop = time.monotonic() + seconds
    async def guess(client, i):
        nonlocal sent, told
        n = 0
        while time.monotonic() < stop:
            token = base64.b64encode(f"prometheus:g{i}-{n}".encode()).decode()
            sent += 1
            response = await client.get(url, headers={"Authorization": "Basic " + token})
            counts[response.status_code] = counts.get(response.status_code, 0) + 1
            if not told and sent >= clients and sum(counts.values()) >= 10:
                told = True
                print("storming", flush=True)
            n += 1
    limits = httpx.Limits(max_connections=clients + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(guess(client, i) for i in range(clients)))
    print(json.dumps(counts), flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
"""


def test_a_valid_login_answers_while_wrong_passwords_storm(tmp_path: Path) -> None:
    """150 clients guess passwords without pause against a real exporter process. A new valid
    login (another user, from another address) answers within 3 s (it waited behind every guess
    before, ~150 bcrypts), and a scraper whose credentials were verified before the storm is not
    held up, from the storm's own address."""
    costly = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(10)).decode()  # ~0.1-0.3 s a check here
    config = write_web_config(tmp_path, f"basic_auth_users:\n  prometheus: '{costly}'\n"
                              f"  grafana: '{costly}'\n")
    env = {"PREFECT_PG_EXPORTER_POSTGRES_DSN": UNREACHABLE_DSN,
           "PREFECT_PG_EXPORTER_WEB_CONFIG_FILE": config}
    with exporter_process(tmp_path, env) as exporter:
        url = f"{exporter.url}/metrics"
        with httpx.Client(timeout=60) as scraper:
            assert scraper.get(url, headers=basic("prometheus", PASSWORD)).status_code == 200
            storm = subprocess.Popen([sys.executable, "-c", STORM, url, "150", "8"],
                                     stdout=subprocess.PIPE, text=True)
            try:
                assert storm.stdout is not None
                assert storm.stdout.readline() == "storming\n"
                other = httpx.HTTPTransport(local_address="127.0.0.2")
                with httpx.Client(transport=other, timeout=60) as new_login:
                    started = time.monotonic()
                    login = new_login.get(url, headers=basic("grafana", PASSWORD))
                    login_seconds = time.monotonic() - started
                scrapes = []
                for _ in range(5):
                    started = time.monotonic()
                    response = scraper.get(url, headers=basic("prometheus", PASSWORD))
                    scrapes.append((response.status_code, round(time.monotonic() - started, 2)))
                out, _ = storm.communicate(timeout=120)
            finally:
                if storm.poll() is None:
                    storm.kill()
                    storm.wait()
    statuses = {int(k): v for k, v in json.loads(out.splitlines()[-1]).items()}
    assert login.status_code == 200
    assert login_seconds < 3.0, f"a valid login took {login_seconds:.1f}s ({statuses})"
    assert all(status == 200 and seconds < 1.0 for status, seconds in scrapes), scrapes
    assert statuses.get(429, 0) > statuses.get(401, 0) > 0, statuses  # most cost no bcrypt


async def test_all_clients_together_have_max_checks() -> None:
    auth = webaccess.BasicAuth()
    users = {"prometheus": HASH.replace("$2y$", "$2b$", 1).encode()}
    checks = [asyncio.ensure_future(auth.check(
        users, basic("prometheus", b"%d" % i)["Authorization"], f"10.0.0.{i}"))
        for i in range(webaccess.MAX_CHECKS)]
    await asyncio.sleep(0)
    with pytest.raises(webaccess.Busy):
        await auth.check(users, basic("prometheus", b"x")["Authorization"], "10.0.1.1")
    assert await asyncio.gather(*checks) == [False] * webaccess.MAX_CHECKS


async def test_the_same_credentials_cost_one_bcrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sent at once they share the check; a wrong password sent again is remembered (a
    scraper left with an old password costs one bcrypt, not one per scrape)."""
    calls: list[bytes] = []
    real = webaccess._checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(webaccess, "_checkpw", counting)
    auth = webaccess.BasicAuth()
    users = {"prometheus": HASH.replace("$2y$", "$2b$", 1).encode()}
    wrong = basic("prometheus", b"old-pw")["Authorization"]
    assert await asyncio.gather(*(auth.check(users, wrong, "10.0.0.1") for _ in range(10))) \
        == [False] * 10
    assert not await auth.check(users, wrong, "10.0.0.2")
    assert calls == [b"old-pw"]
    right = basic("prometheus", PASSWORD)["Authorization"]
    assert await asyncio.gather(auth.check(users, right, "10.0.0.1"),
                                auth.check(users, right, "10.0.0.2")) == [True, True]
    assert calls == [b"old-pw", PASSWORD]


async def test_one_check_at_a_time_per_client_address() -> None:
    auth = webaccess.BasicAuth()
    users = {"prometheus": HASH.replace("$2y$", "$2b$", 1).encode()}
    first = asyncio.ensure_future(auth.check(users, basic("prometheus", b"a")["Authorization"],
                                             "10.0.0.1"))
    await asyncio.sleep(0)  # the first check is under way
    with pytest.raises(webaccess.Busy):
        await auth.check(users, basic("prometheus", b"b")["Authorization"], "10.0.0.1")
    assert not await auth.check(users, basic("prometheus", b"c")["Authorization"], "10.0.0.2")
    assert not await first
    # done: the address may try again
    assert not await auth.check(users, basic("prometheus", b"b")["Authorization"], "10.0.0.1")


MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header: x\r\nAuthorization: Basic c2VjcmV0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
]


def _send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(100)


def test_malformed_requests_are_a_warning_per_kind_not_tracebacks(tmp_path: Path) -> None:
    """Each used to write an 11-line traceback in plain text into the JSON log, with the
    request's bytes (an Authorization header among them)."""
    rounds = 9
    with exporter_process(tmp_path, {"PREFECT_PG_EXPORTER_POSTGRES_DSN": UNREACHABLE_DSN,
                                     "PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS": "600"}) \
            as exporter:
        for _ in range(rounds):
            for request in MALFORMED:
                assert _send(exporter.port, request).startswith(b"HTTP/1.0 400")
        assert httpx.get(f"{exporter.url}/healthz").status_code == 200
        exporter.stop()
    lines = exporter.log().splitlines()
    assert not any("Traceback" in line for line in lines), lines[:20]
    records = [json.loads(line) for line in lines]  # every line is JSON
    bad = [r for r in records if r["event"] == "bad HTTP request"]
    assert all(r["level"] == "warning" and r["status"] == 400 for r in bad)
    # once when first seen, once at shutdown with the count of those suppressed since
    kinds = {r["kind"] for r in bad}
    assert len(kinds) >= 3 and len(bad) == 2 * len(kinds), bad
    assert sum(1 + r["suppressed"] for r in bad if r["suppressed"]) == rounds * len(MALFORMED)
    assert "c2VjcmV0" not in exporter.log() and "aaaa" not in exporter.log()


def test_warnings_are_rate_limited_with_a_count() -> None:
    now = [0.0]
    warnings = webguard.RateLimitedWarnings(every=60, clock=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        for second in range(5):
            now[0] = second
            warnings.warn("bad HTTP request", "LineTooLong")
        warnings.warn("bad HTTP request", "BadStatusLine")
        now[0] = 61
        warnings.warn("bad HTTP request", "LineTooLong")
        warnings.warn("bad HTTP request", "LineTooLong")
        warnings.flush()
        warnings.flush()
    assert [(e["kind"], e["suppressed"]) for e in logs] == [
        ("LineTooLong", 0), ("BadStatusLine", 0), ("LineTooLong", 4), ("LineTooLong", 1)]


def _closed_within(sock: socket.socket, seconds: float, drip: bytes = b"") -> bool:
    """Whether the server closes the socket within `seconds` (dripping a byte every 0.5 s
    when given, as slowloris does)."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            if drip:
                sock.sendall(drip)
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


async def test_idle_and_slow_connections_are_closed(start_exporter: StartExporter) -> None:
    exporter = await start_exporter(postgres_dsn=UNREACHABLE_DSN)

    def check() -> list[str]:
        address = ("127.0.0.1", exporter.port)
        idle = socket.create_connection(address)  # never sends anything
        slow = socket.create_connection(address)  # headers one byte at a time, forever
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        kept = socket.create_connection(address)  # one request, then idle on keep-alive
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(100).startswith(b"HTTP/1.1 200")
        bound = webguard.HEADER_TIMEOUT + 5  # the old keep-alive was an hour, headers forever
        open_still = [name for name, sock, drip in (("slow", slow, b"X"), ("idle", idle, b""),
                                                    ("kept-alive", kept, b""))
                      if not _closed_within(sock, bound, drip)]
        for sock in (idle, slow, kept):
            sock.close()
        return open_still

    assert await asyncio.to_thread(check) == []


def test_the_connection_limit_follows_the_descriptor_limit() -> None:
    assert webguard.max_connections(64) == 32
    assert webguard.max_connections(1024) == webguard.MAX_CONNECTIONS
    assert webguard.max_connections(20) == webguard.MIN_CONNECTIONS


def test_idle_sockets_beyond_the_descriptor_limit_leave_healthz_answering(
        tmp_path: Path) -> None:
    """70 idle sockets against an exporter limited to 64 descriptors: /healthz timed out and
    asyncio logged accept()'s EMFILE with a traceback thousands of times a second."""
    env = {"PREFECT_PG_EXPORTER_POSTGRES_DSN": UNREACHABLE_DSN}
    with exporter_process(tmp_path, env, nofile=64) as exporter:
        idle = [socket.create_connection(("127.0.0.1", exporter.port)) for _ in range(70)]
        try:
            for _ in range(3):
                started = time.monotonic()
                response = httpx.get(f"{exporter.url}/healthz", timeout=10)
                assert response.status_code == 200
                assert time.monotonic() - started < 2.0
        finally:
            for sock in idle:
                sock.close()
        exporter.stop()
    log = exporter.log()
    assert "Traceback" not in log and len(log.splitlines()) < 20, log[:3000]


async def test_a_new_connection_closes_the_oldest_idle_one(
        start_exporter: StartExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webguard, "max_connections", lambda: 4)
    exporter = await start_exporter(postgres_dsn=UNREACHABLE_DSN)

    def check() -> tuple[bool, list[bool]]:
        idle = [socket.create_connection(("127.0.0.1", exporter.port)) for _ in range(4)]
        try:
            time.sleep(0.3)  # all four accepted, in order
            healthz = _send(exporter.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            return healthz.startswith(b"HTTP/1.1 200"), [_closed_within(s, 1) for s in idle]
        finally:
            for sock in idle:
                sock.close()

    answered, closed = await asyncio.to_thread(check)
    assert answered and closed == [True, False, False, False]


class _Busy:
    """A connection with a request in progress: the state the limit must never break into
    (a stand-in, as holding four requests in progress on a real server needs slow handlers the
    exporter does not have)."""

    closed = False

    def busy(self) -> bool:
        return True

    def drop(self) -> None:
        self.closed = True


def test_when_every_connection_is_busy_the_new_one_is_refused() -> None:
    connections = webguard.Connections(2)
    busy = [_Busy(), _Busy()]
    for handler in busy:
        assert connections.admit(handler)  # type: ignore[arg-type]
    assert not connections.admit(_Busy())  # type: ignore[arg-type]
    assert not any(handler.closed for handler in busy)


def _reset_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server drops the socket within `seconds`, seen by sending without reading
    (reading would let the server's response through: the client must stay a non-reader)."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:  # as fast as it goes: the answers pile up until the server cannot write
            sock.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
        except TimeoutError:
            pass
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


async def test_a_client_that_does_not_read_is_dropped(
        start_exporter: StartExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests pipelined and their answers never read: the server is stuck writing (a slow
    read). The connection goes once no response finished for STUCK_TIMEOUT (1 s here)."""
    monkeypatch.setattr(webguard, "STUCK_TIMEOUT", 1.0)
    exporter = await start_exporter(postgres_dsn=UNREACHABLE_DSN)

    def check() -> bool:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", exporter.port))
            return _reset_within(sock, 20)

    assert await asyncio.to_thread(check)
