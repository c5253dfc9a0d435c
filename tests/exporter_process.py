"""The exporter as a real process, for what an in-process server cannot show: its own file
descriptor limit, its own event loop under a client storm, what it writes to stderr."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class ExporterProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def exporter_process(tmp_path: Path, env: dict[str, str], nofile: int | None = None,
                     timeout: float = 30) -> Iterator[ExporterProcess]:
    """Started on a free loopback port with JSON logs to a file (a pipe nobody reads would
    block a chatty exporter), ready once /healthz answers; stopped with SIGTERM."""
    port = free_port()
    log_path = tmp_path / f"exporter-{port}.log"

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter"], stdout=log, stderr=log, preexec_fn=limit,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                 "PREFECT_PG_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
                 "PREFECT_PG_EXPORTER_LOG_FORMAT": "json", **env})
    running = ExporterProcess(proc, port, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"the exporter exited: {running.log()}"
            try:
                if httpx.get(f"{running.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"never healthy: {running.log()}"
            time.sleep(0.1)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
