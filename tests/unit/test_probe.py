"""/probe?target=NAME: one configured target's metrics, for fleets scraped by relabelling."""

from __future__ import annotations

import httpx
from prometheus_client import CONTENT_TYPE_LATEST

from exporter.collector import ExporterCollector, Exposition
from exporter.diagnosis import diagnose
from exporter.metricspec import MetricOptions
from exporter.poller import failures, fresh_snapshots
from exporter.server import probe_problem
from tests.helpers import StartExporter, parse
from tests.unit.test_recorded_exposition import NOW, recorded_states

TARGETS = ("db", "db2", "pgb", "prefect", "stale", "timedout", "messaging")


def _exposition() -> Exposition:
    states = recorded_states()
    snapshots = fresh_snapshots(states, NOW, 45.0)
    collector = ExporterCollector(states, MetricOptions(label_top_n=20))
    collector.update(snapshots, diagnose(snapshots, failures(states)))
    exposition = Exposition(collector)
    exposition.render()
    return exposition


def _target_samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {(name, tuple(sorted(labels.items())), value)
            for name, labels, value in parse(text).samples if "target" in labels}


def test_the_probes_partition_the_target_series_of_metrics() -> None:
    exposition = _exposition()
    everything = _target_samples(exposition.body.decode())
    probed = {t: _target_samples(exposition.probe(t).decode()) for t in TARGETS}
    for target, samples in probed.items():
        assert samples, target
        assert {dict(labels)["target"] for _, labels, _ in samples} == {target}
    assert set().union(*probed.values()) == everything


def test_a_probe_has_its_target_health_and_findings_and_no_exporter_wide_series() -> None:
    exposition = _exposition()
    db2 = parse(exposition.probe("db2").decode())
    assert db2.value("prefect_pg_exporter_source_up", source="postgres", target="db2") == 0
    assert db2.value("postgres_up", target="db2") == 0
    assert db2.find("prefect_pg_exporter_source_up", target="db") is None
    assert db2.value("prefect_pg_exporter_finding", check="source_down", severity="warning") == 1
    assert "prefect_pg_exporter_build_info" not in db2.names()
    assert not any(n.startswith(("process_", "pgbouncer_", "prefect_flow")) for n in db2.names())
    # db is up: its findings are its own, not db2's source_down
    db = parse(exposition.probe("db").decode())
    assert db.find("prefect_pg_exporter_finding", check="source_down", severity="warning") is None
    assert db.value("postgres_up", target="db") == 1


def test_a_probe_body_is_rendered_once_per_poll() -> None:
    exposition = _exposition()
    first = exposition.probe("db")
    assert exposition.probe("db") is first
    exposition.render()
    assert exposition.probe("db") is not first


def test_probe_problems_name_the_configured_targets() -> None:
    assert probe_problem("db", ["db", "pgb"]) == ""
    assert probe_problem("", ["pgb", "db"]) == (
        "/probe needs ?target=NAME, one of the configured targets: db, pgb")
    unknown = probe_problem("prod", ["db", "db"])
    assert unknown.startswith("unknown target 'prod'") and unknown.endswith(": db")


async def test_probe_over_http(start_exporter: StartExporter) -> None:
    exporter = await start_exporter(
        postgres_dsn="a=postgresql://x@127.0.0.1:1/db;b=postgresql://x@127.0.0.1:2/db")
    base = f"http://127.0.0.1:{exporter.port}"
    async with httpx.AsyncClient() as client:
        a = await client.get(f"{base}/probe", params={"target": "a"},
                             headers={"Accept-Encoding": "gzip"})
        assert a.status_code == 200 and a.headers["Content-Encoding"] == "gzip"
        assert a.headers["Content-Type"] == CONTENT_TYPE_LATEST
        scrape = parse(a.text)
        assert scrape.value("postgres_up", target="a") == 0
        assert scrape.find("postgres_up", target="b") is None
        unknown = await client.get(f"{base}/probe", params={"target": "c"})
        assert unknown.status_code == 400
        assert unknown.text == ("unknown target 'c': /probe serves only configured targets "
                                "(it never connects on scrape): a, b\n")
        assert (await client.get(f"{base}/probe")).status_code == 400
        assert 'href="/probe?target=a"' in (await client.get(f"{base}/")).text
