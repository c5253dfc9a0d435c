"""TLS and basic auth on the HTTP endpoints, configured like any Prometheus exporter: what the
exporter toolkit's web config file means is done, what Python's ssl cannot do is refused."""

from __future__ import annotations

import base64
import re
import ssl
import subprocess
import sys
from pathlib import Path

import bcrypt
import httpx
import pytest
import trustme

from exporter import webaccess
from exporter.config import ConfigError, load
from exporter.webconfig import CIPHERS, load_web_config
from tests.helpers import StartExporter
from tests.tlsfiles import (
    TLS,
    UNREACHABLE_DSN,
    client_context,
    write_server_cert,
    write_web_config,
)

HASH = bcrypt.hashpw(b"scrape-pw", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
MTLS = TLS + "  client_ca_file: ca.crt\n"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_dir(tmp_path: Path, ca: trustme.CA) -> Path:
    """server.crt, server.key and the clients' CA, ca.crt, in tmp_path."""
    write_server_cert(tmp_path, ca)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    return tmp_path


async def test_tls_and_basic_auth(tls_dir: Path, ca: trustme.CA,
                                  start_exporter: StartExporter) -> None:
    config = write_web_config(tls_dir, TLS + f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    exporter = await start_exporter(web_config_file=config, postgres_dsn=UNREACHABLE_DSN)
    base = f"https://127.0.0.1:{exporter.port}"
    async with httpx.AsyncClient(verify=client_context(ca)) as client:
        assert (await client.get(f"{base}/healthz")).status_code == 200  # probes stay open
        assert (await client.get(f"{base}/readyz")).status_code in (200, 503)
        for path in ("/metrics", "/", "/incidents", "/statements"):
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
    ("basic_auth_users:\n  prometheus: $2y$10$tooshort\n", "must be a bcrypt hash"),
    ("tls_server_config:\n  cert_file: server.crt\n", "needs cert_file and key_file"),
    # versions without a certificate: the toolkit would silently serve plain HTTP
    ("tls_server_config:\n  min_version: TLS13\n", "needs cert_file and key_file"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
     "cannot load certificate"),
    ("tls_server_config:\n  cert: '-----BEGIN'\n  key: '-----BEGIN'\n", "use cert_file"),
    ("tls_config:\n  cert_file: a\n", "unknown key"),
    ("rate_limit:\n  burst: 10\n  interval: 1s\n", "rate_limit is not supported"),
    ("basic_auth_users: [a, b]\n", "must map users"),
    ("key: [unclosed\n", "not valid YAML"),
    # client authentication
    (MTLS, "client CA's have been configured without a Client Auth Policy"),
    (TLS + "  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
    (TLS + "  client_auth_type: VerifyClientCertIfGiven\n", "needs client_ca_file"),
    (MTLS + "  client_auth_type: RequestClientCert\n", "without verifying them"),
    (MTLS + "  client_auth_type: RequireAnyClientCert\n", "without verifying them"),
    (MTLS + "  client_auth_type: RequireClientCert\n", "without verifying them"),
    (MTLS + "  client_auth_type: Sometimes\n", "invalid ClientAuth: Sometimes"),
    (TLS + "  client_ca_file: server.key\n  client_auth_type: VerifyClientCertIfGiven\n",
     "cannot load the client CA"),
    (TLS + "  client_allowed_sans: [prometheus]\n", "client_allowed_sans needs client_auth"),
    (MTLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_allowed_sans: []\n",
     "empty"),
    # versions, ciphers, curves
    (TLS + "  min_version: TLS14\n", "unknown TLS version: TLS14"),
    (TLS + "  min_version: TLS13\n  max_version: TLS12\n", "above max_version"),
    (TLS + "  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n", "unknown cipher"),
    (TLS + "  cipher_suites: [TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA]\n", "unknown cipher"),
    (TLS + "  cipher_suites: [ECDHE-RSA-AES128-GCM-SHA256]\n", "unknown cipher"),
    (TLS + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "only TLS 1.3 suites"),
    (TLS + "  curve_preferences: [P256]\n", "unknown curve: P256"),
    (TLS + "  curve_preferences: [X25519, CurveP256]\n", "one curve only"),
    (TLS + "  prefer_server_cipher_suites: 'no'\n", "true or false"),
    # http_server_config
    ("http_server_config:\n  http2: true\n", "HTTP/1.1 only"),
    ("http_server_config:\n  http3: false\n", "unknown key"),
    ("http_server_config:\n  headers:\n    X-Powered-By: me\n",
     'HTTP header "X-Powered-By" can not be configured'),
    ("http_server_config:\n  headers:\n    x-frame-options: deny\n", "can not be configured"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: DENY\n",
     'invalid value for X-Frame-Options. Expected one of: ["deny" "sameorigin"], but got: '
     '"DENY"'),
    ("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n",
     "invalid value for X-Content-Type-Options"),
    ("http_server_config:\n  headers:\n    Content-Security-Policy: [a]\n", "expected a string"),
])
def test_bad_web_config_is_refused(tls_dir: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load({"postgres_dsn": "postgresql://x@h/db",
              "web_config_file": write_web_config(tls_dir, text)}, {})
    assert "\n" not in str(info.value)


def test_missing_web_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load({"postgres_dsn": "postgresql://x@h/db",
              "web_config_file": str(tmp_path / "absent.yml")}, {})


def test_cli_refuses_a_client_ca_without_a_client_auth_policy(tls_dir: Path) -> None:
    """The file the toolkit refuses must not run here without client verification."""
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "--postgres-dsn", "postgresql://x@h/db",
         "--listen-address", "127.0.0.1:0",  # should it start after all: not on a public port
         "--web-config-file", write_web_config(tls_dir, MTLS)],
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("prefect-pg-exporter: error: ")
    assert "without a Client Auth Policy" in done.stderr


def test_settings_become_the_context(tls_dir: Path) -> None:
    web = load_web_config(write_web_config(tls_dir, MTLS + (
        "  client_auth_type: VerifyClientCertIfGiven\n"
        "  min_version: TLS13\n"
        "  prefer_server_cipher_suites: false\n")))
    context = web.ssl_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    default = load_web_config(write_web_config(tls_dir, TLS)).ssl_context
    assert default is not None and default.verify_mode == ssl.CERT_NONE
    assert default.minimum_version == ssl.TLSVersion.TLSv1_2  # the toolkit's default
    assert default.options & ssl.OP_CIPHER_SERVER_PREFERENCE  # the toolkit's default
    required = load_web_config(write_web_config(
        tls_dir, MTLS + "  client_auth_type: RequireAndVerifyClientCert\n")).ssl_context
    assert required is not None and required.verify_mode == ssl.CERT_REQUIRED


# The IANA code points of Go's names: the OpenSSL names they map to must be those suites.
IANA = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": 0xC009, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": 0xC00A,
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": 0xC013, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": 0xC014,
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": 0xC02B,
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": 0xC02C,
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": 0xC02F,
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": 0xC030,
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": 0xCCA8,
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": 0xCCA9,
}


@pytest.mark.parametrize("name", sorted(CIPHERS))
def test_each_cipher_suite_is_the_suite_go_names(tls_dir: Path, name: str) -> None:
    text = TLS + f"  cipher_suites: [{name}, TLS_AES_128_GCM_SHA256]\n"  # 1.3: ignored
    context = load_web_config(write_web_config(tls_dir, text)).ssl_context
    assert context is not None
    tls12 = [c["id"] & 0xFFFF for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]
    assert tls12 == [IANA[name]]
    # TLS 1.3 suites are left to OpenSSL, as Go leaves them to itself
    assert {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.3"}


async def _status(url: str, context: ssl.SSLContext) -> int:
    async with httpx.AsyncClient(verify=context) as client:
        return (await client.get(url)).status_code


async def _refused(url: str, context: ssl.SSLContext) -> bool:
    try:
        await _status(url, context)
    except httpx.TransportError:
        return True
    return False


async def test_require_and_verify_client_cert(tls_dir: Path, ca: trustme.CA,
                                              start_exporter: StartExporter) -> None:
    config = write_web_config(tls_dir, MTLS + "  client_auth_type: RequireAndVerifyClientCert\n")
    exporter = await start_exporter(web_config_file=config, postgres_dsn=UNREACHABLE_DSN)
    url = f"https://127.0.0.1:{exporter.port}/metrics"
    assert await _refused(url, client_context(ca))  # no certificate
    stranger = trustme.CA().issue_cert("prometheus")
    assert await _refused(url, client_context(ca, stranger))  # not signed by client_ca_file
    assert await _status(url, client_context(ca, ca.issue_cert("prometheus"))) == 200


async def test_verify_client_cert_if_given(tls_dir: Path, ca: trustme.CA,
                                           start_exporter: StartExporter) -> None:
    config = write_web_config(tls_dir, MTLS + "  client_auth_type: VerifyClientCertIfGiven\n")
    exporter = await start_exporter(web_config_file=config, postgres_dsn=UNREACHABLE_DSN)
    url = f"https://127.0.0.1:{exporter.port}/metrics"
    assert await _status(url, client_context(ca)) == 200  # none given: fine
    assert await _status(url, client_context(ca, ca.issue_cert("prometheus"))) == 200
    stranger = trustme.CA().issue_cert("prometheus")
    assert await _refused(url, client_context(ca, stranger))  # given, so it must verify


async def test_client_allowed_sans(tls_dir: Path, ca: trustme.CA,
                                   start_exporter: StartExporter) -> None:
    config = write_web_config(tls_dir, MTLS + (
        "  client_auth_type: VerifyClientCertIfGiven\n"
        "  client_allowed_sans: [prometheus.monitoring.svc, 'scraper@example.org', '::1']\n"))
    exporter = await start_exporter(web_config_file=config, postgres_dsn=UNREACHABLE_DSN)
    base = f"https://127.0.0.1:{exporter.port}"
    for allowed in ("prometheus.monitoring.svc", "scraper@example.org", "0:0:0:0:0:0:0:1"):
        context = client_context(ca, ca.issue_cert("other.example", allowed))
        assert await _status(f"{base}/metrics", context) == 200, allowed
    other = client_context(ca, ca.issue_cert("grafana.monitoring.svc"))
    assert await _status(f"{base}/metrics", other) == 403
    assert await _status(f"{base}/", client_context(ca)) == 403  # no certificate, no SAN
    assert await _status(f"{base}/healthz", client_context(ca)) == 200  # probes stay open


async def test_one_curve_restricts_the_key_exchange(tls_dir: Path, ca: trustme.CA,
                                                    start_exporter: StartExporter) -> None:
    config = write_web_config(tls_dir, TLS + "  curve_preferences: [CurveP384]\n")
    exporter = await start_exporter(web_config_file=config, postgres_dsn=UNREACHABLE_DSN)
    url = f"https://127.0.0.1:{exporter.port}/healthz"
    for curve, works in (("secp384r1", True), ("prime256v1", False), ("X25519", False)):
        context = client_context(ca)
        context.set_ecdh_curve(curve)
        assert (not await _refused(url, context)) is works, curve


async def test_cipher_suites_apply_to_tls12(tmp_path: Path, ca: trustme.CA,
                                            start_exporter: StartExporter) -> None:
    write_server_cert(tmp_path, ca, trustme.KeyType.RSA)
    config = write_web_config(tmp_path, TLS + (
        "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n  max_version: TLS12\n"))
    exporter = await start_exporter(web_config_file=config, postgres_dsn=UNREACHABLE_DSN)
    url = f"https://127.0.0.1:{exporter.port}/healthz"
    context = client_context(ca)
    context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    assert await _refused(url, context)
    context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384")
    assert await _status(url, context) == 200


async def test_headers_on_every_response(tls_dir: Path, ca: trustme.CA,
                                         start_exporter: StartExporter) -> None:
    headers = {"Strict-Transport-Security": "max-age=31536000; includeSubDomains",
               "X-Content-Type-Options": "nosniff", "X-Frame-Options": "deny",
               "X-XSS-Protection": "0", "Content-Security-Policy": "default-src 'none'"}
    config = write_web_config(tls_dir, TLS + "http_server_config:\n  http2: false\n  headers:\n"
                              + "".join(f'    {k}: "{v}"\n' for k, v in headers.items())
                              + f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    exporter = await start_exporter(web_config_file=config, postgres_dsn=UNREACHABLE_DSN)
    base = f"https://127.0.0.1:{exporter.port}"
    async with httpx.AsyncClient(verify=client_context(ca)) as client:
        responses = [await client.get(f"{base}/metrics", auth=("prometheus", "scrape-pw")),
                     await client.get(f"{base}/metrics"),  # 401
                     await client.get(f"{base}/healthz"),
                     await client.get(f"{base}/nowhere", auth=("prometheus", "scrape-pw"))]
    assert [r.status_code for r in responses] == [200, 401, 200, 404]
    for response in responses:
        assert {k: response.headers.get(k) for k in headers} == headers


async def test_unknown_user_costs_a_bcrypt_like_a_wrong_password(
        tls_dir: Path, ca: trustme.CA, start_exporter: StartExporter,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Otherwise user names can be found by timing the 401."""
    calls: list[bytes] = []
    real = webaccess._checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(webaccess, "_checkpw", counting)
    config = write_web_config(tls_dir, TLS + f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    exporter = await start_exporter(web_config_file=config, postgres_dsn=UNREACHABLE_DSN)
    url = f"https://127.0.0.1:{exporter.port}/metrics"
    async with httpx.AsyncClient(verify=client_context(ca)) as client:
        # the right password of the known user, given for an unknown one
        response = await client.get(url, auth=("grafana", "scrape-pw"))
    assert response.status_code == 401
    assert calls == [b"scrape-pw"]


async def test_remembered_credentials_do_not_outlive_their_hash() -> None:
    """The web config can change under a running exporter: a password verified against the
    old hash must not be let in by the cache once the hash is replaced."""
    auth = webaccess.BasicAuth()
    header = "Basic " + base64.b64encode(b"prometheus:scrape-pw").decode()
    old = {"prometheus": HASH.replace("$2y$", "$2b$", 1).encode()}
    assert await auth.check(old, header)
    assert await auth.check(old, header)  # remembered
    new = {"prometheus": bcrypt.hashpw(b"other-pw", bcrypt.gensalt(4))}
    assert not await auth.check(new, header)
    assert not await auth.check(new, "Basic " + base64.b64encode(b"prometheus").decode())
