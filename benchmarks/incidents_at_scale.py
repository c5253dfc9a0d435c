"""The incidents at thousands of backends: still seen, and what a poll then costs the database.

    .venv/bin/python -m benchmarks.incidents_at_scale [--backends 5000] [--polls 20]

Starts a lab PostgreSQL with room for the backends, opens them as benchmarks/bench.py does
(each its own application_name; 5% idle in transaction, 5% in pg_sleep), then, with a lock
chain (a holder idle in transaction, a writer queued behind it) and a stalled COPY in place,
polls PostgresSource with thresholds low enough that the stalled COPY and every session idle in
transaction are past them: the poll reads the incidents' sessions and their statements.

Prints what the snapshot shows of each incident (it exits 1 if one is missing) and the
database CPU of the exporter's backend per poll (utime + stime from /proc, 10 ms ticks), as a
ratio to one bare `SELECT count(*) FROM pg_stat_activity`, the baseline measured in the same
run: since #26 the incidents' sessions are reread by pid, so a poll during incidents stays near
one read of every backend, as a quiet one does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import asyncpg

from benchmarks.bench import open_backends
from exporter.dsn import parse_target
from exporter.postgres.snapshot import PostgresSnapshot
from exporter.postgres.source import PostgresSource
from lab import incidents
from lab.postgres import LabPostgres
from lab.stack import running_lab

TICKS = os.sysconf("SC_CLK_TCK")
# past at once: the COPY stalls and the sessions idle in transaction the backends opened
THRESHOLDS = {"client_read_stall_critical_seconds": 0.5,
              "idle_in_transaction_warning_seconds": 0.5}


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def cpu_per_call(pid: int, calls: int, call: object) -> float:
    assert callable(call)
    before = backend_cpu(pid)
    for _ in range(calls):
        await call()
    return (backend_cpu(pid) - before) / calls * 1000


def seen(snap: PostgresSnapshot, chain: incidents.LockChain,
         copy: incidents.CopyStall) -> dict[str, bool]:
    holder = snap.involved.session(chain.holder_pid)
    return {
        "the writer blocked by the holder": any(
            b.pid in chain.writer_pids and chain.holder_pid in b.blocked_by for b in snap.blocked),
        "the holder, idle in transaction, with its statement": bool(
            holder and holder.state == "idle in transaction"
            and snap.involved.statements.get(chain.holder_pid)),
        "the table the writer waits on": any(
            str(r).endswith("incident_rows") for r in snap.involved.waits_on.values()),
        "the stalled COPY (active, ClientRead)": any(
            g.client_read_in_transaction and g.application_name == copy.application_name
            for g in snap.activity),
        "the sessions idle in transaction counted": sum(
            g.sessions for g in snap.activity if g.state == "idle in transaction") >= 2,
    }


async def measure(pg: LabPostgres, backends: int, polls: int) -> bool:
    conns = await open_backends(pg, backends)
    source = PostgresSource(parse_target(pg.monitor_dsn(), "bench"), statement_timeout_ms=60_000,
                            connect_timeout=10, top_transactions=5, hot_tables=(),
                            thresholds=THRESHOLDS, label_top_n=20)
    bare = await asyncpg.connect(pg.monitor_dsn())
    try:
        async with incidents.lock_chain(pg, table="scratch.incident_rows") as chain, \
                incidents.copy_stall(pg, table="scratch.incident_rows") as copy:
            await asyncio.sleep(1)  # past the thresholds
            snap = await source.poll()
            assert source._conn is not None  # the benchmark reads its backend
            poll = await cpu_per_call(source._conn.get_server_pid(), polls, source.poll)
            one_read = await cpu_per_call(
                bare.get_server_pid(), polls,
                lambda: bare.fetchval("SELECT count(*) FROM pg_stat_activity"))
            found = seen(snap, chain, copy)
        print(f"\nAt {backends} backends, a lock chain and a stalled COPY in place: "
              f"{len(snap.involved.sessions)} sessions read again by pid (the chain's, then "
              f"the oldest transactions past the thresholds, at most 50), "
              f"{len(snap.involved.statements)} statements:")
        for what, ok in found.items():
            print(f"  {'seen   ' if ok else 'MISSING'}  {what}")
        print(f"  database CPU per poll                 {poll:7.2f} ms")
        print(f"  one SELECT count(*) FROM pg_stat_activity {one_read:7.2f} ms")
        print(f"  ratio                                 {poll / one_read:7.2f}x")
        return all(found.values())
    finally:
        await bare.close()
        await source.close()
        for conn in conns:
            conn.terminate()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", type=int, default=5000)
    parser.add_argument("--polls", type=int, default=20)
    args = parser.parse_args()
    with running_lab("ppe-scale-") as lab:
        pg = lab.postgres("pg", stop_mode="immediate", max_connections=args.backends + 100,
                          extra_settings={"shared_buffers": "256MB"})
        ok = await measure(pg, args.backends, args.polls)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
