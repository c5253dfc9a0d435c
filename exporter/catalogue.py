"""The metric catalogue: every metric the exporter exposes, in one place.

The metric builders take their help text and label names from here, `docs/metrics.md` is
generated from it, and the tests check the live exposition, the dashboards and the alert rules
against it. A metric that is not in this catalogue cannot be emitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

Kind = Literal["gauge", "counter"]


@dataclass(frozen=True)
class MetricSpec:
    name: str  # the exposed sample name (a counter's ends in _total)
    kind: Kind
    help: str
    labels: tuple[str, ...]
    source: str  # exporter | postgres | pgbouncer | prefect


def _spec(name: str, kind: Kind, source: str, labels: str, help_text: str) -> MetricSpec:
    return MetricSpec(name, kind, help_text, tuple(labels.split()), source)


SPECS: tuple[MetricSpec, ...] = (
    # --- the exporter itself -------------------------------------------------------------
    _spec("prefect_pg_exporter_build_info", "gauge", "exporter", "version python_version",
          "Always 1; the exporter's version and Python version as labels."),
    _spec("prefect_pg_exporter_source_up", "gauge", "exporter", "source target",
          "1 if the last poll of this source succeeded, else 0."),
    _spec("prefect_pg_exporter_source_last_success_timestamp_seconds", "gauge", "exporter",
          "source target",
          "Unix time of the last successful poll (0 = never). Staleness: time() minus this."),
    _spec("prefect_pg_exporter_source_poll_duration_seconds", "gauge", "exporter",
          "source target", "Wall time of the last poll of this source, successful or not."),
    _spec("prefect_pg_exporter_source_polls_total", "counter", "exporter", "source target",
          "Polls attempted for this source."),
    _spec("prefect_pg_exporter_source_errors_total", "counter", "exporter",
          "source target reason",
          "Failed polls by reason: timeout, connect (cannot reach or log in), query, other."),
    # --- PostgreSQL ------------------------------------------------------------------------
    _spec("postgres_up", "gauge", "postgres", "target",
          "1 if the last poll of this PostgreSQL succeeded, else 0."),
    _spec("postgres_server_info", "gauge", "postgres", "target version",
          "Always 1; the server version as a label."),
    _spec("postgres_connections", "gauge", "postgres",
          "target datname usename application_name state",
          "Client backends by database, role, application and state (the exporter's own "
          "session excluded). Label values beyond the top N fold into 'other'."),
    _spec("postgres_max_connections", "gauge", "postgres", "target",
          "The max_connections setting."),
    _spec("postgres_superuser_reserved_connections", "gauge", "postgres", "target",
          "The superuser_reserved_connections setting: slots ordinary roles cannot use."),
    _spec("postgres_transaction_max_age_seconds", "gauge", "postgres",
          "target datname application_name state",
          "Age of the oldest open transaction (now - xact_start) per database, application and "
          "state: active, idle in transaction, idle in transaction (aborted)."),
    _spec("postgres_client_read_in_transaction_sessions", "gauge", "postgres", "target",
          "Sessions inside a transaction waiting on Client/ClientRead: the client stalled "
          "mid-transaction. Plain idle sessions are not counted."),
    _spec("postgres_client_read_in_transaction_max_age_seconds", "gauge", "postgres", "target",
          "How long the longest such stall has lasted (now - state_change); 0 when none."),
    _spec("postgres_wait_event_sessions", "gauge", "postgres",
          "target wait_event_type wait_event",
          "Non-idle client sessions by wait event ('' = running on CPU, not waiting)."),
    _spec("postgres_blocked_sessions", "gauge", "postgres", "target",
          "Sessions waiting on a heavyweight lock held by another session."),
    _spec("postgres_blocked_max_wait_seconds", "gauge", "postgres", "target",
          "Longest wait among blocked sessions (now - state_change of the waiting statement); "
          "0 when none."),
    _spec("postgres_blocking_sessions", "gauge", "postgres", "target",
          "Distinct sessions that block at least one other session (pg_blocking_pids)."),
    _spec("postgres_oldest_transaction_age_seconds", "gauge", "postgres",
          "target rank pid datname usename application_name client_addr state wait_event",
          "The N oldest open transactions (rank 1 = oldest) with who holds them; value = age. "
          "Bounded by --top-transactions; 0 disables."),
    _spec("postgres_listen_sessions", "gauge", "postgres", "target channel",
          "Sessions whose last statement is LISTEN, by channel. One Prefect background-services "
          "copy holds one LISTEN \"prefect_automation_changes\"."),
    _spec("postgres_setting_seconds", "gauge", "postgres", "target name",
          "Timeout settings in seconds (0 = disabled): idle_in_transaction_session_timeout, "
          "statement_timeout, lock_timeout, tcp_keepalives_idle."),
    _spec("postgres_table_live_tuples", "gauge", "postgres", "target schema table",
          "Estimated live rows of Prefect's hot tables."),
    _spec("postgres_table_dead_tuples", "gauge", "postgres", "target schema table",
          "Estimated dead rows of Prefect's hot tables, waiting for vacuum."),
    _spec("postgres_table_last_vacuum_timestamp_seconds", "gauge", "postgres",
          "target schema table",
          "Unix time of the last manual VACUUM of a hot table (0 = never)."),
    _spec("postgres_table_last_autovacuum_timestamp_seconds", "gauge", "postgres",
          "target schema table",
          "Unix time of the last autovacuum of a hot table (0 = never)."),
)

CATALOGUE: dict[str, MetricSpec] = {spec.name: spec for spec in SPECS}


def family(name: str) -> GaugeMetricFamily | CounterMetricFamily:
    """A fresh, empty metric family for a catalogued metric."""
    spec = CATALOGUE[name]
    if spec.kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), spec.help, labels=spec.labels)
    return GaugeMetricFamily(name, spec.help, labels=spec.labels)


def render_markdown() -> str:
    """The catalogue as the Markdown page docs/metrics.md (a test keeps that file in sync)."""
    lines = [
        "# Metric catalogue",
        "",
        "Generated from `exporter/catalogue.py` by `python -m exporter.catalogue`; "
        "do not edit by hand.",
        "Every per-target series carries `target`, the name of the configured target.",
        "",
    ]
    for source in ("exporter", "postgres", "pgbouncer", "prefect"):
        specs = [s for s in SPECS if s.source == source]
        if not specs:
            continue
        lines += [f"## {source}", "", "| metric | type | labels | meaning |", "|---|---|---|---|"]
        for s in specs:
            labels = ", ".join(f"`{label}`" for label in s.labels)
            lines.append(f"| `{s.name}` | {s.kind} | {labels} | {s.help} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
