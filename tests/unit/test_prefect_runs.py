"""Runs that never finish, from the API's answers, with no server: the arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from exporter.prefect.limits import Saturation
from exporter.prefect.runs import heartbeat_query, stuck_groups, without_heartbeat
from exporter.prefect.snapshot import StuckGroup


def run(state_type: str, since: str, pool: str | None = "a", **kw: Any) -> dict[str, Any]:
    return {"id": kw.pop("id", "r"), "state_type": state_type, "work_pool_name": pool,
            "state": {"type": state_type, "timestamp": since}, **kw}


T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp()


def test_stuck_groups_from_each_runs_own_state_timestamp() -> None:
    runs = [run("RUNNING", "2026-11-25T09:00:00Z"),  # 3 h
            run("RUNNING", "2026-11-25T11:50:00Z"),  # 10 min
            run("PENDING", "2026-11-25T10:00:00Z", pool="not-listed"),  # 2 h
            run("CANCELLING", "2026-11-25T11:59:00Z", pool=None),
            run("COMPLETED", "2026-11-25T01:00:00Z")]  # not unfinished: ignored
    groups = stuck_groups(runs, T0, stuck_after=3600, pools=["a"])
    assert groups == {("a", "RUNNING"): StuckGroup(1, 3 * 3600),
                      ("", "PENDING"): StuckGroup(1, 2 * 3600),
                      ("", "CANCELLING"): StuckGroup(0, 60)}


def test_zombies_are_running_runs_whose_heartbeat_stopped() -> None:
    runs = [run("RUNNING", "x", id="alive", start_time="2026-11-25T10:00:00Z"),
            run("RUNNING", "x", id="dead", start_time="2026-11-25T10:00:00Z"),
            run("RUNNING", "x", id="never", start_time="2026-11-25T10:00:00Z", pool="b"),
            run("RUNNING", "x", id="young", start_time="2026-11-25T11:58:00Z"),  # no beat yet
            run("PENDING", "x", id="pending", start_time=None)]
    latest = {"prefect.flow-run.alive": T0 - 60, "prefect.flow-run.dead": T0 - 900}
    assert without_heartbeat(runs, latest, T0, timeout=600, pools=["a"]) == {"a": 1, "": 1}


def test_the_heartbeat_count_asks_for_one_bucket_and_only_heartbeats() -> None:
    query = heartbeat_query(datetime(2026, 11, 25, 11, 40, tzinfo=UTC),
                            datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    assert query["filter"]["event"] == {"name": ["prefect.flow-run.heartbeat"]}
    assert query["filter"]["occurred"] == {"since": "2026-11-25T11:40:00Z",
                                           "until": "2026-11-25T12:00:00Z"}
    # Prefect refuses windows of more than 1000 buckets even for count-by/resource
    assert query["time_unit"] == "week"


def test_saturation_is_remembered_across_polls_and_forgotten_when_it_ends() -> None:
    saturation = Saturation()
    assert saturation.update([("a", True), ("b", False)], 100.0) == {"a": 100.0}
    assert saturation.update([("a", True), ("b", True)], 160.0) == {"a": 100.0, "b": 160.0}
    assert saturation.update([("a", False), ("b", True)], 220.0) == {"b": 160.0}
    assert saturation.update([("a", True)], 280.0) == {"a": 280.0}  # b's limit is gone
