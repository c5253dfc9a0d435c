"""Incidents kept on disk (PREFECT_PG_EXPORTER_STATE_DIR): a restart loses neither the ended
incidents nor the sequence of ids, and an incident still going on keeps its id and its start.

- SQLite (the standard library's sqlite3) rather than an append-only journal: what is kept is a
  small set of rows rewritten in place (an open incident's last sighting changes every poll, the
  oldest ended one is dropped past `recent_incidents`), which a journal would have to replay and
  compact; SQLite gives atomic transactions and tells a damaged file from a good one itself.
- The file mirrors the tracker's memory, so it is bounded as that is (the open incidents, at
  most `recent_incidents` ended ones), and its WAL is checkpointed and cut every 128 pages:
  under a megabyte each with 100 open incidents of the largest evidence. Only the rows that
  changed are written: nothing while nothing happens, the open incidents during an incident.
- Written off the event loop, by one thread of its own: the loop only encodes the records (an
  ended one once) and hands them over (0.06 ms a poll with three open incidents, 0.9 ms with
  100: tests/unit/test_incident_store.py). Measured on the shared development machine in the
  worst case (100 open incidents with the largest evidence, all changed every poll), SQLite's
  writes took 2-3 ms a poll with spikes to 110 ms (an fsync at a checkpoint, a busy disk): too
  much for a loop that serves scrapes in under 5 ms. The thread writes the latest state asked
  for, so a slow disk coalesces polls rather than queueing them. WAL with synchronous=NORMAL:
  a process that crashes loses nothing written (the pages are the OS's), a power failure at
  most the last polls, never the file's consistency.
- The file is locked for the exporter's lifetime (locking_mode EXCLUSIVE): a second exporter
  pointed at the same directory warns and keeps memory only, rather than interleave ids.
- Anything wrong (the directory cannot be created or written, the file is not a database or a
  damaged one, a newer schema, a write failing later) is one warning and memory-only operation
  from then on: losing the history must never cost the exporter.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from exporter.incidents.tracker import Incident

log = structlog.get_logger("exporter.incidents")

FILENAME = "incidents.sqlite3"
SCHEMA_VERSION = 1
LOCK_WAIT_SECONDS = 1.0  # another process holding the file: give up after this, memory-only
WAL_PAGES = 128
Row = tuple[str, float | None, str]  # status, ended_at, record (JSON)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS incident (
    id INTEGER PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('open', 'ended')),
    ended_at REAL,
    record TEXT NOT NULL  -- Incident.record() as JSON
);
"""


@dataclass
class Stored:
    """What a store held: the next id, the open incidents, the ended ones oldest first."""
    next_id: int = 1
    open: list[Incident] = field(default_factory=list)
    ended: list[Incident] = field(default_factory=list)


class IncidentStore:
    def __init__(self, directory: str) -> None:
        self.path = Path(directory) / FILENAME
        self._db: sqlite3.Connection | None = None
        self._written: dict[int, Row] = {}  # what the file holds (the writer's)
        self._next_id = 0
        self._encoded: dict[int, Row] = {}  # the last state handed over (the loop's)
        self._handed_id = 0
        self._lock = threading.Lock()  # guards _wanted and _writing
        self._wanted: tuple[int, dict[int, Row]] | None = None
        self._writing = False
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="incident-store")

    @property
    def usable(self) -> bool:
        return self._db is not None

    # ---- open and read ---------------------------------------------------------------------

    def load(self) -> Stored | None:
        """Open (creating the directory and file if need be) and read; None, after one
        warning, when the store cannot be used."""
        try:
            return self._load()
        except (sqlite3.Error, OSError, ValueError, KeyError, TypeError) as exc:
            self._give_up("cannot be used", exc)
            return None

    def _load(self) -> Stored:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # opened here, then used by the writer thread alone
        db = sqlite3.connect(self.path, timeout=LOCK_WAIT_SECONDS, check_same_thread=False)
        self._db = db
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        if db.execute("PRAGMA quick_check").fetchone() != ("ok",):
            raise ValueError("the file is damaged (quick_check)")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise ValueError(f"schema version {version}, this exporter reads {SCHEMA_VERSION}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        # the WAL copied into the file every 128 pages and cut back after: the file and its
        # WAL stay under a megabyte each whatever the incidents (16 MiB volumes in deploy/)
        db.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES}")
        db.execute(f"PRAGMA journal_size_limit = {WAL_PAGES * 4096}")
        with db:  # a write now: a read-only file or directory shows here, not at the first save
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('next_id', 1)")
            db.execute("UPDATE meta SET value = value WHERE name = 'next_id'")
        stored = Stored(next_id=db.execute(
            "SELECT value FROM meta WHERE name = 'next_id'").fetchone()[0])
        rows = db.execute("SELECT status, ended_at, record FROM incident ORDER BY ended_at, id")
        for status, ended_at, record in rows:
            incident = Incident.from_record(json.loads(record))
            (stored.open if status == "open" else stored.ended).append(incident)
            self._written[incident.id] = (status, ended_at, record)
        self._encoded = dict(self._written)
        self._next_id = self._handed_id = stored.next_id
        return stored

    # ---- write -----------------------------------------------------------------------------

    def save(self, next_id: int, open_: Sequence[Incident], ended: Sequence[Incident]) -> None:
        """On the loop: the state to keep, encoded and handed to the writer thread (returns at
        once; nothing when nothing changed)."""
        if self._db is None:
            return
        rows: dict[int, Row] = {}
        for incident in ended:
            kept = self._encoded.get(incident.id)  # an ended incident no longer changes
            rows[incident.id] = kept if kept and kept[0] == "ended" else (
                "ended", incident.ended_at, json.dumps(incident.record()))
        for incident in open_:
            rows[incident.id] = ("open", incident.ended_at, json.dumps(incident.record()))
        if rows == self._encoded and next_id == self._handed_id:
            return
        self._encoded, self._handed_id = rows, next_id
        with self._lock:
            self._wanted = (next_id, rows)
            if self._writing:
                return  # the writer takes the latest state when done with this one
            self._writing = True
        self._writer.submit(self._write_wanted)

    def _write_wanted(self) -> None:
        """In the writer thread: the latest state asked for, until there is none newer."""
        while True:
            with self._lock:
                wanted, self._wanted = self._wanted, None
                if wanted is None:
                    self._writing = False
                    return
            self._write(*wanted)

    def _write(self, next_id: int, rows: dict[int, Row]) -> None:
        if self._db is None:
            return
        changed = [(i, *row) for i, row in rows.items() if self._written.get(i) != row]
        gone = [(i,) for i in self._written if i not in rows]
        try:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO incident VALUES (?, ?, ?, ?)",
                                     changed)
                self._db.executemany("DELETE FROM incident WHERE id = ?", gone)
                if next_id != self._next_id:
                    self._db.execute("UPDATE meta SET value = ? WHERE name = 'next_id'",
                                     (next_id,))
        except sqlite3.Error as exc:
            self._give_up("cannot be written", exc)
            return
        self._written, self._next_id = rows, next_id

    def flush(self) -> None:
        """Wait until what was handed over is written (the writer runs one task at a time)."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        """Write what is pending, then let the file go (and its lock)."""
        self._writer.shutdown(wait=True)
        self._close_db()

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _give_up(self, what: str, exc: Exception) -> None:
        log.warning(f"incident store {what}: incidents are kept in memory only",
                    path=str(self.path), error=f"{type(exc).__name__}: {exc}")
        self._close_db()
