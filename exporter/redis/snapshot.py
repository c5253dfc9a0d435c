"""What a Redis poll sees: plain typed data, no driver. Consumer names are not kept: Docket
names its consumers after host and pid, so they say nothing a label could use."""

from __future__ import annotations

from dataclasses import dataclass


def id_ms(entry_id: str | None) -> int | None:
    """The milliseconds part of a stream id ('1733350000000-3' -> 1733350000000)."""
    if not entry_id:
        return None
    head = entry_id.partition("-")[0]
    return int(head) if head.isdigit() else None


def id_key(entry_id: str | None) -> tuple[int, int]:
    """A stream id as a comparable pair; None and malformed ids sort first ('0-0')."""
    if not entry_id:
        return (0, 0)
    ms, _, seq = entry_id.partition("-")
    return (int(ms) if ms.isdigit() else 0, int(seq) if seq.isdigit() else 0)


@dataclass(frozen=True)
class Group:
    name: str
    consumers: int
    pending: int  # delivered to a consumer, not acknowledged (the group's PEL)
    last_delivered_id: str
    entries_read: int | None  # Redis 7.0+
    lag: int | None  # Redis 7.0+, as Redis reports it (None when it cannot tell)
    consumer_idle_seconds: tuple[float, ...]  # of each consumer; names dropped

    def active_consumers(self, idle_limit: float) -> int:
        return sum(1 for idle in self.consumer_idle_seconds if idle < idle_limit)


@dataclass(frozen=True)
class Stream:
    key: str
    length: int
    last_generated_id: str
    first_entry_id: str | None  # None when the stream is empty
    groups: tuple[Group, ...]

    def delivered_all(self, group: Group) -> bool:
        return id_key(group.last_delivered_id) >= id_key(self.last_generated_id)

    def undelivered(self, group: Group) -> int:
        """Entries not yet delivered to the group. Judged from the ids first: Redis 7.0's `lag`
        stayed at 10 with everything delivered (seen in the lab, DESIGN.md), so a group whose
        last-delivered-id is the stream's last-generated-id has none, whatever `lag` says.
        Otherwise Redis's lag, or the stream's length when Redis cannot tell (an upper bound)."""
        if self.delivered_all(group):
            return 0
        if group.lag is not None:
            return max(group.lag, 1)
        return self.length


@dataclass(frozen=True)
class RedisSnapshot:
    taken_at: float
    target: str
    version: str
    mode: str  # standalone | sentinel | cluster (INFO server redis_mode)
    db: int
    used_memory: int
    maxmemory: int  # 0: no limit
    maxmemory_policy: str
    connected_clients: int
    db_keys: dict[str, int]  # INFO keyspace: db0 -> keys
    streams: tuple[Stream, ...]
    consumer_idle_limit_seconds: float  # a consumer idle this long no longer counts as active
    commands: int  # commands this poll sent
    scan_complete: bool  # the stream scan reached the end of the keyspace this poll

    def stream(self, key: str) -> Stream | None:
        return next((s for s in self.streams if s.key == key), None)
