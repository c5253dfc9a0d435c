"""TLS and basic auth for the HTTP endpoints, in the web configuration file format of the
Prometheus exporter toolkit (`--web.config.file`), so users reuse what they know:

    tls_server_config:
      cert_file: server.crt          # paths relative to this file
      key_file: server.key
      client_ca_file: ca.crt         # optional: mutual TLS
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12
    http_server_config:
      headers:
        Strict-Transport-Security: max-age=31536000
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')

This module reads and checks the file into a WebConfig; webreload.py re-reads it when it
changes and webaccess.py applies it to requests. What Python's ssl cannot do as Go's crypto/tls
does is refused with the reason, never approximated: a setting that silently means something
else is worse than an error at startup.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPEN_PATHS = frozenset({"/healthz", "/readyz"})

# client_auth_type values whose Go meaning OpenSSL can reproduce. Python's ssl has no verify
# callback: a certificate it asks for is always verified (CERT_OPTIONAL, CERT_REQUIRED).
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Go's "ask (or require) a certificate but do not verify it", and the toolkit's old alias.
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# Go's secure TLS 1.0-1.2 suites (tls.CipherSuites()) by their OpenSSL names. RSA key exchange,
# 3DES, RC4 and CBC-SHA256 suites are in Go's InsecureCipherSuites(): refused, as the toolkit
# refuses them.
CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# Accepted and ignored, as Go ignores them: TLS 1.3 suites are not configurable there either.
TLS13_CIPHERS = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                           "TLS_CHACHA20_POLY1305_SHA256"})
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1",
          "X25519": "X25519"}
# The toolkit's only configurable response headers; an empty tuple means any value.
HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}")
_TOP_KEYS = frozenset({"tls_server_config", "http_server_config", "basic_auth_users"})
_TLS_KEYS = frozenset({"cert_file", "key_file", "client_ca_file", "client_ca",
                       "client_auth_type", "min_version", "max_version", "cipher_suites",
                       "curve_preferences", "prefer_server_cipher_suites",
                       "client_allowed_sans"})


class WebConfigError(ValueError):
    pass


@dataclass(frozen=True)
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict, repr=False)  # user -> bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)  # added to every response
    allowed_sans: frozenset[str] = frozenset()  # client certificate SANs let in (empty: any)
    path: str | None = None  # the file, when there is one
    files: tuple[str, ...] = ()  # the file and the TLS files it names: watched for changes


def load_web_config(path: str) -> WebConfig:
    try:
        data = _read(path)
        base = Path(path).parent
        tls = _tls(data.get("tls_server_config"), base)
        headers = _http_server_config(data.get("http_server_config"))
        users = _users(data.get("basic_auth_users"))
    except WebConfigError as exc:
        raise WebConfigError(f"web config {path}: {exc}") from None
    if tls is None:
        return WebConfig(users=users, headers=headers, path=path, files=(path,))
    return WebConfig(tls.context, users, headers, tls.allowed_sans, path, (path, *tls.files))


def named_files(path: str) -> tuple[str, ...]:
    """The file and the TLS files it names, read leniently: what to watch after a failed load,
    so that creating a missing certificate is noticed."""
    try:
        section = _read(path).get("tls_server_config")
    except WebConfigError:
        return (path,)
    if not isinstance(section, dict):
        return (path,)
    base = Path(path).parent
    named = (section.get(key) for key in ("cert_file", "key_file", "client_ca_file"))
    return (path, *(str(base / name) for name in named if isinstance(name, str) and name))


def _read(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise WebConfigError(exc.strerror or type(exc).__name__) from None
    except UnicodeDecodeError:
        raise WebConfigError("not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise WebConfigError(f"not valid YAML{_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise WebConfigError("expected a mapping")
    if "rate_limit" in data:
        raise WebConfigError("rate_limit is not supported: limit scrapes in front of the "
                             "exporter (it serves /metrics from memory, a scrape costs little)")
    _refuse_unknown(data, _TOP_KEYS, "")
    return data


def _yaml_problem(exc: Exception) -> str:
    """Where and what, never the text: PyYAML quotes what it could not read (an alias, a tag)
    and shows the line, and a file named by mistake may hold hashes or keys."""
    import yaml

    if isinstance(exc, yaml.reader.ReaderError):
        return f" at character {exc.position + 1}: a character YAML does not allow"
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return ""
    mark = exc.problem_mark
    problem = re.sub(r"'[^']*'|\"[^\"]*\"", _token_or_ellipsis, exc.problem or "").rstrip()
    return f" at line {mark.line + 1}, column {mark.column + 1}" + (
        f": {problem}" if problem else "")


def _token_or_ellipsis(quoted: re.Match[str]) -> str:
    """PyYAML's token names ('<block end>') and punctuation (',') kept, anything else hidden."""
    text = quoted.group(0)
    return text if re.fullmatch(r"'(<[a-z ]+>|[^\w\s'\\])'", text) else "…"


def _refuse_unknown(section: Mapping[Any, Any], known: frozenset[str], where: str) -> None:
    """Unknown keys named when they look like a setting (a typo); anything else (a file named by
    mistake, whose keys may be secrets) only counted."""
    unknown = sorted(map(str, set(section) - known))
    if not unknown:
        return
    names = [key for key in unknown if re.fullmatch(r"[a-z][a-z_]{0,39}", key)]
    others = len(unknown) - len(names)
    listed = ", ".join(names + ([f"{others} other(s) not shown"] if others else []))
    raise WebConfigError(f"{where}unknown key(s) {listed}")


# ---- tls_server_config ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tls:
    context: ssl.SSLContext
    allowed_sans: frozenset[str]
    files: tuple[str, ...]


def _tls(raw: Any, base: Path) -> _Tls | None:
    section = _mapping(raw, "tls_server_config")
    if {"cert", "key"} & set(section):
        raise WebConfigError("tls_server_config: inline cert and key are not supported (Python's "
                             "ssl loads them only from files): use cert_file and key_file")
    _refuse_unknown(section, _TLS_KEYS, "tls_server_config: ")
    if not section:
        return None
    if not _text(section, "cert_file") or not _text(section, "key_file"):
        # the toolkit serves plain HTTP when only versions or ciphers are set: refused here
        raise WebConfigError("tls_server_config needs cert_file and key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    files = _load_certificate(context, section, base)
    ca_files = _client_auth(context, section, base)
    _versions(context, section)
    _ciphers(context, section)
    _curve(context, section)
    _server_preference(context, section)
    sans = _allowed_sans(section, context.verify_mode)
    return _Tls(context, sans, files + ca_files)


def _load_certificate(context: ssl.SSLContext, section: dict[str, Any],
                      base: Path) -> tuple[str, ...]:
    cert_file, key_file = _text(section, "cert_file"), _text(section, "key_file")
    cert, key = str(base / cert_file), str(base / key_file)
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError is one
        raise WebConfigError(f"cannot load certificate or key ({cert_file}, {key_file}): "
                             f"{_reason(exc)}") from None
    return cert, key


def _client_auth(context: ssl.SSLContext, section: dict[str, Any],
                 base: Path) -> tuple[str, ...]:
    """The verify mode and the CAs client certificates must chain to."""
    auth = _text(section, "client_auth_type") or "NoClientCert"
    if auth in UNVERIFIED_CLIENT_AUTH:
        raise WebConfigError(
            f"client_auth_type {auth} takes client certificates without verifying them, which "
            "Python's ssl cannot do (it verifies every certificate it asks for): use "
            "VerifyClientCertIfGiven or RequireAndVerifyClientCert with a client_ca_file")
    if auth not in CLIENT_AUTH:
        raise WebConfigError(f"invalid ClientAuth: {auth} (one of {', '.join(CLIENT_AUTH)})")
    ca_file, ca_text = _text(section, "client_ca_file"), _text(section, "client_ca")
    if (ca_file or ca_text) and auth == "NoClientCert":
        raise WebConfigError("client CA's have been configured without a Client Auth Policy: "
                             "set client_auth_type to RequireAndVerifyClientCert or "
                             "VerifyClientCertIfGiven")
    if auth != "NoClientCert" and not (ca_file or ca_text):
        # Go would fall back to the system's CAs: any certificate a public CA signs gets in
        raise WebConfigError(f"client_auth_type {auth} needs client_ca_file, the CA(s) client "
                             "certificates must chain to (the system's CAs are not used)")
    context.verify_mode = CLIENT_AUTH[auth]
    try:
        if ca_file:
            context.load_verify_locations(cafile=str(base / ca_file))
        elif ca_text:
            context.load_verify_locations(cadata=ca_text)
    except OSError as exc:
        raise WebConfigError(f"cannot load the client CA: {_reason(exc)}") from None
    return (str(base / ca_file),) if ca_file else ()


def _versions(context: ssl.SSLContext, section: dict[str, Any]) -> None:
    # the toolkit's defaults, whatever Python's or OpenSSL's are
    versions = {"min_version": "TLS12", "max_version": "TLS13"}
    for key in versions:
        value = _text(section, key) or versions[key]
        if value not in TLS_VERSIONS:
            raise WebConfigError(f"{key}: unknown TLS version: {value} "
                                 f"(one of {', '.join(TLS_VERSIONS)})")
        versions[key] = value
    minimum, maximum = TLS_VERSIONS[versions["min_version"]], TLS_VERSIONS[versions["max_version"]]
    if minimum > maximum:
        raise WebConfigError(f"min_version {versions['min_version']} is above max_version "
                             f"{versions['max_version']}")
    context.minimum_version, context.maximum_version = minimum, maximum


def _ciphers(context: ssl.SSLContext, section: dict[str, Any]) -> None:
    names = _text_list(section, "cipher_suites")
    if not names:
        return
    for name in names:
        if name not in CIPHERS and name not in TLS13_CIPHERS:
            raise WebConfigError(f"unknown cipher: {name} (Go's names of secure TLS 1.2 suites, "
                                 "e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)")
    tls12 = [CIPHERS[name] for name in names if name in CIPHERS]
    if not tls12:
        raise WebConfigError("cipher_suites lists only TLS 1.3 suites, which are not "
                             "configurable: that leaves TLS 1.2 none; set min_version: TLS13 "
                             "instead")
    context.set_ciphers(":".join(tls12))  # TLS 1.2 and below only; TLS 1.3 keeps its own


def _curve(context: ssl.SSLContext, section: dict[str, Any]) -> None:
    names = _text_list(section, "curve_preferences")
    for name in names:
        if name not in CURVES:
            raise WebConfigError(f"unknown curve: {name} (one of {', '.join(CURVES)})")
    if len(names) > 1:
        raise WebConfigError("curve_preferences: Python's ssl can restrict the key exchange to "
                             "one curve only (SSLContext.set_ecdh_curve): list one, or none for "
                             "OpenSSL's defaults")
    if names:
        # on OpenSSL 3 this sets the groups offered, for TLS 1.3 and 1.2 alike
        context.set_ecdh_curve(CURVES[names[0]])


def _server_preference(context: ssl.SSLContext, section: dict[str, Any]) -> None:
    prefer = section.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise WebConfigError("prefer_server_cipher_suites must be true or false")
    if prefer:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE


def _allowed_sans(section: dict[str, Any], verify_mode: ssl.VerifyMode) -> frozenset[str]:
    if "client_allowed_sans" not in section:
        return frozenset()
    sans = _text_list(section, "client_allowed_sans")
    if verify_mode == ssl.CERT_NONE:
        # the toolkit silently checks nothing then: no certificate is asked for
        raise WebConfigError("client_allowed_sans needs client_auth_type "
                             "RequireAndVerifyClientCert or VerifyClientCertIfGiven")
    if not sans:
        raise WebConfigError("client_allowed_sans is empty: no client could get in")
    return frozenset(normalise_san(san) for san in sans)


def normalise_san(value: str) -> str:
    """IP addresses in one spelling (Go prints 2001:db8::1, OpenSSL 2001:DB8:0:0:0:0:0:1)."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value


# ---- http_server_config -----------------------------------------------------------------------

def _http_server_config(raw: Any) -> dict[str, str]:
    section = _mapping(raw, "http_server_config")
    _refuse_unknown(section, frozenset({"headers", "http2"}), "http_server_config: ")
    http2 = section.get("http2", False)
    if not isinstance(http2, bool):
        raise WebConfigError("http_server_config: http2 must be true or false")
    if http2:
        raise WebConfigError("http_server_config: http2: true is not supported: the exporter's "
                             "HTTP server (aiohttp) speaks HTTP/1.1 only; set http2: false or "
                             "leave it out")
    return _headers(section.get("headers"))


def _headers(raw: Any) -> dict[str, str]:
    headers = {}
    for name, value in _mapping(raw, "http_server_config: headers").items():
        if name not in HEADERS:
            raise WebConfigError(f'HTTP header "{name}" can not be configured')
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise WebConfigError(f"invalid value for {name}: expected a string")
        text = str(value)
        allowed = HEADERS[name]
        if allowed and text not in allowed:
            expected = " ".join(f'"{a}"' for a in allowed)
            raise WebConfigError(f'invalid value for {name}. Expected one of: [{expected}], '
                                 f'but got: "{text}"')
        if re.search(r"[\x00-\x1f\x7f]", text):
            raise WebConfigError(f"invalid value for {name}: control characters")
        headers[str(name)] = text
    return headers


# ---- basic_auth_users -------------------------------------------------------------------------

def _users(raw: Any) -> dict[str, bytes]:
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise WebConfigError("basic_auth_users must map users to hashes")
    result = {}
    for user, hashed in raw.items():
        # checked now, as the toolkit does: a malformed hash would fail every scrape later
        if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
            raise WebConfigError(f"the password of {str(user)!r} must be a bcrypt hash "
                                 "($2y$10$... as htpasswd -nB makes), not a plain password")
        result[str(user)] = hashed.replace("$2y$", "$2b$", 1).encode()
    return result


# ---- small readers ----------------------------------------------------------------------------

def _mapping(raw: Any, name: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise WebConfigError(f"{name} must be a mapping")
    return dict(raw)


def _text(section: dict[str, Any], key: str) -> str:
    value = section.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WebConfigError(f"{key} must be a string")
    return value


def _text_list(section: dict[str, Any], key: str) -> list[str]:
    value = section.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WebConfigError(f"{key} must be a list of strings")
    return value


def _reason(exc: OSError) -> str:
    """OpenSSL's words without its source location: '[X509: KEY_VALUES_MISMATCH] key values
    mismatch (_ssl.c:3926)' -> 'key values mismatch'."""
    text = re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", exc.strerror or str(exc))
    return "not a PEM certificate or key" if text == "PEM lib" else text
