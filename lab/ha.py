"""Prefect in HA on loopback, as Prefect's scaling guide runs it: two API replicas started
with --no-services, one `prefect server services start`, and Redis (prefect-redis) for the
messaging (db 0: streams events and actions) and for Docket (db 1: prefect:stream, group
docket-workers). Seen with 3.8.8 and prefect-redis 0.3.0.

The replicas are started one after the other: started together they race on block
registration at startup (seen on 3.8.8)."""

from __future__ import annotations

import fcntl
import subprocess
from pathlib import Path

from lab.common import LabError, dies_with_parent, kill_process, stop_process, tail
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.prefect import DEFAULT_RELEASE, LabPrefect, PrefectRelease, _lock_file, prefect_venv
from lab.redis import PASSWORD, LabRedis

PREFECT_REDIS = "prefect-redis==0.3.0"
MESSAGING_DB, DOCKET_DB = 0, 1


def install_prefect_redis(release: PrefectRelease = DEFAULT_RELEASE) -> Path:
    """prefect-redis in the release's virtualenv, once (under the release's install lock)."""
    venv = prefect_venv(release)
    marker = venv / ".prefect-redis-installed"
    if marker.exists():
        return venv
    with _lock_file(release) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                                   "--disable-pip-version-check", PREFECT_REDIS],
                                  capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise LabError(f"installing {PREFECT_REDIS} failed: {done.stderr[-2000:]}")
            marker.touch()
    return venv


def ha_env(redis: LabRedis) -> dict[str, str]:
    """What every replica and the services process share: Redis for messaging, causal
    ordering, concurrency leases and Docket."""
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": "127.0.0.1",
        "PREFECT_REDIS_MESSAGING_PORT": str(redis.port),
        "PREFECT_REDIS_MESSAGING_DB": str(MESSAGING_DB),
        "PREFECT_REDIS_MESSAGING_PASSWORD": PASSWORD,
        "PREFECT_SERVER_DOCKET_URL": redis.url(DOCKET_DB, monitor=False),
        "PREFECT_SERVER_METRICS_ENABLED": "true",  # each replica's /api/metrics
    }


class LabServices:
    """`prefect server services start`: the background services, in a process of their own."""

    def __init__(self, root: Path, template: LabPrefect) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.template = template  # a replica: the same environment
        self.log = root / "services.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.running:
            return
        venv = prefect_venv(self.template.release)
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(venv / "bin" / "prefect"), "server", "services", "start"],
                env=self.template.env(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=dies_with_parent(), cwd=self.root)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, the whole process group: a pod OOM-killed, no goodbye to Redis."""
        kill_process(self._proc)

    def stop(self) -> None:
        stop_process(self._proc, timeout=20)

    def tail(self) -> str:
        return tail(self.log, 30)


class LabPrefectHA:
    def __init__(self, root: Path, route: LabPgBouncer | LabPostgres, redis: LabRedis, *,
                 replicas: int = 2, late_after_seconds: int = 15) -> None:
        self.redis = redis
        self.replicas = [LabPrefect(root / f"api-{i}", route, services=False,
                                    late_after_seconds=late_after_seconds,
                                    extra_env=ha_env(redis))
                         for i in range(replicas)]
        self.services = LabServices(root / "services", self.replicas[0])

    def start(self, timeout: float = 180) -> None:
        install_prefect_redis(self.replicas[0].release)
        for replica in self.replicas:  # one after the other: see the module's docstring
            replica.start(timeout)
        self.services.start()

    def stop(self) -> None:
        self.services.stop()
        for replica in self.replicas:
            replica.stop()

    def named_api_urls(self) -> str:
        return ";".join(f"api-{i}={r.api_url}" for i, r in enumerate(self.replicas))

    def exporter_redis_urls(self) -> str:
        return (f"messaging={self.redis.url(MESSAGING_DB)};"
                f"docket={self.redis.url(DOCKET_DB)}")
