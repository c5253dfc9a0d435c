"""The source kinds the exporter knows, in the order they are exported and diagnosed."""

from __future__ import annotations

from typing import Any

from exporter import pgbouncer, postgres, prefect, redis
from exporter.kind import SourceKind

KINDS: tuple[SourceKind[Any], ...] = (postgres.KIND, pgbouncer.KIND, prefect.KIND,
                                     redis.KIND)
BY_NAME: dict[str, SourceKind[Any]] = {kind.name: kind for kind in KINDS}
