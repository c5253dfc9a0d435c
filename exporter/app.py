"""Wires configuration, sources, poller, exposition and server together."""

from __future__ import annotations

import asyncio
import signal
import time

import structlog
from aiohttp import web

from exporter.collector import ExporterCollector, Exposition, MetricOptions
from exporter.config import Config, describe
from exporter.findings import Finding, diagnose, snapshots_from
from exporter.poller import Poller
from exporter.server import make_app
from exporter.sources import Source
from exporter.sources.pgbouncer import PgBouncerSource
from exporter.sources.postgres import PostgresSource
from exporter.sources.prefect import PrefectSource

log = structlog.get_logger("exporter")

STALE_AFTER_POLLS = 3  # a snapshot is exported until this many intervals have passed


def build_sources(config: Config) -> list[Source]:
    sources: list[Source] = [
        PostgresSource(t, statement_timeout_ms=config.statement_timeout_ms,
                       connect_timeout=config.poll_timeout_seconds,
                       top_transactions=config.top_transactions, hot_tables=config.hot_tables)
        for t in config.postgres_targets
    ]
    sources += [PgBouncerSource(t, connect_timeout=config.poll_timeout_seconds)
                for t in config.pgbouncer_targets]
    if (prefect := config.prefect_target) is not None:
        sources.append(PrefectSource(
            prefect.name, prefect.api_url, auth=prefect.auth, timeout=config.poll_timeout_seconds,
            headers=prefect.headers, verify=prefect.verify,
            horizon_seconds=config.prefect_upcoming_horizon_seconds,
            max_pools=config.label_top_n,
            max_concurrency=config.prefect_max_concurrent_requests))
    return sources


class Exporter:
    """The running exporter: poller plus HTTP server. start()/stop() for tests and the CLI."""

    def __init__(self, config: Config, sources: list[Source] | None = None) -> None:
        self.config = config
        self.poller = Poller(build_sources(config) if sources is None else sources,
                             interval=config.poll_interval_seconds,
                             timeout=config.poll_timeout_seconds,
                             on_update=self._render)
        self._options = MetricOptions(
            label_top_n=config.label_top_n,
            stale_after_seconds=STALE_AFTER_POLLS * config.poll_interval_seconds)
        self._collector = ExporterCollector(self.poller.states, self._options)
        self.exposition = Exposition(self._collector)
        self.findings: list[Finding] = []
        self.exposition.render()
        self._runner: web.AppRunner | None = None
        self.port: int = config.listen.port

    def _render(self) -> None:
        """After each poll: the diagnosis, then the exposition (both off the scrape path)."""
        snaps = snapshots_from(self.poller.states, self._options.stale_after_seconds,
                               time.time())
        self.findings = self._collector.findings = diagnose(snaps)
        self.exposition.render()

    async def start(self) -> None:
        app = make_app(self.exposition, self.poller.states, lambda: self.findings,
                       self.config.web.users)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.listen.host, self.config.listen.port,
                           ssl_context=self.config.web.ssl_context)
        await site.start()
        server = site._server  # the bound socket tells the port when 0 was asked for
        if server is not None and server.sockets:  # type: ignore[union-attr]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.poller.start()
        scheme = "https" if self.config.web.ssl_context else "http"
        log.info("exporter started", url=f"{scheme}://{self.config.listen.host}:{self.port}/",
                 **describe(self.config))

    async def stop(self) -> None:
        await self.poller.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def serve(config: Config) -> None:
    exporter = Exporter(config)
    await exporter.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("stopping")
    await exporter.stop()
