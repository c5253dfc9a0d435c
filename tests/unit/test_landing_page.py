"""The landing page of the recorded states, byte for byte: its findings, root causes and
incidents (active and ended) as the server renders them. A refactoring of the presentation that
changes what people read fails here. Regenerate deliberately with
`.venv/bin/python -m tests.unit.test_landing_page`."""

from __future__ import annotations

from pathlib import Path

from exporter import __version__
from exporter.diagnosis import diagnose
from exporter.incidents.tracker import IncidentTracker
from exporter.pages import landing_page
from exporter.poller import failures, fresh_snapshots
from tests.unit.test_recorded_exposition import NOW, recorded_states

GOLDEN = Path(__file__).parent / "golden" / "landing.html"


def recorded_page() -> str:
    states = recorded_states()
    snapshots = fresh_snapshots(states, NOW, 45.0)
    tracker = IncidentTracker(coalesce_seconds=0.0)
    tracker.update(snapshots, NOW - 120.0)
    # PostgreSQL "db" not read in the second poll: its incidents end ("target not read")
    tracker.update([s for s in snapshots if s.target != "db"], NOW)
    page = landing_page(states, diagnose(snapshots, failures(states)), now=NOW,
                        telemetry_path="/metrics", incidents=tracker.incidents())
    return page.replace(f"prefect-pg-exporter {__version__}<", "prefect-pg-exporter X<")


def test_the_landing_page_of_the_recorded_states_is_unchanged() -> None:
    page = recorded_page()
    assert page == GOLDEN.read_text(encoding="utf-8")


if __name__ == "__main__":
    GOLDEN.write_text(recorded_page(), encoding="utf-8")
