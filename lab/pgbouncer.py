"""A PgBouncer 1.18+ on 127.0.0.1 in transaction pooling mode in front of the lab PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab.common import Daemon, RunAs, find_binary, free_port, make_dir, run_as
from lab.postgres import (
    APP_PASSWORD,
    APP_ROLE,
    DATABASE,
    SUPERUSER,
    SUPERUSER_PASSWORD,
    LabPostgres,
)

ADMIN_USER, ADMIN_PASSWORD = "pgb_admin", "lab-pgb-admin-secret"
STATS_USER, STATS_PASSWORD = "pgb_stats", "lab-pgb-stats-secret"  # stats_users: read-only SHOW
# Startup parameters PgBouncer does not track and would refuse a client for (asyncpg and JDBC
# send extra_float_digits; some clients send options or timeouts).
IGNORED_STARTUP_PARAMETERS = "extra_float_digits,options,statement_timeout,lock_timeout"


class LabPgBouncer(Daemon):
    what = "pgbouncer"

    def __init__(self, root: Path, postgres: LabPostgres, *, pool_size: int = 5,
                 pool_mode: str = "transaction", max_client_conn: int = 200,
                 databases: tuple[str, ...] = (DATABASE,)) -> None:
        self.who: RunAs = run_as()
        self.root = make_dir(root, self.who)
        self.postgres = postgres
        self.port = free_port()
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self.max_client_conn = max_client_conn
        self.databases = databases
        self.log = self.root / "pgbouncer.log"
        self.ini = self.root / "pgbouncer.ini"
        self._write_config()

    def _write_config(self) -> None:
        users = {SUPERUSER: SUPERUSER_PASSWORD, ADMIN_USER: ADMIN_PASSWORD,
                 STATS_USER: STATS_PASSWORD, APP_ROLE: APP_PASSWORD}
        userlist = self.root / "userlist.txt"
        userlist.write_text("".join(f'"{u}" "{p}"\n' for u, p in users.items()))
        pg = f"host=127.0.0.1 port={self.postgres.port}"
        routes = "".join(f"{db} = {pg} dbname={db}\n" for db in (*self.databases, "postgres"))
        self.ini.write_text(f"""[databases]
{routes}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
admin_users = {ADMIN_USER}
stats_users = {STATS_USER}
pool_mode = {self.pool_mode}
default_pool_size = {self.pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = {self.max_client_conn}
ignore_startup_parameters = {IGNORED_STARTUP_PARAMETERS}
server_check_delay = 1
logfile = {self.log}
pidfile = {self.root / "pgbouncer.pid"}
""")
        for path in (userlist, self.ini):
            path.chmod(0o600)
            self.who.own(path)

    def _argv(self) -> list[str]:
        return [find_binary("pgbouncer", ["/usr/sbin/pgbouncer"]), str(self.ini)]

    def dsn(self, user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD,
            database: str = DATABASE) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def admin_dsn(self) -> str:
        return self.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgbouncer")

    def stats_dsn(self) -> str:
        return self.dsn(STATS_USER, STATS_PASSWORD, "pgbouncer")


def start_pgbouncer(root: Path, postgres: LabPostgres, **kwargs: Any) -> LabPgBouncer:
    bouncer = LabPgBouncer(root, postgres, **kwargs)
    bouncer.start()
    return bouncer
