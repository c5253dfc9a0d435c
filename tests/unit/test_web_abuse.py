"""The HTTP endpoints against careless and hostile clients (issue #22): the auth scheme's case,
what /readyz tells a stranger, wrong passwords by the hundred, malformed requests, idle and slow
connections. Real servers on loopback; the exporter polls an address that refuses at once."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import bcrypt
import httpx
import pytest

from exporter.config import ConfigError, load
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
