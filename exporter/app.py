"""Wires configuration, sources, poller, exposition and server together."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from exporter.allocator import freeze_startup_objects, release_free_memory
from exporter.collector import ExporterCollector, Exposition
from exporter.config import Config, describe
from exporter.diagnosis import diagnose
from exporter.finding import Finding
from exporter.incidents.recorder import IncidentRecorder
from exporter.kinds import KINDS
from exporter.metricspec import MetricOptions
from exporter.poller import Poller, failures, fresh_snapshots
from exporter.postgres.statements import statements_report
from exporter.server import make_app
from exporter.source import Source
from exporter.webguard import IDLE_TIMEOUT, GuardedSite, install_logging
from exporter.webreload import LiveWebConfig

log = structlog.get_logger("exporter")

# A guard: every poll replaces its source's snapshot (a failed one with only what it read),
# so a snapshot this old means the source's poller stopped; it is then no longer shown.
STALE_AFTER_POLLS = 3


def build_sources(config: Config) -> list[Source]:
    return [source for kind in KINDS for source in kind.sources(config)]


class Exporter:
    """The running exporter: poller plus HTTP server. start()/stop() for tests and the CLI."""

    def __init__(self, config: Config, sources: list[Source] | None = None) -> None:
        self.config = config
        self.poller = Poller(build_sources(config) if sources is None else sources,
                             interval=config.poll_interval_seconds,
                             timeout=config.poll_timeout_seconds,
                             on_update=self._render)
        self.stale_after_seconds = STALE_AFTER_POLLS * config.poll_interval_seconds
        self._collector = ExporterCollector(self.poller.states,
                                            MetricOptions(label_top_n=config.label_top_n))
        self.exposition = Exposition(self._collector)
        self.findings: list[Finding] = []
        self.incidents = IncidentRecorder(dict(config.thresholds), keep=config.recent_incidents,
                                          poll_interval=config.poll_interval_seconds,
                                          statements=not config.no_statements,
                                          state_dir=config.state_dir)
        self.exposition.render()
        self._runner: web.AppRunner | None = None
        self._undo_logging: Callable[[], None] | None = None
        self.port: int = config.listen.port

    def _render(self) -> None:
        """After each poll: which snapshots are fresh (decided once), the diagnosis, then the
        exposition (all off the scrape path)."""
        states = self.poller.states
        snapshots = fresh_snapshots(states, time.time(), self.stale_after_seconds)
        self.findings = diagnose(snapshots, failures(states), self.config.thresholds)
        self.incidents.after_poll(snapshots)
        self._collector.update(snapshots, self.findings)
        self.exposition.render()
        release_free_memory()  # what the poll and the render freed, back to the OS

    def statements(self) -> dict[str, Any]:
        """/statements: the slowest statements of the fresh PostgreSQL snapshots."""
        return statements_report(fresh_snapshots(self.poller.states, time.time(),
                                                 self.stale_after_seconds))

    async def start(self) -> None:
        web_config = LiveWebConfig(self.config.web)
        app = make_app(self.exposition, self.poller.states, lambda: self.findings,
                       web_config.current if self.config.web.path else None,
                       self.config.telemetry_path, self.incidents.as_json,
                       self.statements)
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=IDLE_TIMEOUT)
        await self._runner.setup()
        self._undo_logging = install_logging()
        site = GuardedSite(self._runner, self.config.listen.host, self.config.listen.port,
                           ssl_context=web_config.ssl_context())
        await site.start()
        # the bound address tells the port when 0 was asked for
        self.port = int(self._runner.addresses[0][1])
        self.poller.start()
        scheme = "https" if self.config.web.ssl_context else "http"
        log.info("exporter started", url=f"{scheme}://{self.config.listen.host}:{self.port}/",
                 **describe(self.config))

    async def stop(self) -> None:
        await self.poller.stop()
        self.incidents.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._undo_logging is not None:
            self._undo_logging()
            self._undo_logging = None


async def serve(config: Config) -> None:
    exporter = Exporter(config)
    await exporter.start()
    freeze_startup_objects()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("stopping")
    await exporter.stop()
