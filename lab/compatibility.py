"""Renders docs/compatibility.md: `python -m lab.compatibility > docs/compatibility.md`.

The rows are the releases the lab runs (lab.prefect.RELEASES), the columns the capability table
the version lab test asserts against (exporter.prefect.compat.CAPABILITIES).
"""

from __future__ import annotations

from exporter.prefect.compat import render_markdown
from lab.prefect import RELEASES


def page() -> str:
    return render_markdown([r.version for r in RELEASES])


if __name__ == "__main__":
    print(page(), end="")
