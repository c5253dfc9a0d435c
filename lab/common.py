"""Helpers the lab's servers share: ports, the unprivileged user, processes, waiting."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.waiting import TimedOut, until

LAB_USER_FALLBACK = "prefect-lab"


class LabError(RuntimeError):
    pass


def dies_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn: the server gets `sig` when the process that started it dies, so a test run
    killed by a timeout leaves no PostgreSQL or Prefect behind (Linux prctl PR_SET_PDEATHSIG)."""

    def preexec() -> None:
        # not Linux / no libc: the servers then outlive a killed parent, as before
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig, 0, 0, 0)

    return preexec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RunAs:
    """Who the lab's servers run as: the current user, or an unprivileged one when root."""

    uid: int | None
    gid: int | None

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def own(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid or -1)


def run_as() -> RunAs:
    if os.geteuid() != 0:
        return RunAs(None, None)
    for name in ("postgres", LAB_USER_FALLBACK):
        try:
            entry = pwd.getpwnam(name)
            return RunAs(entry.pw_uid, entry.pw_gid)
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    LAB_USER_FALLBACK], check=True)
    entry = pwd.getpwnam(LAB_USER_FALLBACK)
    return RunAs(entry.pw_uid, entry.pw_gid)


def make_dir(path: Path, who: RunAs) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    who.own(path)
    return path


def find_binary(name: str, extra_globs: Sequence[str] = ()) -> str:
    found = shutil.which(name)
    if found:
        return found
    for pattern in extra_globs:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[-1]
    raise LabError(f"{name} not found: install it (see scripts/bootstrap)")


def wait_for_port(port: int, timeout: float, what: str, proc: subprocess.Popen[Any] | None = None,
                  log: Path | None = None) -> None:
    def listening() -> bool:
        if proc is not None and proc.poll() is not None:
            raise LabError(f"{what} exited with {proc.returncode}: {tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    try:
        until(listening, timeout, f"{what} on port {port}", interval=0.05)
    except TimedOut:
        raise LabError(f"{what} did not listen on port {port} within {timeout:g}s: "
                       f"{tail(log)}") from None


def wait_for_http(url: str, timeout: float, what: str, proc: subprocess.Popen[Any],
                  log: Path) -> None:
    """Until url answers 200; fail early, with the log's tail, if the process exits."""
    import httpx

    def answers() -> bool:
        if proc.poll() is not None:
            raise LabError(f"{what} exited with {proc.returncode}: {tail(log, 30)}")
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        until(answers, timeout, f"{what} at {url}", interval=0.2)
    except TimedOut:
        raise LabError(f"{what} not ready within {timeout:g}s: {tail(log, 30)}") from None


def start_daemon(argv: list[str], who: RunAs, port: int, what: str,
                 log: Path | None) -> subprocess.Popen[bytes]:
    """A server of the lab (PgBouncer, Redis, Sentinel): no terminal, a session of its own (a
    Ctrl-C to the test run does not reach it), ended with its parent; ready once it listens on
    `port`, or a LabError with its log's tail."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=dies_with_parent(), **who.popen_kwargs())
    wait_for_port(port, 20, what, proc, log)
    return proc


def kill_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL, if it runs: the crash case, no goodbye to its clients."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def lab_root(prefix: str = "prefect-pg-lab-") -> Path:
    """A fresh temporary directory the lab's unprivileged user can traverse."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o711)
    return root


class Daemon:
    """A lab server that is one process reading one config file (PgBouncer, Redis, Sentinel):
    started (again after a stop or a kill), stopped, or killed as in a crash. A subclass sets
    who, port, log and _argv(); `what` names it in errors."""

    what = "server"
    who: RunAs
    port: int
    log: Path
    _proc: subprocess.Popen[bytes] | None = None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._proc = start_daemon(self._argv(), self.who, self.port, self.what, self.log)

    def stop(self) -> None:
        stop_process(self._proc)

    def kill(self) -> None:
        """SIGKILL: the crash case, no goodbye to its clients."""
        kill_process(self._proc)
