"""The compose stack (deploy/compose): its files resolved on disk, its exporter environment a valid
configuration, PgBouncer, the roles SQL, Prometheus and Alertmanager configs through promtool /
amtool, Grafana provisioning. tests/lab/test_deploy_lab.py runs its SQL and pgbouncer.ini on a
real PostgreSQL and PgBouncer.

Nothing here needs a Docker engine or a cluster (test_deploy_*.py; shared readers in
deploy_files.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import ENV_PREFIX, load
from tests.unit.deploy_files import (
    ALERTS_DIR,
    ALLOWED_OTHER_ENV,
    COMPOSE_DIR,
    COMPOSE_FILE,
    DASHBOARDS_DIR,
    DEFAULT_PORT,
    DOCKERFILE,
    ENV_EXAMPLE,
    K8S_DIR,
    KNOWN_ENV,
    PROMTOOL,
    ROOT,
    STATE_DIR_ENV,
    find_tool,
    image_state_dir,
    pgbouncer_ini,
)


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, line
            values[name.strip()] = value.strip()
    return values


_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])[^}]*)?\}")


def _interpolate(value: str, variables: dict[str, str]) -> str:
    return _INTERPOLATION.sub(lambda m: variables[m[1]], value).replace("$$", "$")


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _interpolated_env(name: str) -> dict[str, str]:
    variables = _env_example()
    return {k: _interpolate(v, variables) for k, v in _env(_compose()["services"][name]).items()}


def _mounts() -> Iterator[tuple[str, str, str]]:
    """(service, host path as written, container path) of every bind mount."""
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                if volume.get("type") == "bind":
                    yield name, volume["source"], volume["target"]
                continue
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                yield name, source, target


def _host(source: str) -> Path:
    return (COMPOSE_DIR / source).resolve()


def _mount_of(service: str, container_path: str) -> Path:
    """The host path mounted at (or above) container_path in service."""
    for name, source, target in _mounts():
        if name == service and (container_path == target
                                or container_path.startswith(target.rstrip("/") + "/")):
            return _host(source) / os.path.relpath(container_path, target)
    raise AssertionError(f"nothing is mounted at {container_path} in {service}")


def test_compose_file_is_well_formed_and_complete() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) >= {"postgres", "pgbouncer", "prefect-server", "prefect-services",
                             "exporter", "prometheus", "alertmanager", "grafana"}
    assert services["postgres"]["image"] == "postgres:15"
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])
             if isinstance(v, str) and not v.startswith((".", "/"))}
    assert named <= set(compose.get("volumes", {})), "named volumes must be declared"


@pytest.mark.parametrize("mount", sorted({(s, src) for s, src, _ in _mounts()}),
                         ids=lambda m: f"{m[0]}:{m[1]}")
def test_compose_bind_mount_exists(mount: tuple[str, str]) -> None:
    path = _host(mount[1])
    assert path.exists(), f"{mount[0]} mounts {mount[1]}, which does not exist"


def test_compose_file_passes_docker_compose_config() -> None:
    """Docker Compose's own model and interpolation check; needs no engine."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:
        argv = [docker, "compose"]
    elif compose := find_tool("docker-compose"):
        argv = [compose]
    else:
        pytest.skip("no Docker Compose v2 CLI (docker compose / docker-compose) installed")
    done = subprocess.run([*argv, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE),
                           "config", "--quiet"], capture_output=True, text=True, timeout=60,
                          cwd=COMPOSE_DIR)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_builds_the_exporter_from_the_repository_dockerfile() -> None:
    build = _compose()["services"]["exporter"]["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == ROOT
    assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE


def test_compose_passwords_come_from_env_example() -> None:
    text = COMPOSE_FILE.read_text()
    used = {m[1] for m in _INTERPOLATION.finditer(text)}
    defined = _env_example()
    assert used, "the compose file takes its passwords from the environment"
    assert used <= set(defined), f"not in .env.example: {used - set(defined)}"
    assert set(defined) <= used, f"unused in compose: {set(defined) - used}"
    for name, value in defined.items():
        # they go into URLs and PgBouncer's userlist unescaped
        assert re.fullmatch(r"[A-Za-z0-9_-]+", value), name
    for line in text.splitlines():
        if "password" in line.lower() and ":" in line and "${" not in line:
            assert not re.search(r"://[^/\s:@]+:[^@\s$]+@", line), f"inline password: {line}"


def test_compose_exporter_environment_is_a_valid_configuration() -> None:
    env = _interpolated_env("exporter")
    unknown = {n for n in env if n.startswith(ENV_PREFIX) and n not in KNOWN_ENV}
    assert not unknown, f"unknown exporter settings: {unknown}"
    assert {n for n in env if not n.startswith(ENV_PREFIX)} <= ALLOWED_OTHER_ENV
    config = load({}, environ=env)
    assert config.sources == ("postgres", "pgbouncer", "prefect", "redis")
    services = _compose()["services"]
    # Prefect's messaging and Docket, as the Prefect services are configured
    prefect_env = services["prefect-services"]["environment"]
    assert [(t.host, t.db) for t in config.redis_targets] == [
        (prefect_env["PREFECT_REDIS_MESSAGING_HOST"],
         int(prefect_env["PREFECT_REDIS_MESSAGING_DB"])),
        ("redis", int(prefect_env["PREFECT_SERVER_DOCKET_URL"].rsplit("/", 1)[1]))]
    (postgres,) = config.postgres_targets
    assert postgres.params["host"] in services and postgres.params["port"] == "5432"
    assert postgres.params["user"] == "prefect_exporter"
    (bouncer,) = config.pgbouncer_targets
    assert (bouncer.params["host"], bouncer.params["port"]) == ("pgbouncer", _pgbouncer_port())
    assert bouncer.params["dbname"] == "pgbouncer"
    assert bouncer.params["user"] in pgbouncer_ini()["pgbouncer"]["stats_users"]
    assert [t.api_url for t in config.prefect_targets] == ["http://prefect-server:4200/api"]


def test_compose_exporter_runs_read_only_unprivileged() -> None:
    exporter = _compose()["services"]["exporter"]
    assert exporter["read_only"] is True
    assert exporter["cap_drop"] == ["ALL"]
    assert exporter["ports"] == [f"{DEFAULT_PORT}:{DEFAULT_PORT}"]


def test_compose_exporter_keeps_incidents_on_a_named_volume() -> None:
    compose = _compose()
    exporter = compose["services"]["exporter"]
    path = _env(exporter)[STATE_DIR_ENV]
    assert path == image_state_dir()[0], "not the directory the image gives its user"
    (volume,) = [v for v in exporter.get("volumes", []) if v.split(":")[1] == path]
    source, _, options = volume.split(":", 2) + [""] * (volume.count(":") == 1)
    assert not source.startswith((".", "/")), "a named volume, not a bind mount"
    assert source in compose["volumes"] and "ro" not in options.split(",")


def _pgbouncer_port() -> str:
    return pgbouncer_ini()["pgbouncer"]["listen_port"]


def test_compose_pgbouncer_pools_transactions_and_lets_the_exporter_read_stats() -> None:
    ini = pgbouncer_ini()
    settings = ini["pgbouncer"]
    assert settings["pool_mode"] == "transaction"
    assert [u.strip() for u in settings["stats_users"].split(",")] == ["prefect_exporter"]
    assert settings["admin_users"].strip() == "", "the exporter needs no admin console rights"
    ignored = {p.strip() for p in settings["ignore_startup_parameters"].split(",")}
    assert ignored >= {"extra_float_digits", "options"}
    assert settings["auth_file"] == "/etc/pgbouncer/userlist.txt"
    services = _compose()["services"]
    assert _mount_of("pgbouncer", "/etc/pgbouncer/pgbouncer.ini").name == "pgbouncer.ini"
    database = dict(kv.split("=") for kv in ini["databases"]["prefect"].split())
    assert database["host"] in services and database["dbname"] == "prefect"
    # the image's entrypoint writes userlist.txt from DATABASE_URLS: both roles, plain text
    env = _interpolated_env("pgbouncer")
    assert env["AUTH_TYPE"] == settings["auth_type"] == "scram-sha-256"
    users = {url.split("://", 1)[1].split(":", 1)[0] for url in env["DATABASE_URLS"].split(",")}
    assert users == {"prefect", "prefect_exporter"}


def test_kubernetes_pgbouncer_ini_matches_the_compose_one() -> None:
    compose = pgbouncer_ini()
    kube = pgbouncer_ini(K8S_DIR / "pgbouncer.ini")
    assert dict(kube["pgbouncer"]) == dict(compose["pgbouncer"])
    assert set(kube["databases"]) == set(compose["databases"])


def test_compose_postgres_init_creates_the_least_privilege_role() -> None:
    initdb = _mount_of("postgres", "/docker-entrypoint-initdb.d")
    scripts = sorted(p.name for p in initdb.iterdir())
    # the entrypoint runs *.sh and *.sql: the psql script must not be run without variables
    assert [s for s in scripts if s.endswith((".sh", ".sql", ".sql.gz"))] == ["10-roles.sh"]
    shell = (initdb / "10-roles.sh").read_text()
    sql = (initdb / "roles.psql").read_text()
    assert "-f /docker-entrypoint-initdb.d/roles.psql" in shell
    variables = set(re.findall(r":'(\w+)'", sql))
    passed = set(re.findall(r"-v (\w+)=", shell))
    assert variables and variables <= passed
    env = _env(_compose()["services"]["postgres"])
    assert set(re.findall(r"\$(?:\{)?([A-Z_]+)", shell)) <= set(env) | {"POSTGRES_USER"}
    assert re.search(r"CREATE ROLE prefect_exporter LOGIN .*\n?\s*IN ROLE pg_monitor;", sql)
    statements = re.sub(r"--[^\n]*", "", sql).upper()
    assert "SUPERUSER" not in statements.replace("NOSUPERUSER", "")
    assert "GRANT" not in statements


def test_compose_prefect_goes_through_pgbouncer_with_statement_caches_off() -> None:
    services = _compose()["services"]
    server, background = services["prefect-server"], services["prefect-services"]
    assert "--no-services" in server["command"]
    assert background["command"] == ["prefect", "server", "services", "start"]
    names = set()
    for name in ("prefect-server", "prefect-services"):
        assert services[name]["image"] == "prefecthq/prefect:3-latest"
        env = _interpolated_env(name)
        assert re.fullmatch(rf"postgresql\+asyncpg://prefect:[^@]+@pgbouncer:{_pgbouncer_port()}"
                            r"/prefect", env["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
        prefix = "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_"
        assert env[prefix + "STATEMENT_CACHE_SIZE"] == "0"
        assert env[prefix + "PREPARED_STATEMENT_CACHE_SIZE"] == "0"
        names.add(env[prefix + "APPLICATION_NAME"])
        assert not [n for n in env if "__" in n], "double underscores are silently ignored"
    assert len(names) == 2, "API and services should be told apart in pg_stat_activity"


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = PROMTOOL
    config = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    assert _mount_of("prometheus", "/etc/prometheus/prometheus.yml").name == "prometheus.yml"
    services = _compose()["services"]
    targets = [t for job in config["scrape_configs"] for sc in job.get("static_configs", [])
               for t in sc["targets"]]
    assert f"exporter:{DEFAULT_PORT}" in targets
    for target in targets:
        host = target.split(":")[0]
        assert host == "localhost" or host in services, target
    alertmanagers = [t for am in config["alerting"]["alertmanagers"]
                     for sc in am["static_configs"] for t in sc["targets"]]
    assert alertmanagers == ["alertmanager:9093"]
    # rule_files point into the mounted alerts/: check the config with the host's files there
    rules = [str(_mount_of("prometheus", glob)) for glob in config["rule_files"]]
    assert all(Path(r).parent == ALERTS_DIR for r in rules), rules
    config["rule_files"] = rules
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    done = subprocess.run([promtool, "check", "config", str(checked)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    if list(ALERTS_DIR.glob("*.yml")):
        assert "rules found" in done.stdout + done.stderr


def test_compose_alertmanager_config_is_valid() -> None:
    path = _mount_of("alertmanager", "/etc/alertmanager/alertmanager.yml")
    config = yaml.safe_load(path.read_text())
    receivers = {r["name"] for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers
    amtool = shutil.which("amtool") or "amtool"  # scripts/bootstrap installs it
    done = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def _grafana_provisioning(kind: str) -> list[dict[str, Any]]:
    directory = _mount_of("grafana", f"/etc/grafana/provisioning/{kind}")
    files = sorted(directory.glob("*.yml")) + sorted(directory.glob("*.yaml"))
    assert files, directory
    docs = [yaml.safe_load(f.read_text()) for f in files]
    assert all(d["apiVersion"] == 1 for d in docs)
    return docs


def test_grafana_datasource_is_the_stack_prometheus_with_uid_prometheus() -> None:
    (doc,) = _grafana_provisioning("datasources")
    (source,) = doc["datasources"]
    assert (source["uid"], source["type"]) == ("prometheus", "prometheus")
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in _compose()["services"]


def test_grafana_dashboard_provider_points_at_the_repository_dashboards() -> None:
    (doc,) = _grafana_provisioning("dashboards")
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    path = _mount_of("grafana", provider["options"]["path"])
    assert path == DASHBOARDS_DIR
    dashboards = sorted(path.glob("**/*.json"))
    assert dashboards, "dashboards/ has no *.json"
    builtin = {"prometheus", "grafana", "-- Grafana --", "-- Mixed --", "-- Dashboard --"}
    for dashboard in dashboards:
        text = dashboard.read_text()
        json.loads(text)
        # a literal datasource uid must be the provisioned one
        for match in re.finditer(r'"datasource"\s*:\s*\{[^}]*"uid"\s*:\s*"([^"]*)"', text):
            uid = match[1]
            assert uid.startswith("$") or uid in builtin, f"{dashboard.name}: datasource {uid}"
