"""Real Prefect servers on 127.0.0.1, each release in a virtualenv of its own.

Prefect lives in virtualenvs of its own (its pins would fight the exporter's, and each release's
pins fight the others'), cached under ~/.cache/prefect-pg-exporter/prefect-<version> so a second
run on the same machine does not reinstall them. `install_prefect_venvs()` installs several
releases at once (they are I/O bound: together they take about as long as one).

A server's database goes through a PgBouncer or straight to a PostgreSQL (its `route`). Through
PgBouncer in transaction pooling, asyncpg's statement caches must be off: these variables work
from 3.2.7 (single underscore; the double-underscore form from forum answers is ignored); older
releases have no way to turn them off and must not be given a transaction-pooling route.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lab.common import (
    LabError,
    dies_with_parent,
    free_port,
    stop_process,
    tail,
    wait_for_http,
)
from lab.pgbouncer import LabPgBouncer
from lab.postgres import APP_PASSWORD, APP_ROLE, DATABASE, LabPostgres

APPLICATION_NAME = "prefect-server"  # how Prefect's sessions show in pg_stat_activity
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prefect-pg-exporter"


@dataclass(frozen=True)
class PrefectRelease:
    """A Prefect release and the pins that make it install and run today: its own dependency
    ranges are open-ended, and newer FastAPI/SQLAlchemy releases break older Prefects
    (`Body(min_items=...)` refused by FastAPI >= 0.120)."""

    version: str
    pins: tuple[str, ...] = ()

    @property
    def requirements(self) -> tuple[str, ...]:
        return (f"prefect=={self.version}", *self.pins)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def series(self) -> str:
        """"3.8" for 3.8.8: the name the tests and the database use."""
        return ".".join(self.version.split(".")[:2])

    @property
    def venv(self) -> Path:
        return CACHE / f"prefect-{self.version}"


DEFAULT_RELEASE = PrefectRelease("3.8.8", ("sqlalchemy<2.1", "fastapi==0.150.*"))
# The releases the version matrix runs against: the last 2.x, the latest of 3.1 and 3.4, the
# default and the latest. 3.1's pins are those of its time (January 2025); newer pydantic-settings
# warn on its settings classes. 3.1 and 3.4 import importlib_metadata (prefect/workers/base.py)
# without declaring it: it used to come with opentelemetry-api.
RELEASES = (
    PrefectRelease("2.20.27"),
    PrefectRelease("3.1.15", ("fastapi==0.115.*", "sqlalchemy<2.1", "pydantic<2.11",
                              "pydantic-settings<2.8", "importlib_metadata")),
    PrefectRelease("3.4.25", ("fastapi<0.120", "sqlalchemy<2.1", "importlib_metadata")),
    DEFAULT_RELEASE,
    PrefectRelease("3.9.1"),
)


def _lock_file(release: PrefectRelease) -> IO[str]:
    """One installer per release at a time, across processes (parallel test runs share the
    cache): an flock on this file, released when it is closed (or its process dies)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    return (CACHE / f".prefect-{release.version}.lock").open("w")


def _installed(release: PrefectRelease) -> bool:
    return (release.venv / ".installed").exists()


def _pip(release: PrefectRelease, nice: int) -> subprocess.Popen[bytes]:
    def preexec() -> None:
        dies_with_parent()()  # a killed test run leaves no pip behind
        os.nice(nice)

    argv = [str(release.venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
            *release.requirements]
    if nice and shutil.which("ionice"):
        argv = ["ionice", "-c", "3", *argv]  # and the disk only when idle (it writes ~250 MB)
    log = (CACHE / f".prefect-{release.version}.log").open("wb")
    with log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=preexec)


def _new_venvs(releases: Sequence[PrefectRelease]) -> None:
    """Empty virtualenvs (with pip), created at once: ensurepip takes seconds each."""
    procs = [subprocess.Popen([sys.executable, "-m", "venv", "--clear", str(r.venv)])
             for r in releases]
    if any(p.wait() != 0 for p in procs):
        raise LabError("python -m venv failed")


@dataclass
class PendingInstall:
    release: PrefectRelease
    proc: subprocess.Popen[bytes]
    lock: IO[str]


def start_installs(releases: Iterable[PrefectRelease], nice: int = 0) -> list[PendingInstall]:
    """Starts pip for every release missing here and not being installed by another process,
    without waiting: pip spends its time downloading and unpacking, so several releases take
    about as long as one. `nice` lets a background install yield the CPU to tests."""
    todo: list[tuple[PrefectRelease, IO[str]]] = []
    for release in releases:
        if _installed(release):
            continue
        lock = _lock_file(release)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process installs it: prefect_venv() waits for it
            lock.close()
            continue
        if _installed(release):
            lock.close()
        else:
            todo.append((release, lock))
    _new_venvs([r for r, _ in todo])
    return [PendingInstall(r, _pip(r, nice), lock) for r, lock in todo]


def finish_installs(pending: Iterable[PendingInstall]) -> None:
    """Waits for the installs (at full priority from now on, where the system allows it)."""
    failed = []
    for install in pending:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, install.proc.pid, 0)
        if install.proc.wait() == 0:
            (install.release.venv / ".installed").touch()
        else:
            log = CACHE / f".prefect-{install.release.version}.log"
            failed.append(f"installing {' '.join(install.release.requirements)} failed: "
                          f"{tail(log, 20)}")
        install.lock.close()
    if failed:
        raise LabError("; ".join(failed))


def prefect_venv(release: PrefectRelease = DEFAULT_RELEASE) -> Path:
    """The virtualenv with that Prefect release, installed on first use (or waited for, when
    another process is installing it)."""
    if _installed(release):
        return release.venv
    with _lock_file(release) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed(release):
            _new_venvs([release])
            finish_installs([PendingInstall(release, _pip(release, 0), lock)])
    return release.venv


def install_prefect_venvs(releases: Sequence[PrefectRelease]) -> None:
    """Installs the missing virtualenvs concurrently, and waits for those other processes are
    installing."""
    finish_installs(start_installs(releases))
    for release in releases:
        prefect_venv(release)


def _database_env(release: PrefectRelease, url: str, pool_size: int | None,
                  max_overflow: int | None) -> dict[str, str]:
    """The connection settings, by the names this release reads."""
    pool = {"POOL_SIZE": pool_size, "MAX_OVERFLOW": max_overflow}
    if release.major == 2:
        return {"PREFECT_API_DATABASE_CONNECTION_URL": url,
                **{f"PREFECT_SQLALCHEMY_{k}": str(v) for k, v in pool.items() if v is not None}}
    prefix = "PREFECT_SERVER_DATABASE_SQLALCHEMY_"
    return {"PREFECT_SERVER_DATABASE_CONNECTION_URL": url,
            # read from 3.2.7 (3.1.13 for the application name); older releases ignore them
            prefix + "CONNECT_ARGS_STATEMENT_CACHE_SIZE": "0",
            prefix + "CONNECT_ARGS_PREPARED_STATEMENT_CACHE_SIZE": "0",
            prefix + "CONNECT_ARGS_APPLICATION_NAME": APPLICATION_NAME,
            **{prefix + k: str(v) for k, v in pool.items() if v is not None}}


def _services_env(release: PrefectRelease, late_after_seconds: int) -> dict[str, str]:
    if release.major == 2:
        prefix, after = "PREFECT_API_SERVICES_", str(late_after_seconds)
    else:  # a timedelta: 3.1 parses only ISO 8601 ("5" fails), later releases both
        prefix, after = "PREFECT_SERVER_SERVICES_", f"PT{late_after_seconds}S"
    return {prefix + "LATE_RUNS_AFTER_SECONDS": after,
            prefix + "LATE_RUNS_LOOP_SECONDS": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # PREFECT_UI_ENABLED: the 2.x name, an alias in 3.x
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING"}


class LabPrefect:
    def __init__(self, root: Path, route: LabPgBouncer | LabPostgres, *,
                 release: PrefectRelease = DEFAULT_RELEASE, database: str = DATABASE,
                 late_after_seconds: int = 15, services: bool = True, csrf: bool = False,
                 pool_size: int | None = None, max_overflow: int | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        if not services and release.major == 2:
            raise LabError("Prefect 2 has no --no-services")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.route = route
        self.release = release
        self.database = database
        self.port = free_port()
        self.log = root / "prefect.log"
        self.late_after_seconds = late_after_seconds
        self.services = services
        self.csrf = csrf
        self.pool_size = pool_size  # None: the release's default
        self.max_overflow = max_overflow
        self.extra_env = extra_env or {}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def database_url(self) -> str:
        return (f"postgresql+asyncpg://{APP_ROLE}:{APP_PASSWORD}@127.0.0.1:{self.route.port}/"
                f"{self.database}")

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "PREFECT_HOME": str(self.root / "home"),
            **_database_env(self.release, self.database_url, self.pool_size,
                            self.max_overflow),
            **_services_env(self.release, self.late_after_seconds),
            # the 2.x name, an alias in 3.x
            "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true" if self.csrf else "false",
            **self.extra_env,
        }

    def launch(self) -> None:
        """Starts the server without waiting for it (see wait_ready): several servers migrate
        their databases at once."""
        if self._proc is not None and self._proc.poll() is None:
            return
        venv = prefect_venv(self.release)
        argv = [str(venv / "bin" / "prefect"), "server", "start", "--host", "127.0.0.1",
                "--port", str(self.port)]
        if not self.services:
            argv.append("--no-services")
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(argv, env=self.env(), stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True,
                                          preexec_fn=dies_with_parent(), cwd=self.root)

    def wait_ready(self, timeout: float = 120) -> None:
        assert self._proc is not None, "launch() first"
        wait_for_http(f"{self.api_url}/health", timeout, f"prefect {self.release.version} server",
                      self._proc, self.log)

    def start(self, timeout: float = 120) -> None:
        self.launch()
        self.wait_ready(timeout)

    def stop(self) -> None:
        stop_process(self._proc, timeout=20)


def start_prefect(root: Path, route: LabPgBouncer | LabPostgres, **kwargs: Any) -> LabPrefect:
    prefect = LabPrefect(root, route, **kwargs)
    prefect.start()
    return prefect
