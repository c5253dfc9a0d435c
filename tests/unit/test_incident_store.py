"""Incidents kept on disk across restarts (PREFECT_PG_EXPORTER_STATE_DIR), on a real SQLite file:
round trip, ids unique across restarts, an incident still there keeps its id and start, one gone
ends where it was last seen, the ended ones bounded, and a damaged, read-only or locked store is
one warning and memory-only operation, never a crash."""

from __future__ import annotations

import os
import pickle
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs

from exporter.config import load
from exporter.incidents.model import IncidentView
from exporter.incidents.recorder import IncidentRecorder
from exporter.incidents.store import FILENAME, IncidentStore, Stored
from exporter.incidents.tracker import IncidentTracker
from lab.common import lab_root
from tests.factories import group, pg_snapshot
from tests.unit.test_incidents import chain, phases, quiet

T = TypeVar("T")
WINDOW = 30.0  # the trackers' coalescing window
UNPRIVILEGED = 65532  # the container image's user


def restarted(directory: Path, keep: int = 50, now: float = 1000.0
              ) -> tuple[IncidentTracker, IncidentStore, list[Any]]:
    """A new tracker over what the store in directory kept, as the exporter starts."""
    store = IncidentStore(str(directory))
    stored = store.load()
    assert stored is not None, "the store could not be used"
    tracker = IncidentTracker(keep=keep, coalesce_seconds=WINDOW)
    events = tracker.restore(stored.next_id, stored.open, stored.ended, now)
    return tracker, store, events


def save(tracker: IncidentTracker, store: IncidentStore) -> None:
    store.save(tracker.next_id, *tracker.records())


def run(tracker: IncidentTracker, store: IncidentStore, snapshots: list[Any],
        now: float) -> list[Any]:
    events = tracker.update(snapshots, now)
    save(tracker, store)
    return events


def before_restart(directory: Path) -> list[IncidentView]:
    """Incident 1 begins at 100 and ends; incident 2 (another application) begins at 200 and is
    still going on when the exporter stops."""
    tracker, store, _ = restarted(directory, now=0.0)
    run(tracker, store, [chain(100.0)], 100.0)
    run(tracker, store, [quiet(110.0)], 110.0)
    assert phases(run(tracker, store, [quiet(150.0)], 150.0)) == [("end", "lock_chain")]
    run(tracker, store, [chain(200.0, holder=99, app="worker")], 200.0)
    run(tracker, store, [chain(215.0, holder=99, app="worker")], 215.0)
    store.close()
    return tracker.incidents()


# ---- what survives a restart -----------------------------------------------------------------

def test_round_trip_lists_the_same_incidents_and_ids_go_on(tmp_path: Path) -> None:
    kept = before_restart(tmp_path)
    assert [(i["id"], i["status"]) for i in kept] == [(2, "active"), (1, "ended")]
    tracker, store, events = restarted(tmp_path, now=300.0)
    assert events == []
    assert tracker.incidents() == kept  # every field: evidence, occurrences, times
    # a new incident takes the next id, never one used before the restart
    events = run(tracker, store, [chain(301.0, holder=7, app="third")], 301.0)
    assert [(e.phase, e.incident["id"]) for e in events] == [("begin", 3), ("end", 2)]


def test_an_incident_still_there_keeps_its_id_and_start(tmp_path: Path) -> None:
    before_restart(tmp_path)
    tracker, store, _ = restarted(tmp_path, now=300.0)
    events = run(tracker, store, [chain(301.0, holder=99, app="worker")], 301.0)
    assert events == []  # not a new incident: no begin
    ongoing = tracker.incidents()[0]
    assert (ongoing["id"], ongoing["status"]) == (2, "active")
    assert ongoing["began_at"] == "1970-01-01T00:03:20Z"  # 200, not the restart
    assert ongoing["last_seen_at"] == "1970-01-01T00:05:01Z"
    assert ongoing["occurrences"] == 1  # the same holder, pid 99, not counted twice


def test_an_incident_gone_after_the_restart_ends_where_it_was_last_seen(tmp_path: Path) -> None:
    before_restart(tmp_path)
    tracker, store, _ = restarted(tmp_path, now=300.0)
    # its coalescing window passed while the exporter was down: it ends for good at once
    (end,) = run(tracker, store, [quiet(301.0)], 301.0)
    gone = end.incident
    assert (end.phase, gone["id"]) == ("end", 2)
    assert gone["ended_at"] == "1970-01-01T00:03:35Z"  # 215, where it was last seen
    assert gone["end_reason"] == "not seen after restart"
    assert gone["duration_seconds"] == 15.0  # not stretched over the downtime
    store.close()
    again, _, _ = restarted(tmp_path, now=400.0)
    assert [(i["id"], i["status"]) for i in again.incidents()] == [(2, "ended"), (1, "ended")]


def test_a_target_not_read_after_the_restart_ends_its_incidents_after_the_window(
        tmp_path: Path) -> None:
    before_restart(tmp_path)
    tracker, store, _ = restarted(tmp_path, now=300.0)
    other = pg_snapshot(group(sessions=1), taken_at=301.0, target="other-db")
    assert run(tracker, store, [other], 301.0) == []
    assert tracker.incidents()[0]["status"] == "active"  # its target may still come
    (end,) = run(tracker, store, [other], 300.0 + WINDOW)
    assert end.incident["id"] == 2 and end.incident["end_reason"] == "target not read"
    assert end.incident["ended_at"] == "1970-01-01T00:03:35Z"


def test_an_incident_ending_at_the_stop_ends_or_comes_back_after_the_restart(
        tmp_path: Path) -> None:
    """Stopped inside its coalescing window: ended at the restart when the window passed
    meanwhile (its end event then), the same incident when it is back within it."""
    tracker, store, _ = restarted(tmp_path, now=0.0)
    run(tracker, store, [chain(100.0)], 100.0)
    run(tracker, store, [quiet(110.0)], 110.0)  # ending: back before 140 is the same incident
    store.close()
    tracker, store, events = restarted(tmp_path, now=120.0)
    assert events == []
    assert run(tracker, store, [chain(121.0)], 121.0) == []
    assert tracker.incidents()[0]["occurrences"] == 2  # pid 4711 again, one more occurrence
    run(tracker, store, [quiet(130.0)], 130.0)
    store.close()
    tracker, store, events = restarted(tmp_path, now=300.0)
    assert [(e.phase, e.incident["id"], e.incident["ended_at"]) for e in events] == [
        ("end", 1, "1970-01-01T00:02:10Z")]
    open_, ended = tracker.records()
    assert open_ == [] and [i.id for i in ended] == [1]
    store.close()


def test_ids_stay_unique_when_no_ended_incident_is_kept(tmp_path: Path) -> None:
    tracker, store, _ = restarted(tmp_path, keep=0, now=0.0)
    run(tracker, store, [chain(1.0)], 1.0)
    run(tracker, store, [quiet(2.0)], 2.0)
    run(tracker, store, [quiet(40.0)], 40.0)
    assert tracker.incidents() == []
    store.close()
    tracker, store, _ = restarted(tmp_path, keep=0, now=100.0)
    (begin,) = run(tracker, store, [chain(101.0)], 101.0)
    assert begin.incident["id"] == 2


def test_the_ended_incidents_kept_on_disk_are_bounded(tmp_path: Path) -> None:
    tracker, store, _ = restarted(tmp_path, keep=3, now=0.0)
    for n in range(10):
        at = 100.0 * n
        run(tracker, store, [chain(at, holder=n, app=f"app-{n}")], at)
        run(tracker, store, [quiet(at + 1)], at + 1)
        run(tracker, store, [quiet(at + 50)], at + 50)
    store.close()
    with closing(sqlite3.connect(tmp_path / FILENAME)) as db, db:
        assert db.execute("SELECT status, count(*) FROM incident GROUP BY status"
                          ).fetchall() == [("ended", 3)]
    tracker, _, _ = restarted(tmp_path, keep=3, now=2000.0)
    assert [i["id"] for i in tracker.incidents()] == [10, 9, 8]


def test_a_recorder_with_a_state_dir_restores_and_logs_nothing_new(tmp_path: Path) -> None:
    now = time.time()
    first = IncidentRecorder(poll_interval=1.0, state_dir=str(tmp_path / "state"))
    first.after_poll([chain(now)], now)
    first.close()
    with capture_logs() as logs:
        second = IncidentRecorder(poll_interval=1.0, state_dir=str(tmp_path / "state"))
        second.after_poll([chain(now + 1)], now + 1)
    (incident,) = second.as_json()["incidents"]
    assert incident["id"] == 1 and incident["status"] == "active"
    assert [e["event"] for e in logs] == ["incidents restored"]
    assert logs[0]["open"] == 1 and logs[0]["next_id"] == 2
    second.close()


def test_the_state_dir_setting(tmp_path: Path) -> None:
    env = {"PREFECT_PG_EXPORTER_POSTGRES_DSN": "postgresql://u@h/db"}
    assert load({}, env).state_dir is None
    assert load({}, {**env, "PREFECT_PG_EXPORTER_STATE_DIR": "/var/lib/x"}).state_dir == \
        "/var/lib/x"
    assert load({"state_dir": ["/s"]}, env).state_dir == "/s"
    file = tmp_path / "exporter.toml"
    file.write_text('state_dir = "/from/file"\n')
    assert load({"config_file": str(file)}, env).state_dir == "/from/file"


# ---- what goes wrong: one warning, memory only ---------------------------------------------

def memory_only(directory: Path) -> list[MutableMapping[str, Any]]:
    """A recorder over a store that cannot be used: the warnings it logs; it still records."""
    with capture_logs() as logs:
        recorder = IncidentRecorder(poll_interval=1.0, state_dir=str(directory))
        assert recorder.store is not None and not recorder.store.usable
        now = time.time()
        recorder.after_poll([chain(now)], now)
        recorder.after_poll([chain(now + 1, holder=5, app="other")], now + 1)
    assert [i["id"] for i in recorder.as_json()["incidents"]] == [2, 1]
    return [e for e in logs if str(e["event"]).startswith("incident store")]


def test_a_file_that_is_not_a_database_is_one_warning(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(b"\x00garbage" * 1000)
    (warning,) = memory_only(tmp_path)
    assert warning["event"] == ("incident store cannot be used: incidents are kept in memory "
                                "only")
    assert warning["path"] == str(tmp_path / FILENAME) and "DatabaseError" in warning["error"]
    assert (tmp_path / FILENAME).read_bytes() == b"\x00garbage" * 1000  # left for a person


def test_a_damaged_record_is_one_warning(tmp_path: Path) -> None:
    before_restart(tmp_path)
    with closing(sqlite3.connect(tmp_path / FILENAME)) as db, db:
        db.execute("UPDATE incident SET record = '{\"id\": 2}' WHERE id = 2")
    (warning,) = memory_only(tmp_path)
    assert "KeyError" in warning["error"]


def test_a_store_of_a_newer_version_is_one_warning(tmp_path: Path) -> None:
    before_restart(tmp_path)
    with closing(sqlite3.connect(tmp_path / FILENAME)) as db, db:
        db.execute("PRAGMA user_version = 7")
    (warning,) = memory_only(tmp_path)
    assert "schema version 7" in warning["error"]


def test_a_second_exporter_on_the_same_directory_is_one_warning(tmp_path: Path) -> None:
    first = IncidentStore(str(tmp_path))
    assert first.load() is not None
    (warning,) = memory_only(tmp_path)
    assert "locked" in warning["error"]
    first.close()


def as_unprivileged(call: Callable[[], T]) -> T:
    """call() as the image's user, whom permissions bind (root's are ignored), in a forked
    child; as the current user when that is not root."""
    if os.geteuid() != 0:
        return call()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, call, send the result (or the failure) back
        try:
            os.setgroups([])
            os.setgid(UNPRIVILEGED)
            os.setuid(UNPRIVILEGED)
            outcome: tuple[bool, Any] = (True, call())
        except BaseException as exc:  # reported by the parent
            outcome = (False, f"{type(exc).__name__}: {exc}")
        finally:
            os.write(write, pickle.dumps(outcome))
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    ok, result = pickle.loads(data)
    assert ok, f"as uid {UNPRIVILEGED}: {result}"
    return result


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory the unprivileged user can reach (tmp_path is root's alone)."""
    root = lab_root("incident-store-")
    yield root
    for path in sorted(root.rglob("*"), reverse=True):
        path.chmod(0o700)
        path.unlink() if path.is_file() else path.rmdir()
    root.rmdir()


def warnings_of(directory: Path) -> list[str]:
    return [str(w["error"]) for w in memory_only(directory)]


def test_a_read_only_directory_is_one_warning(shared: Path) -> None:
    directory = shared / "state"
    directory.mkdir()
    directory.chmod(0o555)
    (error,) = as_unprivileged(lambda: warnings_of(directory))
    assert "unable to open database file" in error
    assert not (directory / FILENAME).exists()


def test_a_read_only_existing_store_is_one_warning(shared: Path) -> None:
    directory = shared / "state"
    before_restart(directory)
    (directory / FILENAME).chmod(0o444)
    directory.chmod(0o555)
    (error,) = as_unprivileged(lambda: warnings_of(directory))
    assert error.startswith("OperationalError")  # SQLite's words vary: disk I/O, readonly
    # the store is untouched: the next exporter that can write it finds everything
    directory.chmod(0o755)
    (directory / FILENAME).chmod(0o644)
    tracker, _, _ = restarted(directory, now=300.0)
    assert [i["id"] for i in tracker.incidents()] == [2, 1]


def test_a_directory_that_cannot_be_created_is_one_warning(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    (warning,) = memory_only(tmp_path / "file" / "state")
    assert "FileExistsError" in warning["error"] or "NotADirectoryError" in warning["error"]


def test_a_write_that_fails_later_is_one_warning_then_memory_only(tmp_path: Path) -> None:
    store = IncidentStore(str(tmp_path))
    assert isinstance(store.load(), Stored)
    tracker = IncidentTracker(coalesce_seconds=WINDOW)
    run(tracker, store, [chain(1.0)], 1.0)
    store.flush()
    assert store._db is not None
    store._db.execute("DROP TABLE incident")  # what a failing disk would say, in effect
    with capture_logs() as logs:
        run(tracker, store, [chain(2.0, holder=8, app="b")], 2.0)
        store.flush()
        run(tracker, store, [chain(3.0, holder=9, app="c")], 3.0)
        store.flush()
    assert [e["event"] for e in logs] == [
        "incident store cannot be written: incidents are kept in memory only"]
    assert not store.usable and len(tracker.incidents()) == 3


# ---- cost: the event loop only encodes; a thread writes ------------------------------------

def test_the_loop_only_encodes_and_a_thread_writes(tmp_path: Path) -> None:
    """What a save costs the event loop, the typical (three open incidents seen again) and the
    worst (100 open, max_open, every one changed): on the development machine 0.06 ms and
    0.9 ms (median). The bounds leave 15-20x for loaded CI machines. The writes themselves (2-3 ms
    in the worst case, with spikes at checkpoints) happen in the store's own thread."""
    tracker = IncidentTracker(coalesce_seconds=WINDOW, max_open=100)
    store = IncidentStore(str(tmp_path))
    assert store.load() is not None
    writers: set[str] = set()
    write = store._write

    def spied(*args: Any) -> None:
        writers.add(threading.current_thread().name)
        write(*args)

    store._write = spied  # type: ignore[method-assign,assignment]

    def timed(snapshots: Callable[[float], list[Any]], rounds: int) -> float:
        took = []
        for n in range(rounds):
            tracker.update(snapshots(float(n + 1)), float(n + 1))
            started = time.perf_counter()
            save(tracker, store)
            took.append(time.perf_counter() - started)
        return statistics.median(took)

    few = timed(lambda at: [chain(at, holder=h, app=f"a{h}", target=f"db{h}") for h in range(3)],
                50)
    many = timed(lambda at: [pg_snapshot(*[group(app=f"app-{i}", state="idle in transaction",
                                                 max_transaction_age=400.0 + at)
                                           for i in range(100)], taken_at=at)], 20)
    print(f"save on the loop: 3 open incidents {few * 1000:.3f} ms, 100 open "
          f"{many * 1000:.3f} ms (median)")
    assert few < 0.001 and many < 0.020
    store.close()
    assert writers and all(name.startswith("incident-store") for name in writers)
    reopened = IncidentStore(str(tmp_path))
    stored = reopened.load()
    assert stored is not None and len(stored.open) == 100  # everything written by the end
    reopened.close()
