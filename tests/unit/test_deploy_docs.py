"""docs/deploy.md and the fleet recipe (deploy/prometheus/fleet.yml): the least-privilege SQL and
stats_users the guide shows, the recipe it documents and promtool accepts.

Nothing here needs a Docker engine or a cluster (test_deploy_*.py; shared readers in
deploy_files.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.unit.deploy_files import (
    COMPOSE_DIR,
    DEPLOY_DOC,
    PROMTOOL,
    ROOT,
)


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
