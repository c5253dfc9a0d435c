"""PrefectHQ/prometheus-prefect-exporter, where it can be set up (a checkout and a virtualenv
under /tmp): installed once, started twice (direct, timed; and behind the counting proxy, its
requests per scrape counted), scraped end to end."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.counting_proxy import CountingProxy
from lab.common import LabError, free_port, stop_process, wait_for_port

PPE_REPO = "https://github.com/PrefectHQ/prometheus-prefect-exporter"
SCRAPE_TIMEOUT = 900.0


def _run(argv: list[str], timeout: float) -> str | None:
    """None when it worked, else a one-line reason."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{argv[0]}: {exc}"
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return f"{' '.join(argv[:2])} failed: {lines[-1] if lines else done.returncode}"
    return None


def ensure_ppe(src: Path, venv: Path) -> str | None:
    """A checkout of prometheus-prefect-exporter and a virtualenv with its requirements, made
    once and kept under /tmp. None when ready, else why not."""
    if not (src / "main.py").exists():
        reason = _run(["git", "clone", "--depth", "1", "--quiet", PPE_REPO, str(src)], 180)
        if reason:
            return f"cannot clone {PPE_REPO} into {src}: {reason}"
    if (venv / ".installed").exists():
        return None
    reason = _run([sys.executable, "-m", "venv", "--clear", str(venv)], 120) or _run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "-r",
         str(src / "requirements.txt")], 1200)
    if reason:
        return f"cannot install its requirements into {venv}: {reason}"
    (venv / ".installed").touch()
    return None


def ppe_commit(src: Path) -> str:
    done = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown commit"



@dataclass
class Ppe:
    """One prometheus-prefect-exporter process; it reads the API on each scrape."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path


def start_ppe(src: Path, venv: Path, api_url: str, home: Path) -> Ppe:
    home.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), home / "exporter.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "PREFECT_HOME": str(home / "prefect"), "PREFECT_API_URL": api_url,
           "METRICS_ADDR": "127.0.0.1", "METRICS_PORT": str(port), "LOG_LEVEL": "WARNING"}
    with log.open("ab") as out:
        proc = subprocess.Popen([str(venv / "bin" / "python"), "main.py"], cwd=src, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    wait_for_port(port, 120, "prometheus-prefect-exporter", proc, log)
    return Ppe(proc, port, log)


async def scrape(port: int) -> tuple[float, int]:
    """One end-to-end /metrics scrape: seconds, and the samples in it."""
    async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT) as client:
        started = time.perf_counter()
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
        seconds = time.perf_counter() - started
    response.raise_for_status()
    if b"prefect_info_flow_runs" not in response.content:
        raise LabError("its scrape came back without the flow-run metrics (collection failed)")
    samples = sum(1 for line in response.text.splitlines() if line and line[0] != "#")
    return seconds, samples


@dataclass
class PpeResult:
    median: float
    scrapes: int
    samples: int
    requests: int
    by_endpoint: dict[str, int] = field(default_factory=dict)


async def time_ppe(direct: Ppe, counted: Ppe, proxy: CountingProxy, rounds: int,
                   budget: float) -> PpeResult:
    """Timed scrapes of the instance that talks to Prefect directly (within the budget), then one
    scrape of the instance behind the counting proxy."""
    times: list[float] = []
    samples = 0
    spent_from = time.monotonic()
    for _ in range(rounds):
        seconds, samples = await scrape(direct.port)
        times.append(seconds)
        if time.monotonic() - spent_from + seconds > budget:
            break
    before = Counter(proxy.counts)
    await scrape(counted.port)
    delta = proxy.counts - before
    return PpeResult(statistics.median(times), len(times), samples, delta.total(),
                     dict(delta.most_common()))



async def start_ppe_pair(src: Path, venv: Path, home: Path,
                         api_url: str) -> tuple[Ppe, Ppe, CountingProxy] | str:
    """The third-party exporter twice: direct (timed) and behind the counting proxy; or why
    it did not start."""
    proxy = CountingProxy(api_url.removesuffix("/api"), SCRAPE_TIMEOUT)
    await proxy.start()
    started: list[Ppe] = []
    home = home / str(proxy.port)
    try:  # in a thread: its start-up health check goes through the proxy on this event loop
        for name, url in (("direct", api_url),
                          ("counted", f"http://127.0.0.1:{proxy.port}/api")):
            started.append(await asyncio.to_thread(start_ppe, src, venv, url, home / name))
    except LabError as exc:
        for ppe in started:
            stop_process(ppe.proc)
        await proxy.stop()
        return f"not measured: it did not start: {str(exc)[:300]}"
    return started[0], started[1], proxy


async def stop_ppe_pair(pair: tuple[Ppe, Ppe, CountingProxy]) -> None:
    direct, counted, proxy = pair
    for ppe in (direct, counted):
        stop_process(ppe.proc)
    await proxy.stop()
