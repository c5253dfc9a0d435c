"""The deploy stack's SQL and pgbouncer.ini, run on a real PostgreSQL and PgBouncer."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from lab.common import find_binary, free_port, make_dir, run_as, stop_process, wait_for_port
from lab.postgres import SUPERUSER, LabPostgres

pytestmark = pytest.mark.lab

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "deploy" / "compose"


def test_roles_sql_and_pgbouncer_ini_work_on_real_servers(
        tmp_path_factory: pytest.TempPathFactory, lab_dir: Path) -> None:
    import psycopg


    pg = LabPostgres(lab_dir / tmp_path_factory.mktemp("deploy-pg").name)
    pg.init()
    pg.start()
    bouncer: subprocess.Popen[bytes] | None = None
    try:
        passwords = {"prefect_password": "prefect-secret", "exporter_password": "exporter-secret"}
        psql = find_binary("psql", ["/usr/lib/postgresql/*/bin/psql"])
        variables = [arg for k, v in passwords.items() for arg in ("-v", f"{k}={v}")]
        done = subprocess.run(
            [psql, "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", SUPERUSER, "-d",
             "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1", *variables],
            input=(COMPOSE_DIR / "postgres" / "initdb" / "roles.psql").read_text(),
            capture_output=True, text=True, **pg.who.popen_kwargs())
        assert done.returncode == 0, done.stderr
        assert pg.psql("SELECT pg_has_role('prefect_exporter', 'pg_monitor', 'MEMBER'), "
                       "rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                       "WHERE rolname = 'prefect_exporter'", database="postgres") == "t|f|f|f"
        assert pg.psql("SELECT pg_get_userbyid(datdba) FROM pg_database "
                       "WHERE datname = 'prefect'", database="postgres") == "prefect"
        exporter_dsn = pg.dsn("prefect_exporter", passwords["exporter_password"], "prefect")
        with psycopg.connect(exporter_dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("CREATE TABLE public.exporter_must_not_write (id int)")
            # pg_monitor: other roles' sessions are visible, not "insufficient privilege"
            with psycopg.connect(pg.dsn("prefect", passwords["prefect_password"], "prefect")):
                states = conn.execute("SELECT state FROM pg_stat_activity "
                                      "WHERE usename = 'prefect'").fetchall()
            assert states and all(s[0] is not None for s in states)

        # the compose pgbouncer.ini, pointed at the lab's PostgreSQL and a free port
        who = run_as()
        root = make_dir(lab_dir / tmp_path_factory.mktemp("deploy-pgb").name, who)
        port = free_port()
        ini = (COMPOSE_DIR / "pgbouncer" / "pgbouncer.ini").read_text()
        ini = ini.replace("host=postgres port=5432", f"host=127.0.0.1 port={pg.port}")
        ini = re.sub(r"(?m)^listen_addr = .*$", "listen_addr = 127.0.0.1", ini)
        ini = re.sub(r"(?m)^listen_port = .*$", f"listen_port = {port}", ini)
        ini = ini.replace("/etc/pgbouncer/userlist.txt", str(root / "userlist.txt"))
        (root / "pgbouncer.ini").write_text(ini)
        # as the image's entrypoint writes it for scram-sha-256: plain-text passwords
        (root / "userlist.txt").write_text(
            f'"prefect" "{passwords["prefect_password"]}"\n'
            f'"prefect_exporter" "{passwords["exporter_password"]}"\n')
        for name in ("pgbouncer.ini", "userlist.txt"):
            (root / name).chmod(0o600)
            who.own(root / name)
        log = (root / "pgbouncer.log").open("wb")
        bouncer = subprocess.Popen(
            [find_binary("pgbouncer", ["/usr/sbin/pgbouncer"]), str(root / "pgbouncer.ini")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, **who.popen_kwargs())
        wait_for_port(port, 20, "pgbouncer", bouncer, root / "pgbouncer.log")
        console = (f"postgresql://prefect_exporter:{passwords['exporter_password']}"
                   f"@127.0.0.1:{port}/pgbouncer")
        with psycopg.connect(console, autocommit=True, prepare_threshold=None) as conn:
            conn.execute("SHOW POOLS")
            config = {r[0]: r[1] for r in conn.execute("SHOW CONFIG").fetchall()}
            assert config["pool_mode"] == "transaction"
            assert config["stats_users"] == "prefect_exporter"
            with pytest.raises(psycopg.Error):
                conn.execute("PAUSE")  # a stats user, not an admin
        prefect_dsn = (f"postgresql://prefect:{passwords['prefect_password']}"
                       f"@127.0.0.1:{port}/prefect?options=-c%20search_path%3Dpublic")
        with psycopg.connect(prefect_dsn, autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("prefect",)
    finally:
        stop_process(bouncer)
        pg.stop()
