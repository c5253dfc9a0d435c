"""What a Prefect API poll sees: plain typed data, no driver."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

UNFINISHED_STATE_TYPES = ("PENDING", "RUNNING", "CANCELLING", "PAUSED")
TERMINAL_STATE_TYPES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

# docket URL schemes of a shared store: several background-service replicas are then supported
SHARED_DOCKET_SCHEMES = ("redis", "rediss")


@dataclass(frozen=True)
class PoolCounts:
    backlog: int  # SCHEDULED with expected start in the past (Late ones included)
    late: int  # state name Late
    upcoming: int  # SCHEDULED with expected start within the horizon
    in_flight: int  # PENDING or RUNNING
    oldest_backlog_start: float | None  # unix time of the most overdue run's expected start


@dataclass(frozen=True)
class WorkPool:
    name: str
    type: str
    status: str  # READY | NOT_READY | PAUSED
    paused: bool
    concurrency_limit: int | None
    workers: int
    online_workers: int
    last_heartbeat: float | None  # unix time of the freshest worker heartbeat


@dataclass(frozen=True)
class WorkQueue:
    work_pool: str
    name: str
    paused: bool
    concurrency_limit: int | None
    id: str = ""
    status: str = ""  # READY | NOT_READY (no worker polled it lately) | PAUSED
    last_polled: float | None = None  # unix time


@dataclass(frozen=True)
class Scheduling:
    """Is scheduling keeping up, and is anyone there to take the runs? (scheduling.py)"""

    runs_by_state_type: dict[str, int]
    totals: PoolCounts  # across all work pools and runs without one
    scheduled_future: int  # every SCHEDULED run with expected start after now
    pools: tuple[WorkPool, ...]  # the top N, alphabetically
    pool_counts: dict[str, PoolCounts]  # for the pools in `pools`
    queues: tuple[WorkQueue, ...]


@dataclass(frozen=True)
class Services:
    """What Prefect's background services leave behind (services.py): nothing in Prefect says
    whether they run."""

    # SCHEDULED runs still named "Scheduled" overdue by more than late_runs.after_seconds plus
    # two loops: the late_runs service should have marked them Late
    unmarked_overdue: int
    unmarked_overdue_by_pool: dict[str, int]
    unmarked_after_seconds: float  # the grace those counts used
    recently_scheduled_deployments: int  # not paused, an auto-scheduled run within a day
    deployments_without_future_runs: int  # of those, with no future auto-scheduled run


@dataclass(frozen=True)
class Events:
    """Is the event pipeline moving (events.py)? Read every poll, a narrow window at a time."""

    newest: float | None  # unix time of the newest event, when one is within looked_back
    looked_back: float  # seconds: no newest within it means the newest is older than this
    last_run_start: float | None  # unix time the latest-started flow run started


@dataclass(frozen=True)
class Retention:
    """Does cleanup keep up (events.py)? Read every few minutes: it is slow to change."""

    checked_at: float
    events_retention: float  # seconds (server.events.retention_period)
    oldest_event: float | None  # unix time, when known
    events_overdue: bool  # an event older than the retention period is still there
    runs_retention: float | None  # seconds, where db_vacuum deletes old flow runs
    oldest_overdue_run_end: float | None  # end time of the oldest such run still there


class StuckGroup(NamedTuple):
    stuck: int  # runs in the state longer than the stuck threshold
    oldest_seconds: float  # the longest any run of the group has been in its state


@dataclass(frozen=True)
class RunHealth:
    """Runs that never finish (runs.py)."""

    # (work pool, state type) -> group; work pool '' = no listed pool
    stuck: dict[tuple[str, str], StuckGroup]
    sampled: int  # runs read in PENDING, RUNNING, CANCELLING, PAUSED
    sample_limit: int  # when sampled reaches it, the counts cover the oldest ones only
    stuck_after_seconds: float
    heartbeats: bool | None  # a heartbeat event seen within a day; None: no events API
    without_heartbeat: dict[str, int] | None  # by work pool; None: heartbeats not seen
    heartbeat_timeout_seconds: float


@dataclass(frozen=True)
class Outcomes:
    """Flow runs that ended within the window, by terminal state type (runs.py)."""

    window_seconds: float
    totals: dict[str, int]
    by_pool: dict[str, dict[str, int]]  # listed work pools only


@dataclass(frozen=True)
class ConcurrencyLimit:
    name: str  # a global limit's name; tag limits as Prefect 3.4.19+ names them, tag:<tag>
    slots: int
    active_slots: int
    active: bool
    # the runs that could be holding its slots and are running: for a tag limit, its holder
    # task runs still RUNNING; for a global limit the API names no holders: None
    holders_running: int | None
    saturated_since: float | None  # unix time the exporter first saw it full, None: not full


@dataclass(frozen=True)
class Limits:
    """Concurrency limits and what holds them (limits.py)."""

    limits: tuple[ConcurrencyLimit, ...]
    running_task_runs: int


@dataclass(frozen=True)
class Readiness:
    """Deployments by the status their work queue gives them (scheduling.py)."""

    deployments: int
    in_a_queue: int  # the rest run from flow.serve(): no queue, their status is not counted
    in_unpolled_queues: int  # in queues with status NOT_READY: no worker polls them
    # deployments in each NOT_READY queue, by queue id (the first UNPOLLED_COUNTED of them):
    # an unpolled queue that holds none (a pool's unused `default`) is no one's problem
    by_unpolled_queue: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Probe:
    """GET /api/health and GET /api/ready, timed side by side at the start of a poll, on a
    connection of their own and outside the poll's request cap (source.py). /health answers
    without the database; /ready checks a connection out of the API server's own SQLAlchemy
    pool: ready slow while health is fast is that pool saturated (incident 13)."""

    health_seconds: float
    health_ok: bool
    ready_seconds: float
    ready_ok: bool
    # cumulative, like counters: answers that were not 200 or did not come within the timeout
    health_failures: int = 0
    ready_failures: int = 0


@dataclass(frozen=True)
class PrefectProbeSnapshot:
    """What a Prefect poll reads first: the probe. Published alone when the rest of the poll
    fails or times out (the poller's partial result), so the API's latency is never hidden by a
    failing poll; a full poll is a PrefectSnapshot, which carries it too."""

    taken_at: float
    target: str
    probe: Probe | None = None  # None: not probed (hand-made snapshots in tests)


@dataclass(frozen=True, kw_only=True)
class PrefectSnapshot(PrefectProbeSnapshot):
    """One poll of a Prefect server: the probe and everything else."""

    version: str
    settings: dict[str, float]  # numeric settings by path; durations in seconds
    text_settings: dict[str, str]
    scheduling: Scheduling
    # the scheme of server.docket.url: 'memory' (the default: one services process), 'redis'
    # (several service replicas share the work), '' (before 3.6 or not readable)
    docket_scheme: str = ""
    requests: dict[str, RequestStats] = field(default_factory=dict)
    services: Services | None = None
    events: Events | None = None  # None: the server offers no events API (2.x by default)
    retention: Retention | None = None
    runs: RunHealth | None = None
    outcomes: Outcomes | None = None  # None: the server cannot filter on end_time (< 3.0.4)
    limits: Limits | None = None
    readiness: Readiness | None = None
    # what server.services.db_vacuum.enabled deletes ("events", "flow_runs", "orphans"); None
    # where the server has no db_vacuum (before 3.6.19)
    vacuum_kinds: frozenset[str] | None = None

    @property
    def services_may_be_replicated(self) -> bool:
        """Whether several background-service copies are supported: a shared (Redis) docket
        runs each periodic job once across them (Prefect 3.6+)."""
        return self.docket_scheme in SHARED_DOCKET_SCHEMES


@dataclass
class RequestStats:
    """The exporter's own API calls, by endpoint template: cumulative, like counters."""

    count: int = 0
    errors: int = 0
    seconds: float = 0.0
