"""The fleet recipe (deploy/prometheus/fleet.yml) on a real Prometheus: each target of one exporter
scraped through /probe as its own instance, the exporter's own series once, nothing twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.prometheus import LabPrometheus
from tests.helpers import FAST_POLL, StartExporter, eventually

RECIPE = Path(__file__).parents[2] / "deploy" / "prometheus" / "fleet.yml"


def _recipe(exporter_port: int, targets: list[str]) -> str:
    """The documented recipe with this lab's exporter address and target names in it."""
    text = RECIPE.read_text()
    assert "prefect-pg-exporter:10816" in text and "[prod, staging]" in text
    return (text.replace("prefect-pg-exporter:10816", f"127.0.0.1:{exporter_port}")
            .replace("[prod, staging]", "[" + ", ".join(targets) + "]"))


async def _series(prom: LabPrometheus, match: str) -> list[dict[str, str]]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{prom.url}/api/v1/series", params={"match[]": match})
    response.raise_for_status()
    data: list[dict[str, str]] = response.json()["data"]
    return data


def _values(data: dict[str, Any]) -> dict[str, float]:
    return {r["metric"].get("instance", ""): float(r["value"][1]) for r in data["result"]}


async def test_fleet_recipe_scrapes_each_target_once(
        postgres: LabPostgres, own_postgres: LabPostgres, pgbouncer: LabPgBouncer,
        start_exporter: StartExporter, tmp_path: Path) -> None:
    exporter = await start_exporter(
        postgres_dsn=f"lab={postgres.monitor_dsn()};quiet={own_postgres.monitor_dsn()}",
        pgbouncer_dsn=f"bouncer={pgbouncer.stats_dsn()}", **FAST_POLL)
    prom = LabPrometheus(tmp_path / "prometheus", exporter.port,
                         scrape_configs=_recipe(exporter.port,
                                                ["lab", "quiet", "bouncer", "nothere"]))
    prom.start()
    try:
        async def scraped() -> bool:
            up = _values(await prom.query('up{job="prefect-pg-fleet"}'))
            # the exporter's own job too: Prometheus spreads each job's first scrape over its
            # interval, so one job can be scraped well before the other
            own = _values(await prom.query('up{job="prefect-pg-exporter"}'))
            return (up == {"lab": 1, "quiet": 1, "bouncer": 1, "nothere": 0}
                    and list(own.values()) == [1])
        await eventually(scraped, timeout=30, what="every fleet target and the exporter scraped")

        # each target's series under its own instance, and only there
        postgres_up = _values(await prom.query('postgres_up{job="prefect-pg-fleet"}'))
        assert postgres_up == {"lab": 1, "quiet": 1}
        assert _values(await prom.query('pgbouncer_up{job="prefect-pg-fleet"}')) == {"bouncer": 1}
        fleet = await _series(prom, '{job="prefect-pg-fleet"}')
        assert {s["instance"] for s in fleet} == {"lab", "quiet", "bouncer", "nothere"}
        mixed = [s for s in fleet if s.get("target", s["instance"]) != s["instance"]]
        assert not mixed, mixed[:3]
        assert {"lab", "quiet"} == {s["instance"] for s in fleet
                                    if s["__name__"] == "postgres_max_connections"}

        # the exporter's own job: its build info and process series, no target's series again
        own = {s["__name__"] for s in await _series(prom, '{job="prefect-pg-exporter"}')}
        assert "prefect_pg_exporter_build_info" in own and "process_resident_memory_bytes" in own
        assert own <= {"prefect_pg_exporter_build_info", "up", "scrape_duration_seconds",
                       "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
                       "scrape_series_added"} | {n for n in own if n.startswith(
                           ("process_", "python_"))}
    finally:
        prom.stop()
