"""The HTTP endpoints against careless and hostile clients (issue #22): the auth scheme's case,
what /readyz tells a stranger, wrong passwords by the hundred, malformed requests, idle and slow
connections. Real servers on loopback; the exporter polls an address that refuses at once."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import bcrypt
import httpx
import pytest

from exporter import webaccess
from exporter.config import ConfigError, load
from tests.exporter_process import exporter_process
from tests.helpers import StartExporter, eventually
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


async def test_a_valid_login_answers_while_wrong_passwords_storm(tmp_path: Path) -> None:
    """150 clients guess passwords without pause against a real exporter process. A new valid
    login (another user, from another address) answers within 3 s (it waited behind every guess
    before, ~150 bcrypts), and a scraper whose credentials were verified before the storm is not
    held up, from the storm's own address."""
    costly = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(10)).decode()  # ~0.1-0.3 s a check here
    config = write_web_config(tmp_path, f"basic_auth_users:\n  prometheus: '{costly}'\n"
                              f"  grafana: '{costly}'\n")
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()
    sent = 0

    async def guess(client: httpx.AsyncClient, url: str, i: int) -> None:
        nonlocal sent
        n = 0
        while not stop.is_set():
            sent += 1
            response = await client.get(url, headers=basic("prometheus", f"g{i}-{n}".encode()))
            statuses[response.status_code] += 1
            n += 1

    async def storming() -> bool:
        return sent >= 150 and sum(statuses.values()) >= 10

    with exporter_process(tmp_path, {"PREFECT_PG_EXPORTER_POSTGRES_DSN": UNREACHABLE_DSN,
                                     "PREFECT_PG_EXPORTER_WEB_CONFIG_FILE": config}) as exporter:
        url = f"{exporter.url}/metrics"
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) \
                as storm, httpx.AsyncClient(timeout=60) as scraper:
            verified = await scraper.get(url, headers=basic("prometheus", PASSWORD))
            assert verified.status_code == 200
            guessers = [asyncio.create_task(guess(storm, url, i)) for i in range(150)]
            try:
                await eventually(storming, 30, "the storm under way")
                other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
                async with httpx.AsyncClient(transport=other, timeout=60) as new_login:
                    started = time.monotonic()
                    login = await new_login.get(url, headers=basic("grafana", PASSWORD))
                    login_seconds = time.monotonic() - started
                scrapes = []
                for _ in range(5):
                    started = time.monotonic()
                    response = await scraper.get(url, headers=basic("prometheus", PASSWORD))
                    scrapes.append((response.status_code, round(time.monotonic() - started, 2)))
            finally:
                stop.set()
                await asyncio.gather(*guessers)
    assert login.status_code == 200
    assert login_seconds < 3.0, f"a valid login took {login_seconds:.1f}s ({statuses})"
    assert all(status == 200 and seconds < 2.0 for status, seconds in scrapes), scrapes
    assert statuses[429] > statuses[401] > 0, statuses  # most guesses cost no bcrypt


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
