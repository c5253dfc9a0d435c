"""PgBouncer rows -> snapshot -> metrics, with no server: version differences and folding.

The rows are recorded from PgBouncer's admin console (1.18 here) and, for 1.24, written from its
source's RowDescription (src/admin.c, src/stats.c): the lab only has 1.18.
"""

from __future__ import annotations

from exporter.metricspec import MetricOptions
from exporter.pgbouncer.metrics import bounded_pools, pgbouncer_families
from exporter.pgbouncer.snapshot import PgBouncerSnapshot, Pool
from exporter.pgbouncer.source import (
    parse_config,
    parse_databases,
    parse_lists,
    parse_pools,
    parse_stats,
    parse_version,
)
from tests.helpers import Scrape, render

POOLS_1_18 = [
    dict(database="pgbouncer", user="pgbouncer", cl_active=1, cl_waiting=0,
         cl_active_cancel_req=0, cl_waiting_cancel_req=0, sv_active=0, sv_active_cancel=0,
         sv_being_canceled=0, sv_idle=0, sv_used=0, sv_tested=0, sv_login=0, maxwait=0,
         maxwait_us=0, pool_mode="statement"),
    dict(database="prefect", user="prefect", cl_active=5, cl_waiting=3,
         cl_active_cancel_req=0, cl_waiting_cancel_req=0, sv_active=5, sv_active_cancel=0,
         sv_being_canceled=0, sv_idle=0, sv_used=0, sv_tested=0, sv_login=0, maxwait=2,
         maxwait_us=250_000, pool_mode="transaction"),
]
# 1.24: load_balance_hosts added to SHOW POOLS
POOLS_1_24 = [{**POOLS_1_18[1], "load_balance_hosts": None}]

DATABASES_1_18 = [
    dict(name="prefect", host="10.0.0.5", port=5432, database="prefect", force_user=None,
         pool_size=20, min_pool_size=0, reserve_pool=2, pool_mode=None, max_connections=0,
         current_connections=7, paused=0, disabled=0),
]
# 1.24: reserve_pool renamed reserve_pool_size; server_lifetime, load_balance_hosts,
# max_client_connections, current_client_connections added
DATABASES_1_24 = [
    dict(name="prefect", host="10.0.0.5", port=5432, database="prefect", force_user=None,
         pool_size=20, min_pool_size=0, reserve_pool_size=2, server_lifetime=3600,
         pool_mode="transaction", load_balance_hosts=None, max_connections=0,
         current_connections=7, max_client_connections=0, current_client_connections=12,
         paused=0, disabled=0),
]
STATS_TOTALS_1_18 = [dict(database="prefect", xact_count=10, query_count=20,
                          bytes_received=300, bytes_sent=400, xact_time=5_000_000,
                          query_time=2_500_000, wait_time=1_500_000)]
STATS_TOTALS_1_24 = [{**STATS_TOTALS_1_18[0], "server_assignment_count": 9,
                      "client_parse_count": 1, "server_parse_count": 2, "bind_count": 3}]
# An old one (before 1.8) called the query counter "requests": read nothing we do not know,
# and never fail on it (an older Python exporter died here with KeyError: 'total_requests').
STATS_TOTALS_OLD = [dict(database="prefect", requests=10, bytes_received=300, bytes_sent=400,
                         query_time=1)]


Rows = list[dict[str, object]]


def snapshot(pools: Rows = POOLS_1_18, databases: Rows = DATABASES_1_18,
             stats: Rows = STATS_TOTALS_1_18) -> PgBouncerSnapshot:
    return PgBouncerSnapshot(
        taken_at=1.0, target="pgb-0", version=parse_version([{"version": "PgBouncer 1.18.0"}]),
        pools=parse_pools(pools), databases=parse_databases(databases),
        stats=parse_stats(stats),
        config=parse_config([{"key": "max_client_conn", "value": "100", "default": "100",
                              "changeable": "yes"},
                             {"key": "pool_mode", "value": "transaction"},
                             {"key": "query_wait_timeout", "value": "120"},
                             {"key": "auth_query", "value": "SELECT ..."}]),
        lists=parse_lists([{"list": "databases", "items": 2}, {"list": "peers", "items": 0},
                           {"list": "dns_queries", "items": 0}]))


def rendered(snap: PgBouncerSnapshot, top_n: int = 20) -> Scrape:
    return render(pgbouncer_families(snap, MetricOptions(label_top_n=top_n)))


def test_1_18_rows() -> None:
    s = rendered(snapshot())
    pool = {"database": "prefect", "user": "prefect"}
    assert s.value("pgbouncer_pools_client_waiting_connections", **pool) == 3
    assert s.value("pgbouncer_pools_client_maxwait_seconds", **pool) == 2.25
    assert s.values("pgbouncer_pools_client_active_connections", database="pgbouncer") == []
    assert s.value("pgbouncer_pools_mode_info", pool_mode="transaction") == 1
    assert s.value("pgbouncer_databases_reserve_pool", name="prefect", pool_mode="") == 2
    assert s.value("pgbouncer_stats_totals_queries_duration_seconds_total") == 2.5
    assert s.value("pgbouncer_stats_totals_client_wait_seconds_total") == 1.5
    assert s.value("pgbouncer_stats_totals_queries_pooled_total") == 20
    assert s.values("pgbouncer_stats_totals_server_assignments_total") == []
    assert s.value("pgbouncer_config_max_client_connections") == 100
    assert s.value("pgbouncer_config_query_wait_timeout_seconds") == 120
    assert s.values("pgbouncer_config_max_user_connections") == []  # not in this config
    assert s.value("pgbouncer_version_info", version="1.18.0") == 1
    assert s.value("pgbouncer_databases") == 2 and s.value("pgbouncer_in_flight_dns_queries") == 0


def test_1_24_rows_parse_alike() -> None:
    s = rendered(snapshot(POOLS_1_24, DATABASES_1_24, STATS_TOTALS_1_24))
    assert s.value("pgbouncer_pools_client_waiting_connections", database="prefect") == 3
    assert s.value("pgbouncer_databases_reserve_pool", name="prefect",
                   pool_mode="transaction") == 2
    assert s.value("pgbouncer_databases_current_connections", name="prefect") == 7
    assert s.value("pgbouncer_stats_totals_server_assignments_total") == 9
    assert s.value("pgbouncer_stats_totals_binds_total") == 3


def test_old_stats_columns_do_not_break_the_poll() -> None:
    s = rendered(snapshot(stats=STATS_TOTALS_OLD))
    assert s.value("pgbouncer_stats_totals_received_bytes_total") == 300
    assert s.values("pgbouncer_stats_totals_queries_pooled_total") == []


def test_many_pools_fold_into_other_with_summed_counts_and_max_wait() -> None:
    pools = tuple(Pool(f"db{i}", "u", "transaction", {"cl_active": i, "cl_waiting": 1},
                       float(i)) for i in range(10))
    kept = bounded_pools(pools, 3)
    assert [p.database for p in kept] == ["db7", "db8", "db9", "other"]
    other = kept[-1]
    assert other.counts == {"cl_active": sum(range(7)), "cl_waiting": 7}
    assert other.maxwait_seconds == 6.0 and other.pool_mode == "transaction"
