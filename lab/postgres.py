"""A throwaway PostgreSQL on 127.0.0.1, in a directory of its own, run unprivileged."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

from lab.common import (
    LabError,
    RunAs,
    dies_with_parent,
    find_binary,
    free_port,
    make_dir,
    run_as,
    stop_process,
    tail,
    wait_for_port,
)
from lab.waiting import TimedOut, until

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "lab-superuser-secret"
MONITOR_ROLE = "prefect_exporter"  # only pg_monitor: the least privilege the docs recommend
MONITOR_PASSWORD = "lab-monitor-secret"
DATABASE = "prefect"
APP_ROLE, APP_PASSWORD = "prefect", "lab-prefect-secret"  # the Prefect server's own role
SCRATCH_SCHEMA = "scratch"  # the tests' and demo's own tables, apart from Prefect's in public

_PG_GLOBS = ("/usr/lib/postgresql/*/bin/{name}",)


def _bin(name: str) -> str:
    return find_binary(name, [g.format(name=name) for g in _PG_GLOBS])


class LabPostgres:
    def __init__(self, root: Path, *, max_connections: int = 100,
                 extra_settings: dict[str, str] | None = None) -> None:
        self.who: RunAs = run_as()
        self.root = make_dir(root, self.who)
        self.data = self.root / "data"
        self.socket_dir = make_dir(self.root / "socket", self.who)
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.max_connections = max_connections
        self.extra_settings = extra_settings or {}
        self._proc: subprocess.Popen[bytes] | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        self.who.own(pwfile)
        self._run([_bin("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--pwfile",
                   str(pwfile), "--auth-host=scram-sha-256", "--auth-local=trust",
                   "--no-sync", "-E", "UTF8", "--locale=C"])
        pwfile.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": str(self.max_connections),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
            # the slowest statements (#25): loaded at start, created in the lab database
            "shared_preload_libraries": "'pg_stat_statements'",
            **self.extra_settings,
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# prefect-pg-exporter lab\n")
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        log = self.log.open("ab")
        self._proc = subprocess.Popen(
            [_bin("postgres"), "-D", str(self.data)], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            # SIGQUIT: immediate shutdown (SIGTERM would wait for every client to leave)
            preexec_fn=dies_with_parent(signal.SIGQUIT), **self.who.popen_kwargs())
        wait_for_port(self.port, 30, "postgres", self._proc, self.log)
        self._wait_accepting()

    def _wait_accepting(self) -> None:
        def accepting() -> bool:
            return subprocess.run(
                [_bin("pg_isready"), "-h", str(self.socket_dir), "-p", str(self.port)],
                capture_output=True).returncode == 0

        try:
            until(accepting, 30, "postgres accepting connections")
        except TimedOut:
            raise LabError(f"postgres not ready: {tail(self.log)}") from None

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: 'fast' (SIGINT, disconnects clients) or 'immediate' (SIGQUIT)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGINT if mode == "fast" else signal.SIGQUIT)
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            stop_process(self._proc)

    def setup(self) -> None:
        """The lab's database, owned by Prefect's role, a scratch schema for tables of the tests'
        own, and a monitoring role with only pg_monitor."""
        self.psql(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{APP_PASSWORD}'", database="postgres")
        self.psql(f"CREATE DATABASE {DATABASE} OWNER {APP_ROLE}", database="postgres")
        self.psql(f"CREATE SCHEMA {SCRATCH_SCHEMA}")
        self.psql("CREATE EXTENSION pg_stat_statements")
        self.psql(f"CREATE ROLE {MONITOR_ROLE} LOGIN PASSWORD '{MONITOR_PASSWORD}' "
                  f"IN ROLE pg_monitor", database="postgres")

    def create_database(self, name: str) -> None:
        """Another database owned by Prefect's role: one per Prefect server that must not see
        the others' flow runs (the version matrix)."""
        self.psql(f"CREATE DATABASE {name} OWNER {APP_ROLE}", database="postgres")

    # --- access ----------------------------------------------------------------------------
    def dsn(self, user: str = SUPERUSER, password: str | None = SUPERUSER_PASSWORD,
            database: str = DATABASE) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def monitor_dsn(self) -> str:
        return self.dsn(MONITOR_ROLE, MONITOR_PASSWORD)

    def psql(self, sql: str, database: str = DATABASE) -> str:
        done = subprocess.run(
            [_bin("psql"), "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER,
             "-d", database, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, **self.who.popen_kwargs())
        if done.returncode != 0:
            raise LabError(f"psql failed: {sql[:80]}: {done.stderr.strip()}")
        return done.stdout.strip()

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, **self.who.popen_kwargs())
        if done.returncode != 0:
            raise LabError(f"{argv[0]} failed: {done.stderr.strip() or done.stdout.strip()}")


def start_postgres(root: Path, **kwargs: Any) -> LabPostgres:
    pg = LabPostgres(root, **kwargs)
    pg.init()
    pg.start()
    pg.setup()
    return pg
