"""Records GET /api/admin/settings of real Prefect servers, one per settings shape, for the unit
tests of exporter/prefect/settings.py: `python -m lab.record_settings [DIR]`.

Each server runs with the lab's settings (late runs after 5 s, asyncpg statement caches 0) and
its release's default pool sizes, straight to a throwaway PostgreSQL. The answer is trimmed to the
database, services, CSRF and docket settings (the rest is noise for these tests), keeping its
shape: flat upper-case (2.x), flat lower-case (3.0.0-3.0.10), nested (3.0.11-3.1.12), nested with
a `sqlalchemy` group (3.1.13+).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import httpx

from lab.prefect import RELEASES, PrefectRelease, install_prefect_venvs
from lab.stack import running_lab

OUT = Path(__file__).resolve().parent.parent / "tests" / "unit" / "data" / "prefect_settings"
# Shapes no lab release has: recorded only. The pins are those of their time.
RECORDING_ONLY = (
    PrefectRelease("3.0.10", ("fastapi==0.115.*", "sqlalchemy<2.1", "pydantic<2.10",
                              "pydantic-settings<2.7", "importlib_metadata")),
    PrefectRelease("3.1.12", ("fastapi==0.115.*", "sqlalchemy<2.1", "pydantic<2.11",
                              "pydantic-settings<2.8", "importlib_metadata")),
)
KEEP = re.compile(r"(?i)(sqlalchemy|database|late_runs|scheduler|csrf|docket|^PREFECT_HOME$)")


def trim(data: Any, path: str = "") -> Any:
    """Only the keys whose dotted path matches KEEP, in the same nesting."""
    if not isinstance(data, dict):
        return data
    kept = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else key
        if KEEP.search(sub):
            kept[key] = value
        elif isinstance(value, dict) and (inner := trim(value, sub)):
            kept[key] = inner
    return kept


def record(out: Path) -> None:
    releases = (*RELEASES, *RECORDING_ONLY)
    install_prefect_venvs(releases)
    with running_lab() as lab:
        pg = lab.postgres()
        servers = []
        for r in releases:
            database = "prefect_" + r.version.replace(".", "_")
            pg.create_database(database)
            server = lab.prefect_server(pg, r.version, release=r, database=database,
                                        late_after_seconds=5)
            server.launch()
            servers.append(server)
        out.mkdir(parents=True, exist_ok=True)
        for server in servers:
            server.wait_ready()
            data = httpx.get(f"{server.api_url}/admin/settings", timeout=10).json()
            path = out / f"{server.release.version}.json"
            path.write_text(json.dumps(trim(data), indent=1, sort_keys=True) + "\n")
            print(f"{path}: {server.release.version}")


if __name__ == "__main__":
    record(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
