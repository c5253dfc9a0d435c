"""The exporter as a real process (`python -m exporter`), for what an in-process server cannot
show: its own file descriptor limit, its own event loop under a client storm, what it writes
to stderr, its exit status, a restart or a kill."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from lab.common import free_port
from lab.waiting import until


class ExporterProcess:
    """On a free loopback port of its own, with JSON logs appended to one file over every start
    (a pipe nobody reads would block a chatty exporter); started and stopped (or killed) at
    will."""

    def __init__(self, tmp_path: Path, env: dict[str, str], nofile: int | None = None) -> None:
        self.port = free_port()
        self.log_path = tmp_path / f"exporter-{self.port}.log"
        self.nofile = nofile
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "PREFECT_PG_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{self.port}",
                    "PREFECT_PG_EXPORTER_LOG_FORMAT": "json", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, ready: str = "/healthz", timeout: float = 30) -> None:
        """Started, and waited for until `ready` answers 200 (/readyz: every source polled once,
        its incidents judged)."""
        nofile = self.nofile

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "exporter"], stdout=log,
                                         stderr=log, preexec_fn=limit, env=self.env)
        proc = self.proc

        def answers() -> bool:
            assert proc.poll() is None, f"the exporter exited {proc.returncode}: {self.log()}"
            try:
                return httpx.get(f"{self.url}{ready}", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        try:
            until(answers, timeout, f"the exporter's {ready}")
        except AssertionError:
            self.stop(signal.SIGKILL)
            raise

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Sent `sig` and waited for: its exit status (0 after a clean SIGTERM)."""
        proc, self.proc = self.proc, None
        assert proc is not None, "the exporter is not running"
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


@contextmanager
def exporter_process(tmp_path: Path, env: dict[str, str], nofile: int | None = None,
                     timeout: float = 30, ready: str = "/healthz") -> Iterator[ExporterProcess]:
    """An ExporterProcess started, ready once `ready` answers; stopped with SIGTERM after."""
    running = ExporterProcess(tmp_path, env, nofile)
    running.start(ready, timeout)
    try:
        yield running
    finally:
        if running.proc is not None:
            running.stop()
