"""A throwaway Redis 7 (Debian's redis-server) on 127.0.0.1, in a directory of its own, run
unprivileged, with a password for the default user and a read-only ACL user for the exporter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab.common import Daemon, RunAs, find_binary, free_port, make_dir, run_as

PASSWORD = "lab-redis-secret"  # the default user's: what Prefect uses
MONITOR_USER, MONITOR_PASSWORD = "prefect-exporter", "lab-redis-monitor-secret"
# What the exporter needs and nothing more (docs/deploy.md recommends the same ACL): a write
# it ever sent would fail with NOPERM, and the lab tests would see it.
MONITOR_ACL = ("on >{password} ~* resetchannels -@all +info +ping +scan +type +xinfo|stream "
               "+xinfo|groups +xinfo|consumers +select +hello +auth +client|setname")


class LabRedis(Daemon):
    what = "redis-server"

    def __init__(self, root: Path, *, maxmemory: str = "0") -> None:
        self.who: RunAs = run_as()
        self.root = make_dir(root, self.who)
        self.port = free_port()
        self.log = self.root / "redis.log"
        self.conf = self.root / "redis.conf"
        self.maxmemory = maxmemory
        self._write_config()

    def _write_config(self) -> None:
        acl = MONITOR_ACL.format(password=MONITOR_PASSWORD)
        self.conf.write_text(f"""bind 127.0.0.1
port {self.port}
protected-mode yes
daemonize no
dir {self.root}
logfile {self.log}
save ""
appendonly no
databases 16
maxmemory {self.maxmemory}
requirepass {PASSWORD}
user {MONITOR_USER} {acl}
""")
        self.conf.chmod(0o600)
        self.who.own(self.conf)

    def _argv(self) -> list[str]:
        return [find_binary("redis-server", ["/usr/bin/redis-server"]), str(self.conf)]

    def url(self, db: int = 0, *, monitor: bool = True) -> str:
        """The exporter's URL (the read-only ACL user) or Prefect's (the default user)."""
        if monitor:
            return f"redis://{MONITOR_USER}:{MONITOR_PASSWORD}@127.0.0.1:{self.port}/{db}"
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> Any:
        """A synchronous admin client (the default user) for the tests and the demo."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=PASSWORD,
                           socket_timeout=10)


class LabSentinel(Daemon):
    """A Redis Sentinel (redis-server --sentinel) watching a lab Redis as service `lab`."""

    SERVICE = "lab"
    what = "redis sentinel"

    def __init__(self, root: Path, master: LabRedis) -> None:
        self.who: RunAs = run_as()
        self.root = make_dir(root, self.who)
        self.port = free_port()
        self.log = self.root / "sentinel.log"
        self.conf = self.root / "sentinel.conf"  # Sentinel rewrites it: its user owns it
        self.conf.write_text(f"""bind 127.0.0.1
port {self.port}
daemonize no
dir {self.root}
logfile {self.log}
sentinel monitor {self.SERVICE} 127.0.0.1 {master.port} 1
sentinel auth-pass {self.SERVICE} {PASSWORD}
""")
        self.conf.chmod(0o600)
        self.who.own(self.conf)

    def _argv(self) -> list[str]:
        return [find_binary("redis-server", ["/usr/bin/redis-server"]), str(self.conf),
                "--sentinel"]

    def url(self, db: int = 0) -> str:
        """The exporter's URL through the Sentinel (the master's read-only ACL user)."""
        return (f"redis+sentinel://{MONITOR_USER}:{MONITOR_PASSWORD}@127.0.0.1:{self.port}/"
                f"{self.SERVICE}/{db}")


def prefect_like_streams(redis: LabRedis) -> None:
    """What Prefect in HA leaves in Redis, made by hand: on db0 `events` (15 entries) with the
    event persister 5 entries in (delivered, not acknowledged) and reactive-triggers created at
    the end; on db1 Docket's `prefect:stream` with a docket-workers consumer that read all."""
    messaging, docket = redis.client(0), redis.client(1)
    for i in range(15):
        messaging.xadd("events", {"event": f"e{i}"})
    messaging.xgroup_create("events", "event-persister", id="0")
    messaging.xreadgroup("event-persister", "services-host-4242", {"events": ">"}, count=5)
    messaging.xgroup_create("events", "reactive-triggers", id="$")
    docket.xadd("prefect:stream", {"task": "schedule"})
    docket.xgroup_create("prefect:stream", "docket-workers", id="0")
    docket.xreadgroup("docket-workers", "worker-host-4242", {"prefect:stream": ">"})


def start_redis(root: Path, **kwargs: Any) -> LabRedis:
    server = LabRedis(root, **kwargs)
    server.start()
    return server
