"""A real Prefect process worker for the lab, and the lab's flows deployed for it.

`prefect worker start --type process` from the lab's Prefect virtualenv polls one work pool (or
only some of its queues) and runs each flow run as a child `python -m prefect.engine`. Prefect
starts that child in a session of its own, so signalling the worker's process group leaves the
run going (and heartbeating): `LabWorker.kill()` takes the worker and every process under it, as
when a node is lost, and leaves a RUNNING run with nobody behind it.

The flows are the files of lab/flows, deployed by path through the REST API: an entrypoint and a
set_working_directory pull step (what `prefect deploy` writes for code on local disk), no
storage block, no image. The same calls work on every 3.x release the lab runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from lab.common import LabError, dies_with_parent, tail
from lab.prefect import DEFAULT_RELEASE, PrefectRelease, prefect_venv
from lab.prefect_api import PrefectAPI
from lab.waiting import TimedOut, until

FLOWS = Path(__file__).resolve().parent / "flows"
FLOWS_FILE = "scenarios.py"  # the flows of lab/flows/scenarios.py, by function name
MIN_HEARTBEAT_SECONDS = 30  # Prefect's validator: PREFECT_FLOWS_HEARTBEAT_FREQUENCY >= 30


async def deploy(api: PrefectAPI, pool: str, flow: str, *, name: str | None = None,
                 queue: str = "default") -> str:
    """A deployment of the lab flow `flow` (a function of lab/flows/scenarios.py) in the pool's
    queue; its id."""
    return await api.local_deployment(pool, name or flow, f"{FLOWS_FILE}:{flow}", str(FLOWS),
                                      queue=queue)


class LabWorker:
    def __init__(self, root: Path, api_url: str, pool: str, *, name: str,
                 queues: tuple[str, ...] = (), release: PrefectRelease = DEFAULT_RELEASE,
                 heartbeat_seconds: int = MIN_HEARTBEAT_SECONDS, query_seconds: float = 2,
                 extra_env: dict[str, str] | None = None) -> None:
        if heartbeat_seconds < MIN_HEARTBEAT_SECONDS:
            raise LabError(f"Prefect refuses flow heartbeats more often than every "
                           f"{MIN_HEARTBEAT_SECONDS}s")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.api_url = api_url
        self.pool = pool
        self.name = name
        self.queues = queues  # none: every queue of the pool
        self.release = release
        self.heartbeat_seconds = heartbeat_seconds
        self.query_seconds = query_seconds
        self.extra_env = extra_env or {}
        self.log = root / "worker.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        """The worker's environment, which its flow-run processes inherit."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "PREFECT_HOME": str(self.root / "home"),
            "PREFECT_API_URL": self.api_url,
            # poll often (default 10 s): a run starts within seconds of being created
            "PREFECT_WORKER_QUERY_SECONDS": str(self.query_seconds),
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(self.heartbeat_seconds),
            **self.extra_env,
        }

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        venv = prefect_venv(self.release)
        argv = [str(venv / "bin" / "prefect"), "worker", "start", "--pool", self.pool,
                "--type", "process", "--name", self.name]
        for queue in self.queues:
            argv += ["--work-queue", queue]
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(argv, env=self.env(), stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True,
                                          preexec_fn=dies_with_parent(), cwd=self.root)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def flow_run_pids(self) -> list[int]:
        """The worker's flow-run processes now (`python -m prefect.engine`, each a child)."""
        if self._proc is None or self._proc.poll() is not None:
            return []
        return [p for p in descendants(self._proc.pid) if "prefect.engine" in _cmdline(p)]

    def kill(self, timeout: float = 10) -> list[int]:
        """SIGKILL the worker and every process under it (its flow runs): nothing reports
        anything to Prefect, the runs stay as they were. The processes killed, worker first."""
        if self._proc is None or self._proc.poll() is not None:
            return []
        pids = [self._proc.pid, *descendants(self._proc.pid)]
        # stopped first, so that no worker sees its child die and reports the run Crashed
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        self._proc.wait(timeout)
        try:
            until(lambda: not any(running(p) for p in pids), timeout, "the processes killed",
                  interval=0.05)
        except TimedOut:
            raise LabError(f"processes {[p for p in pids if running(p)]} outlived SIGKILL") \
                from None
        return pids

    def stop(self) -> None:
        """The end of a lab: no graceful shutdown is needed, and flow runs must not outlive it."""
        self.kill()

    def tail(self, lines: int = 30) -> str:
        return tail(self.log, lines)


def _parent(stat: str) -> int:
    """The ppid in /proc/<pid>/stat: the field after the state, which follows the command name
    in parentheses (a name may itself hold spaces and parentheses)."""
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """Every process under pid (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            children.setdefault(_parent(stat.read_text()), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def running(pid: int) -> bool:
    """Whether pid is a live process: gone, or a zombie waiting to be reaped, is not (a killed
    orphan's reaper may be slow, or absent in a container without an init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
