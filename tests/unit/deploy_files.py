"""The deploy assets' paths and the readers the deploy tests share (tests/unit/test_deploy_*.py):
the Dockerfile's instructions and stages, the compose PgBouncer's ini, YAML documents."""

from __future__ import annotations

import configparser
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from exporter.config import ENV_PREFIX, PREFECT_FALLBACKS, SETTINGS, Config

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


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]



def dockerfile_instructions() -> list[tuple[str, str]]:
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


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and not stages and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
        if keyword == "FROM":
            rest = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], rest)
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def one_instruction(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [rest for k, rest in stage if k == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {found}"
    return found[0]


def find_tool(name: str) -> str | None:
    """A command on PATH or beside this Python (the virtualenv's bin/, not always on PATH)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


def image_user() -> tuple[int, int]:
    uid, _, gid = one_instruction(dockerfile_stages()[-1], "USER").partition(":")
    return int(uid), int(gid or uid)


def image_state_dir() -> tuple[str, list[str]]:
    """The state directory the final stage creates, and the `install` command creating it."""
    runs = " ".join(r for k, r in dockerfile_stages()[-1] if k == "RUN")
    match = re.search(r"install --directory (?:--\S+ \S+ )*(/\S+)", runs)
    assert match, "the final stage creates no state directory (install --directory ...)"
    return match[1], match[0].split()


def pgbouncer_ini(path: Path = COMPOSE_DIR / "pgbouncer" / "pgbouncer.ini"
                   ) -> configparser.ConfigParser:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(path.read_text())
    return ini
