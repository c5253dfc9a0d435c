"""TLS and basic auth on the HTTP endpoints, configured like any Prometheus exporter."""

from __future__ import annotations

import ssl
from pathlib import Path

import bcrypt
import httpx
import pytest
import trustme

from exporter.config import ConfigError, load
from tests.helpers import StartExporter

HASH = bcrypt.hashpw(b"scrape-pw", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)


def web_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def tls_files(tmp_path: Path, ca: trustme.CA) -> str:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    return "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"


async def test_tls_and_basic_auth(tmp_path: Path, ca: trustme.CA,
                                  start_exporter: StartExporter) -> None:
    config = web_config(tmp_path, tls_files(tmp_path, ca)
                        + f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    exporter = await start_exporter(web_config_file=config,
                                    postgres_dsn="postgresql://x@127.0.0.1:1/db")
    base = f"https://127.0.0.1:{exporter.port}"
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with httpx.AsyncClient(verify=context) as client:
        assert (await client.get(f"{base}/healthz")).status_code == 200  # probes stay open
        assert (await client.get(f"{base}/readyz")).status_code in (200, 503)
        for path in ("/metrics", "/"):
            denied = await client.get(base + path)
            assert denied.status_code == 401 and "Basic" in denied.headers["WWW-Authenticate"]
        wrong = await client.get(f"{base}/metrics", auth=("prometheus", "nope"))
        assert wrong.status_code == 401
        for _ in range(3):  # the second and third hit the cache of verified credentials
            ok = await client.get(f"{base}/metrics", auth=("prometheus", "scrape-pw"))
            assert ok.status_code == 200 and "prefect_pg_exporter_build_info" in ok.text
    async with httpx.AsyncClient() as plain:
        with pytest.raises(httpx.TransportError):
            await plain.get(f"http://127.0.0.1:{exporter.port}/metrics")


@pytest.mark.parametrize(("text", "message"), [
    ("basic_auth_users:\n  prometheus: plain-password\n", "must be a bcrypt hash"),
    ("tls_server_config:\n  cert_file: server.crt\n", "needs cert_file and key_file"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
     "cannot load certificate"),
    ("tls_config:\n  cert_file: a\n", "unknown key"),
    ("basic_auth_users: [a, b]\n", "must map users"),
    ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: Sometimes}\n",
     "cannot load certificate"),
    ("key: [unclosed\n", "not valid YAML"),
])
def test_bad_web_config_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load({"postgres_dsn": "postgresql://x@h/db",
              "web_config_file": web_config(tmp_path, text)}, {})
    assert "\n" not in str(info.value)


def test_missing_web_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load({"postgres_dsn": "postgresql://x@h/db",
              "web_config_file": str(tmp_path / "absent.yml")}, {})
