"""TLS material and clients for the web config tests: trustme CAs, files on disk, handshakes
against an in-process exporter."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import trustme
from cryptography import x509

from exporter.app import Exporter

UNREACHABLE_DSN = "postgresql://x@127.0.0.1:1/db"  # refused at once: the server is what is tested


def write_server_cert(directory: Path, ca: trustme.CA,
                      key_type: trustme.KeyType = trustme.KeyType.ECDSA) -> trustme.LeafCert:
    """server.crt and server.key for 127.0.0.1 and localhost, replacing what is there."""
    cert = ca.issue_cert("127.0.0.1", "localhost", key_type=key_type)
    cert.private_key_pem.write_to_path(str(directory / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
    return cert


def write_web_config(directory: Path, text: str) -> str:
    path = directory / "web.yml"
    path.write_text(text)
    return str(path)


TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"


def client_context(ca: trustme.CA, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    """A client trusting `ca`, presenting `cert` when given."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


def serial(cert: trustme.LeafCert) -> int:
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).serial_number


async def presented_serial(exporter: Exporter, context: ssl.SSLContext) -> int:
    """The serial of the certificate the exporter presents to a new connection."""
    _, writer = await asyncio.open_connection("127.0.0.1", exporter.port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()
        await writer.wait_closed()
