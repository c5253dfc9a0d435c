"""Incidents followed across polls: snapshots and the time in, begin / update / end events out.
Pure (no clock, no I/O, no logging), so every transition is unit-tested on hand-made snapshots.

- An incident begins with the first snapshot that shows it: exactly when the doctor's finding
  appears, since the source kinds observe it on the same conditions and thresholds.
- It is updated (an event) only when it worsens: its severity rises, or the sessions or clients
  it affects at least double since the last event. Its evidence follows the worst moment seen
  (the latest of equals, so ages show how long it lasted). A later equal sighting of the same
  occurrence (the same instances: root blocker, stalled pids) that misses an entry the record
  already had (a poll that caught the blocked writer between the activity read and the lock
  read knows no table) keeps that entry: read after the fact, the incident must still say
  which table and which statement, not lose them to the last poll before it ended.
- It ends with the first snapshot of its target that no longer shows it, or when its target is
  no longer read. The end event waits `coalesce_seconds`: an incident with the same cause
  (application, pool) that comes back within that time is the same incident, one more
  occurrence, no new events. A storm of short lock waits is one incident with a count.
- Memory is bounded: at most `max_open` incidents at once (more are counted as untracked), the
  last `keep` ended ones, each with bounded evidence (model.bounded).
- After a restart (restore(), from store.py) the incidents that were open wait for the first
  snapshot of their target: shown again, one goes on with its id and start; not shown, it ended
  while the exporter was down, where it was last seen (`not seen after restart`). A target not
  read within the coalescing window ends them as `target not read`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from exporter.finding import Context
from exporter.incidents.model import Evidence, IncidentView, Observation, bounded, one_line
from exporter.kinds import KINDS
from exporter.source import Snapshot
from exporter.thresholds import thresholds as all_thresholds

Phase = Literal["begin", "update", "end"]
MAX_INSTANCES = 64  # occurrence ids remembered per incident, to count new ones

Key = tuple[str, str, str, tuple[tuple[str, str], ...]]  # source, target, kind, cause


def iso(when: float | None) -> str | None:
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Incident:
    id: int
    source: str  # the source kind: postgres | pgbouncer | prefect | redis
    observation: Observation  # the worst seen (its evidence bounded)
    began_at: float
    last_seen_at: float
    ended_at: float | None = None
    end_reason: str = ""  # resolved | target not read | not seen after restart
    occurrences: int = 1
    _instances: dict[str, None] = field(default_factory=dict, repr=False)
    _logged: tuple[int, float] = (0, 0.0)  # severity and magnitude of the last event
    restored: bool = False  # read back from the store, its target not observed since

    @property
    def key(self) -> Key:
        o = self.observation
        return self.source, o.target, o.kind, o.cause

    @property
    def kind(self) -> str:
        return self.observation.kind

    @property
    def target(self) -> str:
        return self.observation.target

    def as_dict(self) -> IncidentView:
        o = self.observation
        end = self.ended_at if self.ended_at is not None else self.last_seen_at
        return {
            "id": self.id, "kind": o.kind, "source": self.source, "target": o.target,
            "status": "active" if self.ended_at is None else "ended",
            "severity": o.severity, "title": o.title,
            "began_at": iso(self.began_at), "ended_at": iso(self.ended_at),
            "last_seen_at": iso(self.last_seen_at),
            "duration_seconds": round(end - self.began_at, 1),
            "occurrences": self.occurrences, "end_reason": self.end_reason or None,
            "cause": dict(o.cause), "evidence": dict(o.evidence),
        }

    def _count(self, instances: Sequence[str]) -> int:
        """Instances not seen before, remembered (the oldest forgotten past MAX_INSTANCES)."""
        new = [i for i in dict.fromkeys(instances) if i not in self._instances]
        for instance in new:
            self._instances[instance] = None
            if len(self._instances) > MAX_INSTANCES:
                del self._instances[next(iter(self._instances))]
        return len(new)

    def record(self) -> dict[str, Any]:
        """Everything needed to follow it on after a restart (store.py), JSON-friendly."""
        o = self.observation
        return {
            "id": self.id, "source": self.source, "kind": o.kind, "target": o.target,
            "cause": [list(pair) for pair in o.cause], "severity": o.severity, "title": o.title,
            "evidence": dict(o.evidence), "magnitude": o.magnitude,
            "observed": list(o.instances),
            "began_at": self.began_at, "last_seen_at": self.last_seen_at,
            "ended_at": self.ended_at, "end_reason": self.end_reason,
            "occurrences": self.occurrences, "instances": list(self._instances),
            "logged": list(self._logged),
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Incident:
        """The inverse of record(); KeyError, TypeError or ValueError when it is not one."""
        cause = tuple((str(k), str(v)) for k, v in r["cause"])
        # "observed" is absent from the records of earlier versions: no occurrence known
        o = Observation(str(r["kind"]), str(r["target"]), cause, str(r["severity"]),
                        str(r["title"]), dict(r["evidence"]), float(r["magnitude"]),
                        tuple(str(i) for i in r.get("observed", ())))
        ended = None if r["ended_at"] is None else float(r["ended_at"])
        severity, magnitude = r["logged"]
        return cls(int(r["id"]), str(r["source"]), _bounded(o), float(r["began_at"]),
                   float(r["last_seen_at"]), ended, str(r["end_reason"]),
                   int(r["occurrences"]), dict.fromkeys(str(i) for i in r["instances"]),
                   (int(severity), float(magnitude)))


@dataclass(frozen=True)
class IncidentEvent:
    phase: Phase
    incident: IncidentView  # Incident.as_dict() at that moment


class IncidentTracker:
    def __init__(self, overrides: Mapping[str, float] | None = None, *, keep: int = 50,
                 coalesce_seconds: float = 60.0, max_open: int = 100) -> None:
        self._thresholds = all_thresholds(overrides)
        self._coalesce = coalesce_seconds
        self._max_open = max_open
        self._open: dict[Key, Incident] = {}
        self._ended: deque[Incident] = deque(maxlen=keep)
        self._seen: dict[tuple[str, str], float] = {}  # (source, target) -> last taken_at
        self._next_id = 1
        self.untracked = 0  # observations not followed: max_open incidents were open
        # open before a restart, waiting for their target's first snapshot: key -> incident
        self._restored: dict[Key, Incident] = {}
        self._restored_at = 0.0

    # ---- a restart: what the store kept ----------------------------------------------------

    def restore(self, next_id: int, open_: Sequence[Incident], ended: Sequence[Incident],
                now: float) -> list[IncidentEvent]:
        """The state kept before a restart: ids go on from next_id, the ended incidents are
        listed again (oldest first, as they ended), the open ones wait for their target. Those
        that were ending and whose coalescing window passed while the exporter was down end
        now (their events returned)."""
        # never an id used before, whatever the store says its next one is
        self._next_id = max(self._next_id, next_id, *(i.id + 1 for i in [*open_, *ended]))
        self._ended.extend(ended)
        events = []
        for incident in open_[:self._max_open]:
            if incident.ended_at is not None and now - incident.ended_at >= self._coalesce:
                self._ended.append(incident)
                events.append(IncidentEvent("end", incident.as_dict()))
            else:
                incident.restored = True
                self._restored[incident.key] = incident
        self._restored_at = now
        return events

    @property
    def next_id(self) -> int:
        return self._next_id

    def records(self) -> tuple[list[Incident], list[Incident]]:
        """What a store keeps: the open incidents (those restored too), the ended ones kept."""
        return [*self._open.values(), *self._restored.values()], list(self._ended)

    # ---- in: snapshots and the time --------------------------------------------------------

    def update(self, snapshots: Sequence[Snapshot], now: float) -> list[IncidentEvent]:
        """After a poll: the fresh snapshots (each handled once: a snapshot seen before changes
        nothing) and the time. Returns the events, in order."""
        context = Context(self._thresholds, snapshots)
        events: list[IncidentEvent] = []
        read: set[tuple[str, str]] = set()
        for snapshot in snapshots:
            kind = next((k for k in KINDS if k.owns(snapshot)), None)
            if kind is None:
                continue
            where = (kind.name, snapshot.target)
            read.add(where)
            if self._seen.get(where, float("-inf")) >= snapshot.taken_at:
                continue
            self._seen[where] = snapshot.taken_at
            self._resume(where)
            events += self._observe(where, snapshot.taken_at,
                                    list(kind.observe(snapshot, context)))
        self._unread(read)
        self._expire_restored(now)
        return events + self._finish(now)

    def _resume(self, where: tuple[str, str]) -> None:
        """The restored incidents of a target, open again for its first snapshot to judge."""
        for key in [k for k in self._restored if k[:2] == where]:
            self._open[key] = self._restored.pop(key)

    def _expire_restored(self, now: float) -> None:
        """Restored incidents whose target is still not read a coalescing window after the
        restart end where they were last seen."""
        if not self._restored or now - self._restored_at < self._coalesce:
            return
        for key, incident in self._restored.items():
            incident.restored = False
            if incident.ended_at is None:
                incident.ended_at = incident.last_seen_at
                incident.end_reason = "target not read"
            self._open[key] = incident
        self._restored.clear()

    def _observe(self, where: tuple[str, str], at: float,
                 observations: list[Observation]) -> list[IncidentEvent]:
        events: list[IncidentEvent] = []
        shown: set[Key] = set()
        for o in _merged(observations):
            key: Key = (where[0], where[1], o.kind, o.cause)
            shown.add(key)
            incident = self._open.get(key)
            if incident is None:
                events += self._begin(key, o, at)
            else:
                events += self._again(incident, o, at)
        for key, incident in self._open.items():
            if key[:2] != where:
                continue
            if key not in shown and incident.ended_at is None:
                if incident.restored:  # it ended while the exporter was down
                    incident.ended_at = incident.last_seen_at
                    incident.end_reason = "not seen after restart"
                else:
                    incident.ended_at, incident.end_reason = at, "resolved"
            incident.restored = False
        return events

    def _begin(self, key: Key, o: Observation, at: float) -> list[IncidentEvent]:
        if len(self._open) + len(self._restored) >= self._max_open:
            self.untracked += 1
            return []
        incident = Incident(self._next_id, key[0], _bounded(o), at, at, _logged=o.rank)
        incident._count(o.instances)
        self._next_id += 1
        self._open[key] = incident
        return [IncidentEvent("begin", incident.as_dict())]

    def _again(self, incident: Incident, o: Observation, at: float) -> list[IncidentEvent]:
        new = incident._count(o.instances)
        if incident.ended_at is not None:  # it came back within the coalescing window
            incident.ended_at, incident.end_reason = None, ""
            incident.occurrences += max(new, 1)
        else:
            incident.occurrences += new
        incident.last_seen_at = at
        incident.observation = _bounded(_worst(incident.observation, o))
        if not _worse(o.rank, incident._logged):
            return []
        incident._logged = o.rank
        return [IncidentEvent("update", incident.as_dict())]

    def _unread(self, read: set[tuple[str, str]]) -> None:
        """Incidents of a target no longer read end where they were last seen."""
        for key, incident in self._open.items():
            if key[:2] not in read and incident.ended_at is None:
                incident.ended_at = incident.last_seen_at
                incident.end_reason = "target not read"

    def _finish(self, now: float) -> list[IncidentEvent]:
        """The incidents quiet for the coalescing window: ended for good."""
        done = [key for key, i in self._open.items()
                if i.ended_at is not None and now - i.ended_at >= self._coalesce]
        events = []
        for key in done:
            incident = self._open.pop(key)
            self._ended.append(incident)
            events.append(IncidentEvent("end", incident.as_dict()))
        return events

    # ---- out: what is remembered -----------------------------------------------------------

    def incidents(self) -> list[IncidentView]:
        """The open incidents, then the ended ones kept, the most recent first."""
        every = [*self._open.values(), *self._restored.values(), *self._ended]
        return [i.as_dict() for i in sorted(every, key=lambda i: (-i.began_at, -i.id))]


def _merged(observations: Sequence[Observation]) -> list[Observation]:
    """One observation per kind and cause (the worst), should a kind yield two."""
    by: dict[tuple[str, tuple[tuple[str, str], ...]], Observation] = {}
    for o in observations:
        key = (o.kind, o.cause)
        by[key] = _worst(by[key], o) if key in by else o
    return list(by.values())


def _worst(kept: Observation, new: Observation) -> Observation:
    """The worse of two (the newer of equals: its ages are the longer). Of equals that show the
    same occurrence, the entries the newer misses are kept from the older: a poll that read
    less of the same moment (the lock was granted between two reads, the session's statement
    was gone) must not erase what an earlier one knew. A new occurrence replaces it all: the
    older's table or statement would belong to another session."""
    if new.rank > kept.rank:
        return new
    if new.rank < kept.rank:
        return kept
    if not _same_occurrence(kept, new) or kept.evidence.keys() <= new.evidence.keys():
        return new
    evidence = {**kept.evidence, **new.evidence}  # the older's order, the newer's values
    return Observation(new.kind, new.target, new.cause, new.severity, new.title, evidence,
                       new.magnitude, new.instances)


def _same_occurrence(a: Observation, b: Observation) -> bool:
    """Both name their instances, and the same ones (a kind without instances, or an
    occurrence with more than the tracker keeps, cannot tell: then it is not the same)."""
    return bool(a.instances) and set(a.instances) == set(b.instances)


def _worse(rank: tuple[int, float], logged: tuple[int, float]) -> bool:
    """Worse enough to say so again: a higher severity, or at least twice as many affected."""
    severity, magnitude = rank
    return severity > logged[0] or (severity == logged[0] and magnitude >= 2 * logged[1] > 0)


def _bounded(o: Observation) -> Observation:
    evidence: dict[str, Evidence] = bounded(o.evidence)
    # its instances are kept to tell the next sighting of the same occurrence (_worst), up to
    # MAX_INSTANCES: past that, none (an occurrence that large is never taken as the same)
    instances = tuple(dict.fromkeys(o.instances))
    return Observation(o.kind, o.target, o.cause, o.severity, one_line(o.title), evidence,
                       o.magnitude, instances if len(instances) <= MAX_INSTANCES else ())
