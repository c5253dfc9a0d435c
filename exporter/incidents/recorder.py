"""The running exporter's incidents: the tracker fed after each poll, its events written to the
log under the journal's rate limit, its state to the store when a state directory is set, and
what /incidents and the landing page show. Nothing here may fail a poll or the exposition: an
error in it is logged, once per distinct message."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from exporter.incidents import fingerprint
from exporter.incidents.journal import Journal
from exporter.incidents.model import IncidentsReport
from exporter.incidents.tracker import IncidentEvent, IncidentTracker
from exporter.source import Snapshot

if TYPE_CHECKING:
    from exporter.incidents.store import IncidentStore

log = structlog.get_logger("exporter.incidents")

COALESCE_POLLS = 4  # an incident back within this many poll intervals is the same incident


class IncidentRecorder:
    def __init__(self, overrides: dict[str, float] | None = None, *, keep: int = 50,
                 poll_interval: float = 15.0, statements: bool = True,
                 state_dir: str | None = None) -> None:
        self.tracker = IncidentTracker(overrides, keep=keep,
                                       coalesce_seconds=COALESCE_POLLS * poll_interval)
        self.journal = Journal()
        self.statements = statements
        self._last_error = ""
        if statements and not fingerprint.available():
            log.warning("statements not shown in incidents: the SQL tokenizer pglast cannot "
                        "be imported (install the pglast package)")
        self.store: IncidentStore | None = None
        if state_dir:
            from exporter.incidents.store import IncidentStore  # sqlite3 only with a state dir

            self.store = IncidentStore(state_dir)
            self._restore(self.store, time.time())

    def _restore(self, store: IncidentStore, now: float) -> None:
        stored = store.load()
        if stored is None:  # warned: memory only
            return
        events = self.tracker.restore(stored.next_id, stored.open, stored.ended, now)
        log.info("incidents restored", path=str(store.path), open=len(stored.open),
                 ended=len(stored.ended), next_id=self.tracker.next_id)
        self._log(events, now)
        self._save()

    def after_poll(self, snapshots: Sequence[Snapshot], now: float | None = None) -> None:
        now = time.time() if now is None else now
        try:
            events = self.tracker.update(snapshots, now)
            self._log(events, now)
            self._save()
        except Exception as exc:  # a bug here must not stop the poller or the exposition
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_error:
                log.error("incident tracking failed", error=message)
            self._last_error = message

    def _log(self, events: Sequence[IncidentEvent], now: float) -> None:
        for line in self.journal.lines(events, now):
            getattr(log, line.level)(line.message, **line.fields)

    def _save(self) -> None:
        if self.store is not None:
            self.store.save(self.tracker.next_id, *self.tracker.records())

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def as_json(self) -> IncidentsReport:
        """The body of /incidents."""
        return {"incidents": self.tracker.incidents(), "untracked": self.tracker.untracked,
                "statements": self.statements}
