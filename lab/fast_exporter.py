"""`python -m exporter`, as shipped, except that it may poll faster than the 1 s floor load()
holds people to (that floor spares the servers watched, not the exporter). For soaks that count
work per poll: more polls a second, the same code per poll, a shorter run.

    PREFECT_PG_EXPORTER_POLL_INTERVAL_SECONDS=0.5 python -m lab.fast_exporter
"""

from __future__ import annotations

import sys

from exporter import config
from exporter.cli import main

FLOOR_SECONDS = 0.1

if __name__ == "__main__":
    config.MIN_POLL_SECONDS = FLOOR_SECONDS  # read by the setting's parser at load()
    sys.exit(main(sys.argv[1:]))
