"""What each source kind adds to the exporter's resident memory: an exporter started on
unreachable targets of the given kinds, in a fresh interpreter (lab/once.py), RSS after each
target was polled once (its modules and driver imported; no runtime data). Median of 3 per setup.

    .venv/bin/python -m benchmarks.compare_kinds
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

PG = {"postgres_dsn": "postgresql://x@127.0.0.1:1/db"}
PGB = {"pgbouncer_dsn": "postgresql://x@127.0.0.1:1/pgbouncer"}
PREFECT = {"prefect_api_url": "http://127.0.0.1:1/api"}
REDIS = {"redis_url": "redis://:pw@127.0.0.1:1/0"}
SETUPS = {"PostgreSQL only": PG, "+ PgBouncer": {**PG, **PGB}, "+ Prefect API": {**PG, **PREFECT},
          "+ Redis": {**PG, **REDIS}, "all four": {**PG, **PGB, **PREFECT, **REDIS}}


def rss_mb(settings: dict[str, str], polls: int = 1) -> float:
    """The RSS of a fresh exporter on these settings once each target was polled polls times."""
    out = subprocess.run([sys.executable, "-m", "lab.once", json.dumps(settings), str(polls)],
                         capture_output=True, text=True, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["rss_mb"])


def main() -> None:
    base = None
    for name, settings in SETUPS.items():
        runs = [rss_mb(settings) for _ in range(3)]
        median = statistics.median(runs)
        base = median if base is None else base
        print(f"{name:16s} RSS {median:5.1f} MB (runs: {', '.join(f'{r:.1f}' for r in runs)}); "
              f"{median - base:+.1f} MB vs PostgreSQL only")


if __name__ == "__main__":
    main()
