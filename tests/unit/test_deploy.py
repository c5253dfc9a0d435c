"""The deploy assets: Dockerfile, compose stack, Kubernetes manifests, PrometheusRule generator.

Nothing here needs a Docker engine or a cluster. The files are parsed and cross-checked against
the exporter's own configuration (exporter.config), the compose files' references are resolved
on disk, Prometheus' and Alertmanager's configs go through promtool / amtool, the manifests
through kubernetes-validate's bundled schemas, and the HEALTHCHECK runs against a live exporter.
tests/lab/test_deploy_lab.py runs the stack's SQL and pgbouncer.ini on a real PostgreSQL and
PgBouncer.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from exporter.config import ENV_PREFIX, PREFECT_FALLBACKS, SETTINGS, Config, ConfigError, load
from lab.common import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
K8S_DIR = ROOT / "deploy" / "kubernetes"
GENERATOR = K8S_DIR / "generate_prometheusrule.py"
ALERTS_DIR = ROOT / "alerts"
DASHBOARDS_DIR = ROOT / "dashboards"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
PROMTOOL = shutil.which("promtool") or "promtool"  # scripts/bootstrap installs it

EXPORTER_IMAGE = "prefect-pg-exporter"
DEFAULT_PORT = Config().listen.port
# Known environment variable names: the exporter's settings, the *_FILE forms of its secrets.
KNOWN_ENV = ({s.env for s in SETTINGS} | {s.env + "_FILE" for s in SETTINGS if s.secret}
             | {ENV_PREFIX + "CONFIG_FILE"})
# Allowed beside them in the exporter's containers: Prefect's own variables the exporter falls
# back to, libpq's password variables, and the pod name used to name a sidecar's target.
ALLOWED_OTHER_ENV = set(PREFECT_FALLBACKS.values()) | {"PGPASSWORD", "PGPASSFILE", "POD_NAME"}
CRDS = {"ServiceMonitor", "PrometheusRule"}  # Prometheus Operator kinds: checked by hand
STATE_DIR_ENV = ENV_PREFIX + "STATE_DIR"  # the incidents kept across restarts
DURATION = re.compile(r"^(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)$")


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


# ---------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------

def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends in a line continuation"
    out = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _dockerfile_instructions():
        if keyword == "ARG" and not stages and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
        if keyword == "FROM":
            rest = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], rest)
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def _one(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [rest for k, rest in stage if k == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {found}"
    return found[0]


def _console_script() -> str:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (name,) = [n for n, target in scripts.items() if target == "exporter.cli:main"]
    return name


def test_dockerfile_is_multi_stage_wheel_build_on_python_311_slim() -> None:
    stages = _stages()
    assert len(stages) == 2
    build, final = stages
    assert build[0] == ("FROM", "python:3.11-slim AS build")
    assert final[0] == ("FROM", "python:3.11-slim")
    assert any(k == "RUN" and "pip wheel" in r for k, r in build), "no wheel built"
    installs = [r for k, r in final if k == "RUN" and "pip install" in r]
    assert len(installs) == 1
    # the final stage installs the build stage's wheels offline, and builds nothing
    assert "from=build" in installs[0] and "--no-index" in installs[0]
    final_runs = " ".join(r for k, r in final if k == "RUN")
    for tool in ("apt-get", "gcc", "build-essential", "pip wheel"):
        assert tool not in final_runs, tool
    copied = [r for k, r in final if k in ("COPY", "ADD")]
    assert copied == [], f"the final stage copies {copied}"


def test_dockerfile_runs_the_console_script_as_a_numeric_non_root_user() -> None:
    final = _stages()[-1]
    assert json.loads(_one(final, "ENTRYPOINT")) == [_console_script()]
    assert not [r for k, r in final if k == "CMD"], "arguments belong to the user, not CMD"
    user = _one(final, "USER")
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user} is not numeric"
    assert int(user.split(":")[0]) != 0
    assert _one(final, "EXPOSE") == str(DEFAULT_PORT)
    # configured by environment only: no PREFECT_PG_EXPORTER_* baked into the image
    envs = " ".join(r for k, r in final if k == "ENV")
    assert ENV_PREFIX not in envs


def _healthcheck_argv() -> list[str]:
    spec = _one(_stages()[-1], "HEALTHCHECK")
    options, sep, command = spec.partition("CMD ")
    assert sep, spec
    assert all(o.startswith("--") for o in options.split())
    argv = json.loads(command)
    assert argv == ["prefect-pg-exporter", "healthcheck"], \
        "the slim image has no curl: the exporter asks its own /healthz"
    return argv


def test_dockerfile_healthcheck_is_the_cli_healthcheck() -> None:
    from exporter.cli import COMMANDS

    assert _healthcheck_argv()[1] in COMMANDS


def test_dockerfile_healthcheck_passes_on_a_running_exporter_and_fails_without() -> None:
    check = [sys.executable, "-m", "exporter", *_healthcheck_argv()[1:]]
    port = free_port()
    env = {"PATH": os.environ["PATH"], "PREFECT_PG_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
           "PREFECT_PG_EXPORTER_POSTGRES_DSN": "postgresql://x@127.0.0.1:1/x"}
    # a target that refuses at once: /healthz is about the process, not its targets
    exporter = subprocess.Popen(
        [sys.executable, "-m", "exporter"], text=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**env, "PREFECT_PG_EXPORTER_POSTGRES_DSN": "postgresql://x@127.0.0.1:1/x",
             "PREFECT_PG_EXPORTER_LOG_LEVEL": "error"})
    try:
        wait_for_port(port, 20, "the exporter", exporter)
        healthy = subprocess.run(check, env=env, capture_output=True, text=True, timeout=20)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        exporter.terminate()
        exporter.wait(10)
    down = subprocess.run(check, env=env, capture_output=True, text=True, timeout=20)
    assert down.returncode == 1 and "unhealthy" in down.stderr


def _tool(name: str) -> str | None:
    """A command on PATH or beside this Python (the virtualenv's bin/, not always on PATH)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


def _image_user() -> tuple[int, int]:
    uid, _, gid = _one(_stages()[-1], "USER").partition(":")
    return int(uid), int(gid or uid)


def _image_state_dir() -> tuple[str, list[str]]:
    """The state directory the final stage creates, and the `install` command creating it."""
    runs = " ".join(r for k, r in _stages()[-1] if k == "RUN")
    match = re.search(r"install --directory (?:--\S+ \S+ )*(/\S+)", runs)
    assert match, "the final stage creates no state directory (install --directory ...)"
    return match[1], match[0].split()


def test_dockerfile_gives_its_user_a_writable_state_directory() -> None:
    """The image's `install` command, run here into a scratch root, then the exporter's store
    opened there as the image's user (uid 65532; root would write anywhere)."""
    from lab.common import lab_root
    from tests.unit.test_incident_store import as_unprivileged

    path, argv = _image_state_dir()
    assert (int(argv[argv.index("--owner") + 1]),
            int(argv[argv.index("--group") + 1])) == _image_user()
    root = lab_root("image-state-")
    try:
        state = root / path.lstrip("/")
        state.parent.mkdir(parents=True)
        for parent in (state.parent, *state.parent.parents):
            if parent == root.parent:
                break
            parent.chmod(0o755)
        if os.geteuid() == 0:
            subprocess.run([*argv[:-1], str(state)], check=True)
        else:  # not root: no chown; the directory is ours, as the image's is its user's
            subprocess.run(["install", "--directory", "--mode",
                            argv[argv.index("--mode") + 1], str(state)], check=True)
        from exporter.incidents.store import IncidentStore

        def usable() -> bool:
            store = IncidentStore(str(state))
            ok = store.load() is not None
            store.close()
            return ok

        assert as_unprivileged(usable), f"uid {_image_user()[0]} cannot keep incidents in {path}"
    finally:
        shutil.rmtree(root)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerignore_keeps_only_what_the_build_copies() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "exclude everything, then allow what the build needs"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    build = _stages()[0]
    for keyword, rest in build:
        if keyword == "COPY" and "--from" not in rest:
            *sources, _dest = rest.split()
            for source in sources:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
                assert (ROOT / source).exists(), source
    # pyproject.toml names README.md as the long description: the build needs it
    assert "README.md" in allowed


# ---------------------------------------------------------------------------------------------
# compose stack
# ---------------------------------------------------------------------------------------------

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
    elif compose := _tool("docker-compose"):
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
    assert bouncer.params["user"] in _pgbouncer_ini()["pgbouncer"]["stats_users"]
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
    assert path == _image_state_dir()[0], "not the directory the image gives its user"
    (volume,) = [v for v in exporter.get("volumes", []) if v.split(":")[1] == path]
    source, _, options = volume.split(":", 2) + [""] * (volume.count(":") == 1)
    assert not source.startswith((".", "/")), "a named volume, not a bind mount"
    assert source in compose["volumes"] and "ro" not in options.split(",")


def _pgbouncer_ini(path: Path = COMPOSE_DIR / "pgbouncer" / "pgbouncer.ini"
                   ) -> configparser.ConfigParser:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(path.read_text())
    return ini


def _pgbouncer_port() -> str:
    return _pgbouncer_ini()["pgbouncer"]["listen_port"]


def test_compose_pgbouncer_pools_transactions_and_lets_the_exporter_read_stats() -> None:
    ini = _pgbouncer_ini()
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
    compose = _pgbouncer_ini()
    kube = _pgbouncer_ini(K8S_DIR / "pgbouncer.ini")
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


# ---------------------------------------------------------------------------------------------
# Kubernetes manifests
# ---------------------------------------------------------------------------------------------

def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())


def _manifests() -> list[dict[str, Any]]:
    return [doc for name in _kustomization()["resources"] for doc in _yaml_docs(K8S_DIR / name)]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _manifests() if d["kind"] == kind]


def _exporter_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(Deployment, container) of every exporter container."""
    for deployment in _of_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            if container["image"].split(":")[0] == EXPORTER_IMAGE:
                yield deployment, container


def test_kustomization_lists_every_manifest_and_generated_file() -> None:
    kustomization = _kustomization()
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    for name in resources:
        assert (K8S_DIR / name).is_file(), name
    for generator in kustomization.get("configMapGenerator", []):
        for name in generator["files"]:
            assert (K8S_DIR / name).is_file(), name
    # prometheusrule.yaml is generated from alerts/: listed once it is committed, or applied
    # on its own
    manifests = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert manifests - {"prometheusrule.yaml"} <= set(resources) <= manifests
    assert [i["name"] for i in kustomization["images"]] == [EXPORTER_IMAGE]
    assert len(list(_exporter_containers())) == 2


def _kubernetes_validate() -> ModuleType:
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (a test dependency in pyproject.toml)")


def _validate_builtin(docs: list[dict[str, Any]]) -> list[str]:
    """Validate every built-in kind strictly against the oldest and newest bundled schemas;
    returns the kinds that have no bundled schema (CRDs)."""
    kv = _kubernetes_validate()
    from kubernetes_validate.utils import (  # type: ignore[import-untyped]  # ships no hints
        all_versions,
    )

    versions = sorted({v for v in all_versions()}, key=lambda v: tuple(map(int, v.split("."))))
    crds = []
    for doc in docs:
        for version in (versions[0], versions[-1]):
            try:
                kv.validate(doc, version, strict=True)
            except kv.SchemaNotFoundError:
                crds.append(doc["kind"])
                break
            except kv.ValidationError as exc:
                raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} against "
                                     f"Kubernetes {version}: {exc}") from None
    return crds


def test_kubernetes_manifests_validate_against_kubernetes_schemas() -> None:
    crds = _validate_builtin(_manifests())
    assert "ServiceMonitor" in crds and set(crds) <= CRDS


def test_kustomize_build_validates_against_kubernetes_schemas() -> None:
    kustomize = shutil.which("kustomize")
    kubectl = shutil.which("kubectl")
    if kustomize:
        argv = [kustomize, "build", str(K8S_DIR)]
    elif kubectl:
        argv = [kubectl, "kustomize", str(K8S_DIR)]
    else:
        pytest.skip("neither kustomize nor kubectl is installed")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert configmap["metadata"]["name"].startswith("pgbouncer-config-")
    assert "pgbouncer.ini" in configmap["data"]
    images = {c["image"] for d in docs if d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"]}
    newest = _kustomization()["images"][0]
    assert f"{newest.get('newName', EXPORTER_IMAGE)}:{newest['newTag']}" in images
    crds = _validate_builtin(docs)
    assert "ServiceMonitor" in crds and set(crds) <= CRDS


def test_kubernetes_deployments_are_hardened_and_bounded() -> None:
    for deployment in _of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            user = security.get("runAsUser", pod["securityContext"].get("runAsUser"))
            assert isinstance(user, int) and user > 0, f"{where}: runAsUser must be numeric"
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, where
            assert "livenessProbe" in container, where


def test_kubernetes_exporter_probes_use_healthz_and_readyz() -> None:
    kinds = {}
    for deployment, container in _exporter_containers():
        others = [c for c in deployment["spec"]["template"]["spec"]["containers"]
                  if c is not container]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"metrics": DEFAULT_PORT}
        live = container["livenessProbe"]["httpGet"]
        assert (live["path"], live["port"]) == ("/healthz", "metrics")
        if others:  # a sidecar: the pod's readiness must stay PgBouncer's own
            kinds["sidecar"] = container
            ready = container.get("readinessProbe", {}).get("httpGet", {})
            assert ready.get("path") != "/readyz"
        else:
            kinds["standalone"] = container
            ready = container["readinessProbe"]["httpGet"]
            assert (ready["path"], ready["port"]) == ("/readyz", "metrics")
    assert set(kinds) == {"sidecar", "standalone"}


def test_kubernetes_exporters_keep_incidents_on_a_writable_volume() -> None:
    image_dir = _image_state_dir()[0]
    for deployment, container in _exporter_containers():
        where = f"{deployment['metadata']['name']}/{container['name']}"
        pod = deployment["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        path = env[STATE_DIR_ENV]
        assert path == image_dir, where
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == path]
        assert not mount.get("readOnly"), where
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        # an emptyDir survives the container's restarts; bounded, as every volume here
        assert volume["emptyDir"]["sizeLimit"], where
        others = [m for c in pod["containers"] if c is not container
                  for m in c.get("volumeMounts", []) if m["name"] == mount["name"]]
        assert not others, f"{where}: the state volume is the exporter's alone"
        # the image's user writes it (an emptyDir is the pod's fsGroup's)
        user = container["securityContext"].get("runAsUser", pod["securityContext"]["runAsUser"])
        assert (user, pod["securityContext"]["fsGroup"]) == _image_user(), where


def _dsn_example(setting: str) -> str:
    return {
        "PREFECT_PG_EXPORTER_POSTGRES_DSN_FILE":
            "postgresql://prefect_exporter:secret@postgres:5432/prefect",
        "PREFECT_PG_EXPORTER_PGBOUNCER_DSN_FILE":
            "postgresql://prefect_exporter:secret@127.0.0.1:6432/pgbouncer",
    }.get(setting, "user:password")


SECRET_EXAMPLES = {"redis-url": "messaging=redis://prefect-exporter:pw@redis:6379/0;"
                                "docket=redis://prefect-exporter:pw@redis:6379/1"}


def _container_environment(deployment: dict[str, Any], container: dict[str, Any],
                           tmp_path: Path) -> dict[str, str]:
    """The container's environment as the kubelet would make it, with placeholders for
    Secrets and the downward API, and *_FILE paths checked against the mounted Secrets."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    env: dict[str, str] = {}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], str(item["value"]))
        elif "secretKeyRef" in item["valueFrom"]:
            value = SECRET_EXAMPLES.get(item["valueFrom"]["secretKeyRef"]["key"],
                                        "user:password")
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            value = "pgbouncer-5d8f7c9b4-x2x7q"
        if name.endswith("_FILE"):
            mounted = [m for m in container["volumeMounts"]
                       if value.startswith(m["mountPath"].rstrip("/") + "/")]
            assert mounted, f"{name}={value} is not in a mounted volume"
            secret = volumes[mounted[0]["name"]]["secret"]
            key = os.path.relpath(value, mounted[0]["mountPath"])
            assert key in {i["path"] for i in secret["items"]}, f"{name}: {key} not mounted"
            file = tmp_path / key
            file.write_text(_dsn_example(name))
            value = str(file)
        env[name] = value
    return env


def test_kubernetes_exporter_environment_is_a_valid_configuration(tmp_path: Path) -> None:
    ini = _pgbouncer_ini(K8S_DIR / "pgbouncer.ini")
    for deployment, container in _exporter_containers():
        pod = deployment["spec"]["template"]["spec"]
        # Service links would add PREFECT_PG_EXPORTER_SERVICE_HOST & co, which the exporter
        # refuses as unknown settings
        assert pod["enableServiceLinks"] is False
        env = _container_environment(deployment, container, tmp_path)
        names = set(env)
        unknown = {n for n in names if n.startswith(ENV_PREFIX) and n not in KNOWN_ENV}
        assert not unknown, f"unknown exporter settings: {unknown}"
        assert {n for n in names if not n.startswith(ENV_PREFIX)} <= ALLOWED_OTHER_ENV
        try:
            config = load({}, environ=env)
        except ConfigError as exc:
            raise AssertionError(f"{deployment['metadata']['name']}: {exc}") from None
        assert config.listen.port == DEFAULT_PORT
        if len(pod["containers"]) > 1:
            assert config.sources == ("pgbouncer",)
            (target,) = config.pgbouncer_targets
            assert target.name == "pgbouncer-5d8f7c9b4-x2x7q", "named after the pod"
            assert (target.params["host"], target.params["port"]) == (
                "127.0.0.1", ini["pgbouncer"]["listen_port"])
            assert target.params["user"] in ini["pgbouncer"]["stats_users"]
            bouncer = next(c for c in pod["containers"] if c is not container)
            assert {p["containerPort"] for p in bouncer["ports"]} == {
                int(ini["pgbouncer"]["listen_port"])}
        else:
            assert config.sources == ("postgres", "prefect", "redis")


def test_kubernetes_secrets_are_referenced_never_inlined() -> None:
    assert not _of_kind("Secret")
    referenced: set[tuple[str, str]] = set()
    for deployment in _of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for item in container.get("env", []):
                if "value" in item:
                    assert not re.search(r"://[^/@:]+:[^@]+@", str(item["value"])), item
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add((ref["name"], ref["key"]))
        for volume in pod.get("volumes", []):
            sources = [volume] if "secret" in volume else [
                s for s in volume.get("projected", {}).get("sources", []) if "secret" in s]
            for source in sources:
                secret = source["secret"]
                name = secret.get("secretName", secret.get("name"))
                referenced |= {(name, i["key"]) for i in secret["items"]}
    assert referenced
    doc = DEPLOY_DOC.read_text()
    for name, key in referenced:
        assert name in doc and key in doc, f"docs/deploy.md does not say how to create {name}/{key}"


def test_kubernetes_services_and_servicemonitor_select_the_exporters() -> None:
    deployments = _of_kind("Deployment")
    services = _of_kind("Service")
    for service in services:
        selector = service["spec"]["selector"]
        pods = [d["spec"]["template"] for d in deployments
                if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, service["metadata"]["name"]
        ports = {p["name"] for c in pods[0]["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, service["metadata"]["name"]
    (monitor,) = _of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
    assert {s["metadata"]["name"] for s in selected} == {"prefect-pg-exporter",
                                                         "pgbouncer-metrics"}
    # pools are per PgBouncer process: every pod is scraped, through a headless Service
    sidecar = next(s for s in selected if s["metadata"]["name"] == "pgbouncer-metrics")
    assert sidecar["spec"]["clusterIP"] == "None"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    for service in selected:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "honorLabels",
                             "relabelings", "metricRelabelings", "scheme"}
    for key in ("interval", "scrapeTimeout"):
        assert DURATION.match(endpoint[key]), endpoint[key]


# ---------------------------------------------------------------------------------------------
# PrometheusRule generated from alerts/*.yml
# ---------------------------------------------------------------------------------------------

def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_prometheusrule", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_prometheusrule_shape(rule: dict[str, Any]) -> None:
    """The constraints of the Prometheus Operator's PrometheusRule CRD (v1) schema."""
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", rule["metadata"]["name"])
    assert set(rule["spec"]) == {"groups"}
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"
    group_keys = {"name", "interval", "labels", "limit", "partial_response_strategy",
                  "query_offset", "rules"}
    rule_keys = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= group_keys, set(group) - group_keys
        for item in group["rules"]:
            assert set(item) <= rule_keys, set(item) - rule_keys
            assert ("alert" in item) != ("record" in item)
            assert isinstance(item["expr"], str | int)
            for key in ("for", "keep_firing_for"):
                if key in item:
                    assert DURATION.match(item[key]), item[key]
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in item.get(key, {}).values()), item


def _source_groups() -> list[dict[str, Any]]:
    files = sorted(ALERTS_DIR.glob("*.yml"))
    assert files, "alerts/ has no rule file"
    return [g for f in files for g in yaml.safe_load(f.read_text())["groups"]]


def test_prometheusrule_from_alerts_has_the_same_groups_and_passes_promtool(
        tmp_path: Path) -> None:
    source = _source_groups()
    output = tmp_path / "prometheusrule.yaml"
    with output.open("w") as out:
        done = subprocess.run([sys.executable, str(GENERATOR)], stdout=out,
                              stderr=subprocess.PIPE, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (rule,) = _yaml_docs(output)
    _check_prometheusrule_shape(rule)
    assert rule["spec"]["groups"] == source
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    checked = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    count = sum(len(g["rules"]) for g in source)
    assert f"SUCCESS: {count} rules found" in checked.stdout


def test_committed_prometheusrule_is_up_to_date() -> None:
    committed = K8S_DIR / "prometheusrule.yaml"
    if not committed.exists():
        pytest.skip("deploy/kubernetes/prometheusrule.yaml is not committed: generated on demand")
    source = _source_groups()
    (rule,) = _yaml_docs(committed)
    _check_prometheusrule_shape(rule)
    assert rule["spec"]["groups"] == source, "regenerate: scripts/generate"


def _write_rules(path: Path, *groups: str) -> None:
    path.write_text(yaml.safe_dump({"groups": [
        {"name": g, "rules": [{"alert": f"{g}Alert", "expr": "up == 0", "for": "5m",
                               "labels": {"severity": "warning"},
                               "annotations": {"summary": "{{ $labels.target }} is down"}}]}
        for g in groups]}))


def test_generator_concatenates_every_group_of_every_file_in_name_order(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_rules(tmp_path / "b.yml", "b1")
    _write_rules(tmp_path / "a.yml", "a1", "a2")
    (tmp_path / "ignored.txt").write_text("not rules")
    generator = _generator()
    assert generator.main(["--alerts-dir", str(tmp_path), "--namespace", "monitoring",
                           "--label", "release=kube-prometheus-stack"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Generated by deploy/kubernetes/generate_prometheusrule.py")
    (rule,) = [d for d in yaml.safe_load_all(text) if d]
    _check_prometheusrule_shape(rule)
    assert [g["name"] for g in rule["spec"]["groups"]] == ["a1", "a2", "b1"]
    assert rule["metadata"] == {"name": "prefect-pg-exporter", "namespace": "monitoring",
                                "labels": {"app.kubernetes.io/name": "prefect-pg-exporter",
                                           "release": "kube-prometheus-stack"}}
    assert rule["spec"]["groups"][0]["rules"][0]["annotations"]["summary"] == (
        "{{ $labels.target }} is down")


def test_generator_refuses_duplicate_groups_and_empty_dirs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generator = _generator()
    assert generator.main(["--alerts-dir", str(tmp_path)]) == 1
    assert "no *.yml rule files" in capsys.readouterr().err
    _write_rules(tmp_path / "a.yml", "same")
    _write_rules(tmp_path / "b.yml", "same")
    assert generator.main(["--alerts-dir", str(tmp_path)]) == 1
    assert "group 'same' is also in" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# docs
# ---------------------------------------------------------------------------------------------

def test_deploy_doc_has_the_least_privilege_sql_and_stats_users() -> None:
    doc = DEPLOY_DOC.read_text()
    sql = (COMPOSE_DIR / "postgres" / "initdb" / "roles.psql").read_text()
    statement = re.search(r"CREATE ROLE prefect_exporter[^;]*;", sql)
    assert statement
    assert " ".join(statement[0].split()).replace(":'exporter_password'", "'...'") in " ".join(
        doc.split())
    assert "stats_users = prefect_exporter" in doc
    assert "ignore_startup_parameters = extra_float_digits,options" in doc
    for target in ("docker compose up", "kubectl apply -k", "pip install"):
        assert target in doc


FLEET_RECIPE = ROOT / "deploy" / "prometheus" / "fleet.yml"


def test_fleet_recipe_is_the_documented_one_and_passes_promtool(tmp_path: Path) -> None:
    recipe = FLEET_RECIPE.read_text()
    assert f"```yaml\n{recipe}```" in DEPLOY_DOC.read_text(), \
        "docs/deploy.md must show deploy/prometheus/fleet.yml verbatim"
    jobs = {job["job_name"]: job for job in yaml.safe_load(recipe)["scrape_configs"]}
    assert jobs["prefect-pg-fleet"]["metrics_path"] == "/probe"
    config = tmp_path / "prometheus.yml"
    config.write_text(recipe)
    done = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
