"""The Dockerfile: a multi-stage wheel build, a numeric non-root user, the HEALTHCHECK (run against
a live exporter), the state directory, hadolint and .dockerignore.

Nothing here needs a Docker engine or a cluster (test_deploy_*.py; shared readers in
deploy_files.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from exporter.config import ENV_PREFIX
from lab.common import free_port, wait_for_port
from tests.unit.deploy_files import (
    DEFAULT_PORT,
    DOCKERFILE,
    ROOT,
    dockerfile_stages,
    find_tool,
    image_state_dir,
    image_user,
    one_instruction,
)


def _console_script() -> str:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (name,) = [n for n, target in scripts.items() if target == "exporter.cli:main"]
    return name


def test_dockerfile_is_multi_stage_wheel_build_on_python_311_slim() -> None:
    stages = dockerfile_stages()
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
    final = dockerfile_stages()[-1]
    assert json.loads(one_instruction(final, "ENTRYPOINT")) == [_console_script()]
    assert not [r for k, r in final if k == "CMD"], "arguments belong to the user, not CMD"
    user = one_instruction(final, "USER")
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user} is not numeric"
    assert int(user.split(":")[0]) != 0
    assert one_instruction(final, "EXPOSE") == str(DEFAULT_PORT)
    # configured by environment only: no PREFECT_PG_EXPORTER_* baked into the image
    envs = " ".join(r for k, r in final if k == "ENV")
    assert ENV_PREFIX not in envs


def _healthcheck_argv() -> list[str]:
    spec = one_instruction(dockerfile_stages()[-1], "HEALTHCHECK")
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


def test_dockerfile_gives_its_user_a_writable_state_directory() -> None:
    """The image's `install` command, run here into a scratch root, then the exporter's store
    opened there as the image's user (uid 65532; root would write anywhere)."""
    from lab.common import lab_root
    from tests.unit.test_incident_store import as_unprivileged

    path, argv = image_state_dir()
    assert (int(argv[argv.index("--owner") + 1]),
            int(argv[argv.index("--group") + 1])) == image_user()
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

        assert as_unprivileged(usable), f"uid {image_user()[0]} cannot keep incidents in {path}"
    finally:
        shutil.rmtree(root)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = find_tool("hadolint")
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
    build = dockerfile_stages()[0]
    for keyword, rest in build:
        if keyword == "COPY" and "--from" not in rest:
            *sources, _dest = rest.split()
            for source in sources:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
                assert (ROOT / source).exists(), source
    # pyproject.toml names README.md as the long description: the build needs it
    assert "README.md" in allowed
