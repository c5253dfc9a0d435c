"""The baseline "an exporter that pages through runs": every SCHEDULED run through
POST /flow_runs/filter, limit 200, offset paging, counted client-side; past the time budget,
pages sampled at evenly spaced offsets and the rest extrapolated."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import httpx

PAGE = 200


@dataclass
class PagingResult:
    seconds: float
    runs: int  # counted client-side (or expected, when extrapolated)
    pages: int
    rounds: int
    note: str = ""


SCHEDULED_FILTER = {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}


async def fetch_page(client: httpx.AsyncClient, offset: int) -> int:
    response = await client.post("flow_runs/filter",
                                 json={**SCHEDULED_FILTER, "limit": PAGE, "offset": offset})
    response.raise_for_status()
    return len(response.json())


async def page_through(client: httpx.AsyncClient, cap: int,
                       deadline: float) -> tuple[int, int, bool]:
    """Pages until a short page, the cap, or the deadline: (runs counted, pages, finished)."""
    runs = pages = 0
    while runs < cap:
        if time.monotonic() > deadline:
            return runs, pages, False
        got = await fetch_page(client, pages * PAGE)
        runs, pages = runs + got, pages + 1
        if got < PAGE:
            break
    return runs, pages, True


async def extrapolate(client: httpx.AsyncClient, done_pages: int, total_pages: int,
                      samples: int) -> tuple[float, int]:
    """Seconds the pages not fetched would take: pages at evenly spaced offsets over the rest
    (offset paging gets slower as the offset grows), their mean times the pages left; and how
    many pages were sampled."""
    left = total_pages - done_pages
    if left <= 0:
        return 0.0, 0
    picks = sorted({done_pages + (left * k) // samples for k in range(samples)})
    times = []
    for page in picks:
        started = time.perf_counter()
        await fetch_page(client, page * PAGE)
        times.append(time.perf_counter() - started)
    return statistics.mean(times) * left, len(times)


async def time_paging(api_url: str, expected: int, rounds: int, budget: float,
                      cap: int) -> PagingResult:
    async with httpx.AsyncClient(base_url=api_url + "/", timeout=120) as client:
        await fetch_page(client, 0)  # warm-up
        times: list[float] = []
        runs = pages = 0
        spent_from = time.monotonic()
        for _ in range(rounds):
            started = time.perf_counter()
            runs, pages, finished = await page_through(client, cap, spent_from + budget)
            if not finished and times:
                break  # an earlier round finished: keep its figures
            if not finished:
                return await partial_paging(client, time.perf_counter() - started, pages,
                                            min(expected, cap))
            times.append(time.perf_counter() - started)
            if time.monotonic() - spent_from > budget / 2:
                break  # another round would not fit
    return PagingResult(statistics.median(times), runs, pages, len(times))


async def partial_paging(client: httpx.AsyncClient, elapsed: float, done: int,
                         expected: int) -> PagingResult:
    total_pages = expected // PAGE + 1
    rest, samples = await extrapolate(client, done, total_pages, 20)
    note = (f"EXTRAPOLATED: {done} pages took {elapsed:.1f}s before the time budget ran out; "
            f"the other {total_pages - done} estimated from {samples} pages at evenly spaced "
            f"offsets")
    return PagingResult(elapsed + rest, expected, total_pages, 1, note)
