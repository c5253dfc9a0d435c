"""The exporter started in this (fresh) interpreter on the targets of SETTINGS, stopped once each
target was polled (POLLS times, 1 unless given): what it then holds. For questions only a new
process answers: which drivers and modules a configuration imports
(tests/unit/test_footprint.py) and the memory each kind adds (benchmarks/compare_kinds.py,
and with data: benchmarks/redis_bench.py, benchmarks/bigdb.py). The targets may be
unreachable: a failed poll counts.

    python -m lab.once '{"postgres_dsn": "postgresql://x@127.0.0.1:1/db"}' [POLLS]

prints one JSON line: {"rss_mb": RSS after the polls, "modules": every module imported}. A stop
that hangs (as one did when a cancel met a failing poll) hangs this, and the caller's timeout
says so.
"""

from __future__ import annotations

import asyncio
import json
import sys


async def polled_once(settings: dict[str, str], polls: int = 1) -> dict[str, object]:
    from exporter.app import Exporter
    from exporter.config import load

    exporter = Exporter(load({**settings, "listen_address": "127.0.0.1:0",
                              "poll_interval_seconds": "1"}, environ={}))
    await exporter.start()
    while not all(s.polls >= polls for s in exporter.poller.states):
        await asyncio.sleep(0.05)
    with open("/proc/self/status") as status:
        rss = next(line for line in status if line.startswith("VmRSS"))
    await exporter.stop()
    return {"rss_mb": int(rss.split()[1]) / 1024, "modules": sorted(sys.modules)}


if __name__ == "__main__":
    polls = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    print(json.dumps(asyncio.run(polled_once(json.loads(sys.argv[1]), polls))))
