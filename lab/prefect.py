"""A real Prefect 3 server on 127.0.0.1 whose database goes through the lab PgBouncer.

Prefect lives in a virtualenv of its own (its pins would fight the exporter's), cached under
~/.cache/prefect-pg-exporter so a second run on the same machine does not reinstall it. Through
PgBouncer in transaction pooling, asyncpg's statement caches must be off: these are the variables
that work on 3.8.8 (single underscore; the double-underscore form from forum answers is ignored).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from lab.common import (
    LabError,
    dies_with_parent,
    free_port,
    stop_process,
    wait_for_http,
)
from lab.pgbouncer import LabPgBouncer
from lab.postgres import APP_PASSWORD, APP_ROLE, DATABASE

PREFECT_REQUIREMENTS = ("prefect==3.8.8", "sqlalchemy<2.1", "fastapi==0.150.*")
APPLICATION_NAME = "prefect-server"  # how Prefect's sessions show in pg_stat_activity
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prefect-pg-exporter"


def prefect_venv() -> Path:
    """The virtualenv with the pinned Prefect server, installed on first use."""
    venv = CACHE / "prefect-3.8.8"
    ready = venv / ".installed"
    if ready.exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                           "--disable-pip-version-check", *PREFECT_REQUIREMENTS],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise LabError(f"installing {' '.join(PREFECT_REQUIREMENTS)} failed: "
                       f"{done.stderr.strip()[-2000:]}")
    ready.touch()
    return venv


class LabPrefect:
    def __init__(self, root: Path, bouncer: LabPgBouncer, *, late_after_seconds: int = 15,
                 services: bool = True, extra_env: dict[str, str] | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.bouncer = bouncer
        self.port = free_port()
        self.log = root / "prefect.log"
        self.late_after_seconds = late_after_seconds
        self.services = services
        self.extra_env = extra_env or {}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self) -> dict[str, str]:
        prefix = "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_"
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "PREFECT_HOME": str(self.root / "home"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL":
                f"postgresql+asyncpg://{APP_ROLE}:{APP_PASSWORD}@127.0.0.1:{self.bouncer.port}/"
                f"{DATABASE}",
            prefix + "STATEMENT_CACHE_SIZE": "0",
            prefix + "PREPARED_STATEMENT_CACHE_SIZE": "0",
            prefix + "APPLICATION_NAME": APPLICATION_NAME,
            "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": str(self.late_after_seconds),
            "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            **self.extra_env,
        }

    def start(self, timeout: float = 120) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        venv = prefect_venv()
        argv = [str(venv / "bin" / "prefect"), "server", "start", "--host", "127.0.0.1",
                "--port", str(self.port)]
        if not self.services:
            argv.append("--no-services")
        log = self.log.open("ab")
        self._proc = subprocess.Popen(argv, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True,
                                      preexec_fn=dies_with_parent(),
                                      cwd=self.root)
        wait_for_http(f"{self.api_url}/health", timeout, "prefect server", self._proc, self.log)

    def stop(self) -> None:
        stop_process(self._proc, timeout=20)


def start_prefect(root: Path, bouncer: LabPgBouncer, **kwargs: Any) -> LabPrefect:
    prefect = LabPrefect(root, bouncer, **kwargs)
    prefect.start()
    return prefect
