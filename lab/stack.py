"""Starting and stopping the lab, written once: `with running_lab() as lab:` gives a fresh
temporary root, and every server started through `lab` is stopped when the `with` ends, the
last started first (Prefect before the PgBouncer it goes through, PgBouncer before its
PostgreSQL), then the root removed. A server is registered before it starts, so one that fails
half-way through starting is stopped too. The demo (lab/__main__.py), the lab tests' fixtures
(tests/lab/conftest.py) and the benchmarks all start the lab this way.

    with running_lab("prefect-pg-demo-") as lab:
        pg = lab.postgres()
        bouncer = lab.pgbouncer(pg)
        prefect = lab.prefect(bouncer)

`lab.scope()` is a nested `with` on the same root: what is started through it stops when that
inner `with` ends (a fixture per test beside the session's servers)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from lab.common import lab_root
from lab.ha import LabPrefectHA
from lab.pgbouncer import LabPgBouncer
from lab.postgres import LabPostgres
from lab.prefect import LabPrefect
from lab.redis import LabRedis


class Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=Stoppable)


class Lab:
    """The servers started under one root; each method starts one under root / name."""

    def __init__(self, root: Path, stack: contextlib.ExitStack) -> None:
        self.root = root
        self._stack = stack

    def stopped_at_exit(self, server: S) -> S:
        """Any server with a stop(), stopped when the `with` ends (in reverse order)."""
        self._stack.callback(server.stop)
        return server

    def postgres(self, name: str = "postgres", *, stop_mode: str = "fast",
                 **kwargs: Any) -> LabPostgres:
        """stop_mode "immediate" for thousands of backends: "fast" ends each one first."""
        pg = LabPostgres(self.root / name, **kwargs)
        self._stack.callback(pg.stop, stop_mode)
        pg.init()
        pg.start()
        pg.setup()
        return pg

    def pgbouncer(self, postgres: LabPostgres, name: str = "pgbouncer",
                  **kwargs: Any) -> LabPgBouncer:
        bouncer = self.stopped_at_exit(LabPgBouncer(self.root / name, postgres, **kwargs))
        bouncer.start()
        return bouncer

    def redis(self, name: str = "redis", **kwargs: Any) -> LabRedis:
        server = self.stopped_at_exit(LabRedis(self.root / name, **kwargs))
        server.start()
        return server

    def prefect(self, route: LabPgBouncer | LabPostgres, name: str = "prefect",
                **kwargs: Any) -> LabPrefect:
        """A Prefect server, started and ready (prefect_server() for one launched later)."""
        server = self.prefect_server(route, name, **kwargs)
        server.start()
        return server

    def prefect_server(self, route: LabPgBouncer | LabPostgres, name: str,
                       **kwargs: Any) -> LabPrefect:
        """A Prefect server not started yet: the caller launches several at once, then waits
        for each (they migrate their databases concurrently)."""
        return self.stopped_at_exit(LabPrefect(self.root / name, route, **kwargs))

    def prefect_ha(self, route: LabPgBouncer | LabPostgres, redis: LabRedis, name: str = "ha",
                   **kwargs: Any) -> LabPrefectHA:
        ha = self.stopped_at_exit(LabPrefectHA(self.root / name, route, redis, **kwargs))
        ha.start()
        return ha

    @contextlib.contextmanager
    def scope(self) -> Iterator[Lab]:
        """The same root; what is started through the scope stops when its `with` ends."""
        with contextlib.ExitStack() as stack:
            yield Lab(self.root, stack)


@contextlib.contextmanager
def running_lab(prefix: str = "prefect-pg-lab-") -> Iterator[Lab]:
    """A fresh lab root; its servers stopped and the root removed on the way out."""
    root = lab_root(prefix)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        yield Lab(root, stack)
